"""Durable state in one SQLite file (WAL): batch ledger, drift history, decisions, outbox,
retrain runs, incidents, source watermarks and the production model's loss per labelled
period.

The ledger and the outbox are what make effects exactly-once across crashes: a batch's
result, the policy's decision and the actions it causes are written in ONE transaction
(`StateStore.transaction`), and actions are delivered afterwards, at least once, with keys
that make each delivery idempotent (a deterministic dag_run_id, a deterministic Message-ID).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from watcher.errors import WatcherError

ActionKind = Literal["trigger", "alert", "webhook"]
BatchStatus = Literal["claimed", "scored", "rejected", "failed"]
ACTIVE_RUN_STATES = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    uri TEXT NOT NULL,
    status TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    finished_at REAL,
    rows INTEGER,
    reference_version TEXT,
    dataset_drift INTEGER,
    drift_share REAL,
    result TEXT,
    reason TEXT,
    UNIQUE (model, batch_id)
);
CREATE TABLE IF NOT EXISTS model_state (
    model TEXT PRIMARY KEY,
    reference_version TEXT,
    -- The drift streak counts only batches after this seq: reset on trigger and new reference.
    streak_reset_seq INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    batch_id TEXT,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    run_id TEXT,
    -- The signal that fired and every signal's reading (JSON), for `status` and audits.
    signal TEXT,
    readings TEXT
);
CREATE INDEX IF NOT EXISTS decisions_model_at ON decisions (model, at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    model TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    done_at REAL,
    last_error TEXT,
    -- Set in its own commit right before a mail's SMTP transaction, cleared when it is done:
    -- after a crash it names the one mail that may have been delivered already.
    sending_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dag_id TEXT NOT NULL,
    state TEXT NOT NULL,
    conf TEXT NOT NULL,
    triggered_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL,
    -- 1 once the end of the run was acted on (reload, alert), so restarts do not repeat it.
    handled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS incidents (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT,
    opened_at REAL NOT NULL,
    last_notified_at REAL,
    resolved_at REAL,
    details TEXT NOT NULL DEFAULT '{}'
);
-- The production model's loss on each labelled period (a label file, or a SQL window),
-- with the version that served it: the performance signal's history since a deployment.
CREATE TABLE IF NOT EXISTS label_periods (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    period TEXT NOT NULL,
    version TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    loss REAL NOT NULL,
    rows INTEGER NOT NULL,
    at REAL NOT NULL,
    UNIQUE (model, period, version)
);
CREATE INDEX IF NOT EXISTS label_periods_model ON label_periods (model, version, id);
CREATE TABLE IF NOT EXISTS watermarks (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Action:
    """Something the daemon must do outside its own process, delivered from the outbox."""

    kind: ActionKind
    key: str  # idempotency key: the dag_run_id of a trigger, the incident/Message-ID of a mail
    model: str | None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    kind: ActionKind
    key: str
    model: str | None
    payload: dict[str, Any]
    attempts: int
    created_at: float
    sending_at: float | None = None  # a delivery began then and was never marked done


@dataclass(frozen=True)
class BatchRecord:
    seq: int
    model: str
    batch_id: str
    uri: str
    status: BatchStatus
    finished_at: float | None
    rows: int | None
    reference_version: str | None
    dataset_drift: bool | None
    drift_share: float | None
    result: dict[str, Any] | None
    reason: str | None


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    model: str
    dag_id: str
    state: str
    conf: dict[str, Any]
    triggered_at: float
    updated_at: float
    ended_at: float | None
    handled: bool


@dataclass(frozen=True)
class Decision:
    model: str
    batch_id: str | None
    at: float
    outcome: str
    reason: str
    run_id: str | None
    signal: str | None = None
    readings: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class LabelPeriod:
    """The production model's loss on the labelled rows of one period."""

    period: str
    version: str
    metric: str
    value: float
    loss: float
    rows: int
    at: float


class StateStore:
    """Thread-safe access to the state file. One instance per process.

    Calls are short (milliseconds); the daemon makes them from worker threads next to the
    CPU work, or from the event loop for the few small reads of the dispatchers.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30, factory=_Connection
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed batch result or outbox row survives a power cut, not just a crash.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._conn.executescript(_SCHEMA)
            columns = {r["name"] for r in self._conn.execute("PRAGMA table_info(outbox)")}
            if "sending_at" not in columns:  # a state file from before in-flight marking
                self._conn.execute("ALTER TABLE outbox ADD COLUMN sending_at REAL")
            self._add_missing_columns()
        # Why the last write failed (disk full, read-only, I/O error), None once one works:
        # the daemon's health and `watcher_state_writable` read it.
        self.write_error: str | None = None

    def _add_missing_columns(self) -> None:
        """State files written by an older watcher lack the newer columns: add them."""
        have = {r["name"] for r in self._conn.execute("PRAGMA table_info(decisions)")}
        for column in ("signal", "readings"):
            if column not in have:
                self._conn.execute(f"ALTER TABLE decisions ADD COLUMN {column} TEXT")

    @property
    def scrub(self) -> Callable[[str], str]:
        return self._conn.scrub

    @scrub.setter
    def scrub(self, scrubber: Callable[[str], str]) -> None:
        """Every text stored from outside (errors, alert payloads, incident details) passes
        through this; the daemon sets its Scrubber, so a secret a server echoed never
        reaches the state file or `watcher status`."""
        self._conn.scrub = scrubber

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self, *, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; everything inside is written together or not at all.
        `fsync=False`: synchronous=NORMAL for this commit (survives kill -9, not a power cut)."""
        with self._lock:
            changes = self._conn.total_changes
            self._conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException:
                    # A COMMIT that failed (disk full) leaves the transaction open: without
                    # this rollback every later BEGIN would fail too.
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if _is_write_failure(exc):
                    self.write_error = str(exc)
                raise
            finally:
                self._conn.execute("PRAGMA synchronous=FULL")
            if self._conn.total_changes > changes:  # an empty transaction proves nothing
                self.write_error = None

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    # ---- batch ledger -------------------------------------------------------------------

    def claim_batch(self, model: str, batch_id: str, uri: str) -> bool:
        """Claim a batch for processing. False when it was already scored or rejected.

        A batch claimed but never finished (the daemon died while scoring) is claimable
        again: its effects were never committed, so processing it again is not a repeat.
        Not fsynced: a claim lost to a power cut only means the batch is claimed again."""
        with self.transaction(fsync=False) as conn:
            row = conn.execute(
                "SELECT status FROM batches WHERE model = ? AND batch_id = ?", (model, batch_id)
            ).fetchone()
            if row is not None:
                return bool(row["status"] == "claimed")
            conn.execute(
                "INSERT INTO batches (model, batch_id, uri, status, claimed_at) "
                "VALUES (?, ?, ?, 'claimed', ?)",
                (model, batch_id, uri, time.time()),
            )
            return True

    def is_processed(self, model: str, batch_id: str) -> bool:
        rows = self._read(
            "SELECT 1 FROM batches WHERE model = ? AND batch_id = ? AND status != 'claimed'",
            (model, batch_id),
        )
        return bool(rows)

    def batch(self, model: str, batch_id: str) -> BatchRecord | None:
        rows = self._read(
            "SELECT * FROM batches WHERE model = ? AND batch_id = ?", (model, batch_id)
        )
        return _batch(rows[0]) if rows else None

    def batch_status(self, model: str, batch_id: str) -> BatchStatus | None:
        record = self.batch(model, batch_id)
        return record.status if record else None

    def batch_reason(self, model: str, batch_id: str) -> str | None:
        record = self.batch(model, batch_id)
        return record.reason if record else None

    def processed_ids(self, model: str) -> set[str]:
        rows = self._read(
            "SELECT batch_id FROM batches WHERE model = ? AND status != 'claimed'", (model,)
        )
        return {r["batch_id"] for r in rows}

    @staticmethod
    def finish_batch(
        conn: sqlite3.Connection,
        *,
        model: str,
        batch_id: str,
        status: Literal["scored", "rejected", "failed"],
        rows: int | None,
        reference_version: str | None,
        dataset_drift: bool | None = None,
        drift_share: float | None = None,
        result: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> int:
        """Record a batch's result inside a transaction; returns its seq."""
        cur = conn.execute(
            "UPDATE batches SET status = ?, finished_at = ?, rows = ?, reference_version = ?, "
            "dataset_drift = ?, drift_share = ?, result = ?, reason = ? "
            "WHERE model = ? AND batch_id = ? RETURNING seq",
            (
                status,
                time.time(),
                rows,
                reference_version,
                None if dataset_drift is None else int(dataset_drift),
                drift_share,
                None if result is None else json.dumps(result),
                reason,
                model,
                batch_id,
            ),
        )
        row = cur.fetchone()
        if row is None:
            raise LookupError(f"batch {model}/{batch_id} was never claimed")
        return int(row["seq"])

    def recent_batches(self, model: str, limit: int = 20) -> list[BatchRecord]:
        rows = self._read(
            "SELECT * FROM batches WHERE model = ? AND status != 'claimed' "
            "ORDER BY seq DESC LIMIT ?",
            (model, limit),
        )
        return [_batch(r) for r in rows]

    @staticmethod
    def drift_flags_since_reset(conn: sqlite3.Connection, model: str, limit: int) -> list[bool]:
        """Dataset-drift flags of scored batches since the last streak reset, newest first."""
        rows = conn.execute(
            "SELECT b.dataset_drift FROM batches b "
            "LEFT JOIN model_state m ON m.model = b.model "
            "WHERE b.model = ? AND b.status = 'scored' AND b.seq > COALESCE(m.streak_reset_seq, 0) "
            "ORDER BY b.seq DESC LIMIT ?",
            (model, limit),
        ).fetchall()
        return [bool(r["dataset_drift"]) for r in rows]

    @staticmethod
    def drifted_columns_since_reset(
        conn: sqlite3.Connection, model: str, limit: int
    ) -> list[dict[str, bool]]:
        """Per scored batch since the last streak reset (newest first): which columns
        drifted. For the importance-weighted drift signal."""
        rows = conn.execute(
            "SELECT b.result FROM batches b LEFT JOIN model_state m ON m.model = b.model "
            "WHERE b.model = ? AND b.status = 'scored' AND b.seq > COALESCE(m.streak_reset_seq, 0) "
            "ORDER BY b.seq DESC LIMIT ?",
            (model, limit),
        ).fetchall()
        out = []
        for r in rows:
            columns = (json.loads(r["result"]) if r["result"] else {}).get("drift", {})
            out.append({k: bool(c["drifted"]) for k, c in columns.get("columns", {}).items()})
        return out

    def drift_streak(self, model: str) -> int:
        with self._lock:
            flags = self.drift_flags_since_reset(self._conn, model, 10_000)
        streak = 0
        for drifted in flags:
            if not drifted:
                break
            streak += 1
        return streak

    @staticmethod
    def reset_streak(conn: sqlite3.Connection, model: str) -> None:
        """The next trigger needs a new streak: after a trigger, and after a new reference."""
        conn.execute(
            "INSERT INTO model_state (model, streak_reset_seq, updated_at) "
            "VALUES (?, (SELECT COALESCE(MAX(seq), 0) FROM batches WHERE model = ?), ?) "
            "ON CONFLICT (model) DO UPDATE SET streak_reset_seq = excluded.streak_reset_seq, "
            "updated_at = excluded.updated_at",
            (model, model, time.time()),
        )

    # ---- reference version ----------------------------------------------------------------

    def reference_version(self, model: str) -> str | None:
        rows = self._read("SELECT reference_version FROM model_state WHERE model = ?", (model,))
        return rows[0]["reference_version"] if rows else None

    def set_reference_version(self, model: str, version: str) -> bool:
        """Record the reference in use; a change restarts the drift streak. True if changed."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT reference_version FROM model_state WHERE model = ?", (model,)
            ).fetchone()
            if row is not None and row["reference_version"] == version:
                return False
            self.reset_streak(conn, model)
            conn.execute(
                "UPDATE model_state SET reference_version = ?, updated_at = ? WHERE model = ?",
                (version, time.time(), model),
            )
            # The model's age (the max_age/min_age signals) counts from here.
            self.set_watermark(conn, f"deployed_at:{model}", repr(time.time()))
            return True

    def note_deployment(self, model: str) -> None:
        """A state file from before ages were kept has no deployment time: count from now."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO watermarks (key, value, updated_at) VALUES (?, ?, ?)",
                (f"deployed_at:{model}", repr(time.time()), time.time()),
            )

    def deployed_at(self, model: str) -> float | None:
        """When the daemon started using the model's current reference version."""
        value = self.watermark(f"deployed_at:{model}")
        return None if value is None else float(value)

    # ---- decisions ----------------------------------------------------------------------

    @staticmethod
    def record_decision(
        conn: sqlite3.Connection,
        *,
        model: str,
        batch_id: str | None,
        outcome: str,
        reason: str,
        run_id: str | None = None,
        at: float | None = None,
        signal: str | None = None,
        readings: list[dict[str, Any]] | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO decisions (model, batch_id, at, outcome, reason, run_id, signal, "
            "readings) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                model,
                batch_id,
                time.time() if at is None else at,
                outcome,
                reason,
                run_id,
                signal,
                None if readings is None else json.dumps(readings, default=_finite),
            ),
        )

    @staticmethod
    def trigger_times(conn: sqlite3.Connection, model: str, since: float) -> list[float]:
        """When triggers (real or dry-run) were decided for the model since `since`."""
        rows = conn.execute(
            "SELECT at FROM decisions WHERE model = ? AND outcome IN ('triggered', 'dry_run', "
            "'manual') AND at >= ? ORDER BY at",
            (model, since),
        ).fetchall()
        return [float(r["at"]) for r in rows]

    def decisions(
        self, model: str, limit: int = 10, *, batch_id: str | None = None
    ) -> list[Decision]:
        """Newest first; only those about `batch_id` when given."""
        rows = self._read(
            "SELECT * FROM decisions WHERE model = ? AND (? IS NULL OR batch_id = ?) "
            "ORDER BY id DESC LIMIT ?",
            (model, batch_id, batch_id, limit),
        )
        return [
            Decision(
                r["model"],
                r["batch_id"],
                r["at"],
                r["outcome"],
                r["reason"],
                r["run_id"],
                r["signal"],
                json.loads(r["readings"]) if r["readings"] else [],
            )
            for r in rows
        ]

    def last_decision_with_readings(self, model: str) -> Decision | None:
        """The newest decision that recorded the signals' readings (for `watcher status`)."""
        rows = self._read(
            "SELECT id FROM decisions WHERE model = ? AND readings IS NOT NULL "
            "ORDER BY id DESC LIMIT 1",
            (model,),
        )
        if not rows:
            return None
        found = self._read("SELECT * FROM decisions WHERE id = ?", (rows[0]["id"],))
        r = found[0]
        return Decision(
            r["model"],
            r["batch_id"],
            r["at"],
            r["outcome"],
            r["reason"],
            r["run_id"],
            r["signal"],
            json.loads(r["readings"]),
        )

    @staticmethod
    def last_trigger_at(conn: sqlite3.Connection, model: str, signal: str) -> float | None:
        """When `signal` last triggered (or dry-ran) a retrain of the model."""
        row = conn.execute(
            "SELECT MAX(at) AS at FROM decisions WHERE model = ? AND signal = ? "
            "AND outcome IN ('triggered', 'dry_run')",
            (model, signal),
        ).fetchone()
        return None if row is None or row["at"] is None else float(row["at"])

    # ---- performance: the production model's loss per labelled period --------------------

    @staticmethod
    def add_label_period(conn: sqlite3.Connection, model: str, period: LabelPeriod) -> bool:
        """Record (or, when more of its rows are labelled now, update) a period's loss.
        True when something changed."""
        cur = conn.execute(
            "INSERT INTO label_periods (model, period, version, metric, value, loss, rows, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, period, version) DO UPDATE SET "
            "metric = excluded.metric, value = excluded.value, loss = excluded.loss, "
            "rows = excluded.rows, at = excluded.at WHERE excluded.rows != label_periods.rows",
            (
                model,
                period.period,
                period.version,
                period.metric,
                period.value,
                period.loss,
                period.rows,
                period.at,
            ),
        )
        return cur.rowcount == 1

    @staticmethod
    def label_periods(
        conn: sqlite3.Connection, model: str, version: str, *, after: float = 0.0
    ) -> list[LabelPeriod]:
        """The periods served by `version`, oldest first; only those recorded after `after`."""
        rows = conn.execute(
            "SELECT * FROM label_periods WHERE model = ? AND version = ? AND at > ? ORDER BY id",
            (model, version, after),
        ).fetchall()
        return [
            LabelPeriod(
                r["period"], r["version"], r["metric"], r["value"], r["loss"], r["rows"], r["at"]
            )
            for r in rows
        ]

    @staticmethod
    def batches_served(conn: sqlite3.Connection, model: str, version: str) -> int:
        """Batches scored against `version` (its age in batches)."""
        row = conn.execute(
            "SELECT COUNT(*) AS n FROM batches WHERE model = ? AND reference_version = ? "
            "AND status = 'scored'",
            (model, version),
        ).fetchone()
        return int(row["n"])

    @staticmethod
    def batches_served_since(
        conn: sqlite3.Connection, model: str, version: str, since: float
    ) -> int:
        """Batches scored against `version` after `since` (Unix time)."""
        row = conn.execute(
            "SELECT COUNT(*) AS n FROM batches WHERE model = ? AND reference_version = ? "
            "AND status = 'scored' AND finished_at > ?",
            (model, version, since),
        ).fetchone()
        return int(row["n"])

    @staticmethod
    def batch_version(conn: sqlite3.Connection, model: str, batch_prefix: str) -> str | None:
        """The reference version the newest scoring of a batch (or its revisions) used."""
        row = conn.execute(
            "SELECT reference_version FROM batches WHERE model = ? AND status = 'scored' "
            "AND (batch_id = ? OR substr(batch_id, 1, ?) = ?) ORDER BY seq DESC LIMIT 1",
            (model, batch_prefix, len(batch_prefix) + 4, batch_prefix + "#rev"),
        ).fetchone()
        return None if row is None else str(row["reference_version"])

    # ---- outbox -------------------------------------------------------------------------

    @staticmethod
    def enqueue(
        conn: sqlite3.Connection, action: Action, *, not_before: float | None = None
    ) -> bool:
        """Add an action unless one with the same key exists. True when added."""
        now = time.time()
        cur = conn.execute(
            "INSERT OR IGNORE INTO outbox (kind, key, model, payload, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                action.kind,
                action.key,
                action.model,
                _scrub(conn, json.dumps(action.payload)),
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
        return [_outbox(r) for r in rows]

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
    def complete_actions(conn: sqlite3.Connection, item_ids: list[int]) -> None:
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
        return [_outbox(r) for r in rows]

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
        return [_run(r) for r in rows]

    def retraining(self, model: str) -> bool:
        """A retrain of the model is queued, running, or waiting in the outbox."""
        with self._lock:
            return self.has_active_run(self._conn, model)

    @staticmethod
    def has_active_run(conn: sqlite3.Connection, model: str) -> bool:
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
        conn: sqlite3.Connection, key: str, kind: str, model: str | None, details: dict[str, Any]
    ) -> bool:
        """Open an incident unless it is already open. True when newly opened."""
        row = conn.execute("SELECT resolved_at FROM incidents WHERE key = ?", (key,)).fetchone()
        if row is not None and row["resolved_at"] is None:
            return False
        conn.execute(
            "INSERT INTO incidents (key, kind, model, opened_at, details) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET opened_at = excluded.opened_at, resolved_at = NULL, "
            "last_notified_at = NULL, details = excluded.details",
            (key, kind, model, time.time(), _scrub(conn, json.dumps(details))),
        )
        return True

    @staticmethod
    def resolve_incident(conn: sqlite3.Connection, key: str) -> bool:
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

    # ---- watermarks (sql source) --------------------------------------------------------

    def watermark(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM watermarks WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    @staticmethod
    def set_watermark(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO watermarks (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            (key, value, time.time()),
        )


class _Connection(sqlite3.Connection):
    """A connection that carries the store's scrubber, so the static helpers that write
    inside a transaction (`enqueue`, `open_incident`) scrub too."""

    scrub: Callable[[str], str] = staticmethod(lambda text: text)


def _scrub(conn: sqlite3.Connection, text: str) -> str:
    scrub: Callable[[str], str] | None = getattr(conn, "scrub", None)
    return text if scrub is None else scrub(text)


def _is_write_failure(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return any(
        what in text for what in ("full", "readonly", "read-only", "disk i/o", "unable to open")
    )


class StateLocked(WatcherError):
    """Another daemon runs on the same state directory."""


class StateDirLock:
    """One daemon per state directory: an exclusive `flock` on ``<state_dir>/daemon.lock``.

    Two daemons on one state would both claim the same batches and mail the same alerts.
    The kernel drops the lock when the process dies (even by SIGKILL), so a crash never
    leaves a stale lock behind. CLI commands (`status`, `trigger`) do not take it.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(
                f"another watcher daemon (pid {holder}) is running on the state directory "
                f"{self.path.parent}; refusing to start a second one",
                hint="stop the other daemon first, or give this one its own daemon.state_dir",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _finite(value: Any) -> Any:
    """json.dumps default: numpy scalars as Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a decision's readings")


def _batch(r: sqlite3.Row) -> BatchRecord:
    return BatchRecord(
        seq=r["seq"],
        model=r["model"],
        batch_id=r["batch_id"],
        uri=r["uri"],
        status=r["status"],
        finished_at=r["finished_at"],
        rows=r["rows"],
        reference_version=r["reference_version"],
        dataset_drift=None if r["dataset_drift"] is None else bool(r["dataset_drift"]),
        drift_share=r["drift_share"],
        result=json.loads(r["result"]) if r["result"] else None,
        reason=r["reason"],
    )


def _outbox(r: sqlite3.Row) -> OutboxItem:
    return OutboxItem(
        id=r["id"],
        kind=r["kind"],
        key=r["key"],
        model=r["model"],
        payload=json.loads(r["payload"]),
        attempts=r["attempts"],
        created_at=r["created_at"],
        sending_at=r["sending_at"],
    )


def _run(r: sqlite3.Row) -> RunRecord:
    return RunRecord(
        run_id=r["run_id"],
        model=r["model"],
        dag_id=r["dag_id"],
        state=r["state"],
        conf=json.loads(r["conf"]),
        triggered_at=r["triggered_at"],
        updated_at=r["updated_at"],
        ended_at=r["ended_at"],
        handled=bool(r["handled"]),
    )
