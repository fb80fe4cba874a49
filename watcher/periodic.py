"""The periodic loop of background work the daemon owns: outbox dispatchers, the run tracker,
health probes.

Each worker does one round of work per `run_once`; the daemon runs it every
`interval_seconds` as a named task, logs (never swallows silently) what a round raised,
and cancels it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class PeriodicWorker(Protocol):
    name: str
    interval_seconds: float

    async def run_once(self) -> None: ...

    async def close(self) -> None: ...


async def run_periodically(worker: PeriodicWorker, stop: asyncio.Event) -> None:
    """Run `worker` until `stop` is set. A failing round is logged and retried next interval.

    Workers handle their expected failures themselves (transient errors go back to the
    outbox); what reaches here is unexpected, so it is logged with a traceback.
    """
    while not stop.is_set():
        try:
            await worker.run_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "worker %s failed a round; next try in %.0fs", worker.name, worker.interval_seconds
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=worker.interval_seconds)
