"""The retention worker: `[state] retention_days` turns it on; every
`retention_interval_seconds` it prunes what is older (`StateStore.prune`)."""

from __future__ import annotations

import asyncio
import logging

from watcher.state.store import StateStore

log = logging.getLogger(__name__)

DAY = 86_400.0


class RetentionWorker:
    name = "state-retention"

    def __init__(self, store: StateStore, retention_days: float, interval_seconds: float) -> None:
        self.store = store
        self.keep_seconds = retention_days * DAY
        self.interval_seconds = interval_seconds

    async def run_once(self) -> None:
        pruned = await asyncio.to_thread(self.store.prune, self.keep_seconds)
        if pruned.total:
            log.info(
                "retention: cleared %d batch result(s), removed %d decision(s) and %d finished "
                "outbox row(s) older than %.0f day(s)",
                pruned.batch_results,
                pruned.decisions,
                pruned.outbox,
                self.keep_seconds / DAY,
            )

    async def close(self) -> None:
        return None
