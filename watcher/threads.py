"""Blocking work off the event loop, in threads that never keep the process alive."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Like asyncio.to_thread, but the thread does not keep the process alive at exit.

    A shutdown that gives up waiting on a long scoring job must be able to exit; the work
    is safe to abandon because nothing of it is committed until its final transaction.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(*args), None)
        except BaseException as exc:
            outcome = (None, exc)
        # The loop is gone when a shutdown abandoned this job: there is no one to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, future, *outcome)

    threading.Thread(
        target=target, name=f"score-{getattr(fn, '__name__', 'job')}", daemon=True
    ).start()
    return await future


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
