"""The background workers the daemon owns, started and stopped together.

Which workers run follows the configuration: the Airflow dispatcher and run tracker, the
mail and webhook dispatchers, the state retention pass. Each runs as a named task (see
`watcher.periodic.run_periodically`); at shutdown they get
`daemon.background_shutdown_timeout_seconds`, all at once, to end their round; the rest
are then cancelled with a message that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from watcher.config import Settings
from watcher.metrics import Metrics
from watcher.periodic import PeriodicWorker, run_periodically
from watcher.state import RunRecord, StateStore

log = logging.getLogger(__name__)

RunHook = Callable[[str, RunRecord], Awaitable[None]]
RunEndHook = Callable[[RunRecord], Awaitable[None]]


def build_workers(
    settings: Settings,
    store: StateStore,
    metrics: Metrics,
    on_run_success: RunHook,
    on_run_end: RunEndHook,
) -> list[PeriodicWorker]:
    """The workers the settings enable; each integration's modules are imported only then."""
    workers: list[PeriodicWorker] = []
    if settings.airflow.enabled:
        from watcher.airflow import build_airflow_workers

        workers += build_airflow_workers(settings, store, metrics, on_run_success, on_run_end)
    if settings.smtp.enabled:
        from watcher.alerts.dispatcher import build_mail_workers

        workers += build_mail_workers(settings, store, metrics)
    if settings.webhooks:
        from watcher.alerts.webhook import build_webhook_workers

        workers += build_webhook_workers(settings, store, metrics)
    state = settings.state
    if state.retention_days is not None:
        from watcher.state.retention import RetentionWorker

        workers.append(
            RetentionWorker(store, state.retention_days, state.retention_interval_seconds)
        )
    return workers


class Background:
    """Runs workers until `stop` is set; `close` waits for them, then cancels stragglers."""

    def __init__(self, workers: list[PeriodicWorker]) -> None:
        self.workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, stop: asyncio.Event) -> None:
        for worker in self.workers:
            self._tasks.append(
                asyncio.create_task(run_periodically(worker, stop), name=worker.name)
            )

    async def close(self, grace_seconds: float) -> None:
        """After `stop` was set: give the workers `grace_seconds`, all at once, to end their
        round (a mail being sent, a trigger being posted), cancel the rest, then close them
        all."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_seconds)
            for task in pending:
                name = task.get_name()
                why = f"watcher is shutting down; {name} did not stop in {grace_seconds:g}s"
                log.warning("cancelling background task %s: %s", name, why)
                task.cancel(msg=why)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers:
            with contextlib.suppress(Exception):
                await worker.close()
