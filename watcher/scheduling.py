"""Models scored concurrently inside one daemon, up to `[daemon] workers` at once.

Each model's round (registry check, poll, score what arrived, labels, silence) is a task
of its own; at most `workers` of them run at a time (the CPU work of each runs in a
thread, see `watcher.threads.run_in_daemon_thread`). A round of the main loop starts the
models that are not running yet and waits for them at most one poll interval: a model
whose round is still running (a huge batch, a slow database) is skipped, not waited for,
so one slow model never holds the others back. Between rounds the loop sleeps one poll
interval, or less when a stop or a file-system notification (`wake`) comes.

With `workers = 1` the models run one after another, in order, as they always did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable


class ModelScheduler:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._slots = asyncio.Semaphore(workers)
        self._running: dict[str, asyncio.Task[None]] = {}
        # Models whose round holds a worker now (read by the replicas: never handed over).
        self.busy: set[str] = set()
        # Set by a source's file-system notifications: start the next round now.
        self.wake = asyncio.Event()

    @property
    def running(self) -> set[str]:
        return set(self._running)

    async def round(
        self,
        models: Iterable[str],
        work: Callable[[str], Awaitable[None]],
        wait_seconds: float,
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        """Start `work(model)` for every model not running yet; wait for the started ones
        at most `wait_seconds` (calling `tick` every second: the health heartbeat)."""
        started = []
        for name in models:
            if name in self._running:
                continue
            task = asyncio.create_task(self._one(name, work), name=f"model-{name}")
            self._running[name] = task
            started.append(task)
        if not started:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        pending = set(started)
        while pending and loop.time() < deadline:
            tick()
            _, pending = await asyncio.wait(
                pending,
                timeout=min(1.0, max(0.0, deadline - loop.time())),
                return_when=asyncio.ALL_COMPLETED,
            )

    async def _one(self, name: str, work: Callable[[str], Awaitable[None]]) -> None:
        try:
            async with self._slots:
                self.busy.add(name)
                try:
                    await work(name)
                finally:
                    self.busy.discard(name)
        finally:
            self._running.pop(name, None)

    async def drain(self) -> None:
        """Wait for every running round (each bounds its own wait after a stop)."""
        tasks = list(self._running.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def until_next_round(self, stop: asyncio.Event, interval: float) -> None:
        """Sleep one poll interval, or less when a stop or a file-system event comes."""
        waits = {
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self.wake.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self.wake.clear()
