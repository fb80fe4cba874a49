"""Durable state: batch ledger, drift history, decisions, outbox, retrain runs, incidents,
source watermarks and the production model's loss per labelled period — in one SQLite
file (WAL, the default) or a PostgreSQL database (`[state] backend = "postgres"`).

`StateStore` joins the parts: the connection and transactions (`core`), the ledger and
decisions (`ledger`), the outbox, runs and incidents (`outbox`), replicas' leases and
outbox claims (`leases`), and retention here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watcher.state.config import state_target
from watcher.state.leases import LeaseStore
from watcher.state.ledger import LedgerStore

if TYPE_CHECKING:
    from watcher.config import Settings

# Decisions that cooldowns and rate limits read (`trigger_times`, `last_trigger_at`):
# never pruned, and few (one per retrain).
_KEPT_OUTCOMES = ("triggered", "dry_run", "manual")


@dataclass(frozen=True)
class Pruned:
    """What one retention pass removed."""

    batch_results: int
    decisions: int
    outbox: int

    @property
    def total(self) -> int:
        return self.batch_results + self.decisions + self.outbox


class StateStore(LedgerStore, LeaseStore):
    """The state of one watcher (see the module doc)."""

    def prune(self, older_than_seconds: float, *, now: float | None = None) -> Pruned:
        """The retention pass: forget what is older than `older_than_seconds`.

        Batch results (the per-column JSON, the bulk of the database) are cleared, but the
        ledger row stays, so a batch still in its folder is never scored again. Decisions go,
        except triggers (cooldowns and rate limits count them). Outbox rows go once done or
        dead; pending ones are never touched.
        """
        cutoff = (time.time() if now is None else now) - older_than_seconds
        with self.transaction() as conn:
            results = conn.execute(
                "UPDATE batches SET result = NULL WHERE finished_at < ? AND result IS NOT NULL",
                (cutoff,),
            ).rowcount
            decisions = conn.execute(
                "DELETE FROM decisions WHERE at < ? AND outcome NOT IN (?, ?, ?)",
                (cutoff, *_KEPT_OUTCOMES),
            ).rowcount
            outbox = conn.execute(
                "DELETE FROM outbox WHERE status IN ('done', 'dead') AND done_at < ?",
                (cutoff,),
            ).rowcount
        return Pruned(max(results, 0), max(decisions, 0), max(outbox, 0))


def open_state(settings: Settings) -> StateStore:
    """The state database the settings name (`[state]`, SQLite in daemon.state_dir by
    default), upgraded to this watcher's schema when `auto_migrate`."""
    cfg = settings.state
    return StateStore(
        state_target(cfg, settings.daemon.state_dir),
        auto_migrate=cfg.auto_migrate,
        connect_timeout=cfg.connect_timeout_seconds,
    )
