"""The outbox (actions delivered after their transaction, at least once, with keys that
make each delivery idempotent: a deterministic dag_run_id, a deterministic Message-ID),
the retrain runs the tracker follows, and incidents (alert dedup)."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from watcher.state.core import StoreCore
from watcher.state.db import StateConn
from watcher.state.records import (
    ACTIVE_RUN_STATES,
    Action,
    ActionKind,
    OutboxItem,
    RunRecord,
    outbox_of,
    run_of,
)


def backoff(failures: int, base: float, cap: float, *, jitter: bool = True) -> float:
    """Seconds to wait after `failures` failed attempts (1 for the first), for every
    retry that waits (an outbox item's next delivery round, Airflow's login block).

    `base` doubles per failure up to `cap`, then jittered down to half: many items (or
    daemons) failing in one outage do not all come back in the same second, and the wait
    is never above `cap`. Not crypto. `jitter=False` (Airflow's login block: one per
    daemon, nothing to spread) keeps the wait exact, as the error message states it.
    """
    full = min(cap, base * 2.0 ** min(max(failures - 1, 0), 60))
    return full * random.uniform(0.5, 1.0) if jitter else full  # noqa: S311


class OutboxStore(StoreCore):
    # ---- outbox -------------------------------------------------------------------------

    @staticmethod
    def enqueue(conn: StateConn, action: Action, *, not_before: float | None = None) -> bool:
        """Add an action unless one with the same key exists. True when added."""
        now = time.time()
        cur = conn.execute(
            "INSERT INTO outbox (kind, key, model, payload, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (
                action.kind,
                action.key,
                action.model,
                conn.scrub(json.dumps(action.payload)),
                now,
                now if not_before is None else not_before,
            ),
        )
        return cur.rowcount == 1

    def due_actions(self, kind: ActionKind, now: float, limit: int = 100) -> list[OutboxItem]:
        rows = self._read(
            "SELECT * FROM outbox WHERE kind = ? AND status = 'pending' AND next_attempt_at <= ? "
            "ORDER BY id LIMIT ?",
            (kind, now, limit),
        )
        return [outbox_of(r) for r in rows]

    def mark_sending(self, item_id: int) -> None:
        """Commit that a delivery starts now, before the SMTP transaction: a crash from here
        to `mark_done` may deliver this one mail twice (same Message-ID), no other."""
        with self.transaction() as conn:
            conn.execute("UPDATE outbox SET sending_at = ? WHERE id = ?", (time.time(), item_id))

    def mark_done(self, item_id: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET status = 'done', done_at = ?, attempts = attempts + 1, "
                "sending_at = NULL WHERE id = ?",
                (time.time(), item_id),
            )

    @staticmethod
    def complete_actions(conn: StateConn, item_ids: list[int]) -> None:
        """Mark actions done inside a transaction: alerts folded into a digest mail are done
        in the same transaction that enqueues the digest, so each is mailed exactly once."""
        now = time.time()
        conn.executemany(
            "UPDATE outbox SET status = 'done', done_at = ?, attempts = attempts + 1 "
            "WHERE id = ? AND status = 'pending'",
            [(now, item_id) for item_id in item_ids],
        )

    def reschedule(self, item_id: int, next_attempt_at: float, error: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?, "
                "sending_at = NULL WHERE id = ?",
                (next_attempt_at, self.scrub(error), item_id),
            )

    def mark_dead(self, item_id: int, error: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_error = ?, "
                "done_at = ?, sending_at = NULL WHERE id = ?",
                (self.scrub(error), time.time(), item_id),
            )

    def earliest_backing_off(self, kind: ActionKind, now: float) -> int | None:
        """The oldest pending action that failed before and waits for its next attempt.

        Later actions wait behind it, so that after an outage they go out in order."""
        rows = self._read(
            "SELECT MIN(id) AS id FROM outbox WHERE kind = ? AND status = 'pending' "
            "AND attempts > 0 AND next_attempt_at > ?",
            (kind, now),
        )
        return None if not rows or rows[0]["id"] is None else int(rows[0]["id"])

    def pending_counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT kind, COUNT(*) AS n FROM outbox WHERE status = 'pending' GROUP BY kind"
        )
        counts = {"trigger": 0, "alert": 0, "webhook": 0}
        counts.update({r["kind"]: int(r["n"]) for r in rows})
        return counts

    def outbox_items(
        self, model: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        sql = "SELECT * FROM outbox WHERE 1=1"
        params: list[Any] = []
        if model is not None:
            sql += " AND model = ?"
            params.append(model)
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        rows = self._read(sql + " ORDER BY id", tuple(params))
        return [dict(r) | {"payload": json.loads(r["payload"])} for r in rows]

    def alerts_after(self, after_id: int, *, pending_only: bool) -> list[OutboxItem]:
        """Alert actions (any status) with an id above `after_id`, oldest first: what the
        webhook fan-out has not copied yet. `pending_only` for its very first round."""
        rows = self._read(
            "SELECT * FROM outbox WHERE kind = 'alert' AND id > ? "
            + ("AND status = 'pending' " if pending_only else "")
            + "ORDER BY id",
            (after_id,),
        )
        return [outbox_of(r) for r in rows]

    # ---- retrain runs -------------------------------------------------------------------

    def add_run(
        self, run_id: str, model: str, dag_id: str, conf: dict[str, Any], state: str
    ) -> None:
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, model, dag_id, state, conf, triggered_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING",
                (run_id, model, dag_id, state, json.dumps(conf), now, now),
            )

    def update_run(self, run_id: str, state: str) -> None:
        now = time.time()
        ended = now if state not in ACTIVE_RUN_STATES else None
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET state = ?, updated_at = ?, ended_at = COALESCE(ended_at, ?) "
                "WHERE run_id = ?",
                (state, now, ended, run_id),
            )

    def mark_run_handled(self, run_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET handled = 1 WHERE run_id = ?", (run_id,))

    def runs(
        self, model: str | None = None, *, unhandled_only: bool = False, limit: int = 50
    ) -> list[RunRecord]:
        sql = "SELECT * FROM runs WHERE 1=1"
        params: list[Any] = []
        if model is not None:
            sql += " AND model = ?"
            params.append(model)
        if unhandled_only:
            sql += " AND handled = 0"
        rows = self._read(sql + " ORDER BY triggered_at DESC LIMIT ?", (*params, limit))
        return [run_of(r) for r in rows]

    def retraining(self, model: str) -> bool:
        """A retrain of the model is queued, running, or waiting in the outbox."""
        with self._lock:
            return self.has_active_run(self._live(), model)

    @staticmethod
    def has_active_run(conn: StateConn, model: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM runs WHERE model = ? AND state IN ('queued', 'running') "
            "UNION ALL SELECT 1 FROM outbox WHERE model = ? AND kind = 'trigger' "
            "AND status = 'pending' LIMIT 1",
            (model, model),
        ).fetchone()
        return row is not None

    # ---- incidents (alert dedup) --------------------------------------------------------

    @staticmethod
    def open_incident(
        conn: StateConn, key: str, kind: str, model: str | None, details: dict[str, Any]
    ) -> bool:
        """Open an incident unless it is already open. True when newly opened."""
        row = conn.execute("SELECT resolved_at FROM incidents WHERE key = ?", (key,)).fetchone()
        if row is not None and row["resolved_at"] is None:
            return False
        conn.execute(
            "INSERT INTO incidents (key, kind, model, opened_at, details) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET opened_at = excluded.opened_at, resolved_at = NULL, "
            "last_notified_at = NULL, details = excluded.details",
            (key, kind, model, time.time(), conn.scrub(json.dumps(details))),
        )
        return True

    @staticmethod
    def incident_is_open(conn: StateConn, key: str) -> bool:
        """Is the incident open, as of the caller's transaction?"""
        row = conn.execute(
            "SELECT 1 FROM incidents WHERE key = ? AND resolved_at IS NULL", (key,)
        ).fetchone()
        return row is not None

    @staticmethod
    def resolve_incident(conn: StateConn, key: str) -> bool:
        cur = conn.execute(
            "UPDATE incidents SET resolved_at = ? WHERE key = ? AND resolved_at IS NULL",
            (time.time(), key),
        )
        return cur.rowcount == 1

    def open_incidents(self) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM incidents WHERE resolved_at IS NULL ORDER BY opened_at")
        return [dict(r) | {"details": json.loads(r["details"])} for r in rows]

    def touch_incident(self, key: str, notified_at: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE incidents SET last_notified_at = ? WHERE key = ?", (notified_at, key)
            )
