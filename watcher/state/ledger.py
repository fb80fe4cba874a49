"""The batch ledger, each model's reference version and drift-streak reset, the policy's
decisions, and the production model's loss per labelled period.

The ledger is what makes scoring exactly-once across crashes: a batch's result, the
policy's decision and the actions it causes are written in ONE transaction
(`StoreCore.transaction`); the static helpers here take that transaction's connection.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from watcher.state.core import StoreCore
from watcher.state.db import StateConn
from watcher.state.records import (
    BatchRecord,
    BatchStatus,
    Decision,
    LabelPeriod,
    batch_of,
    decision_of,
    finite,
    label_period_of,
)


class LedgerStore(StoreCore):
    # ---- batch ledger -------------------------------------------------------------------

    def claim_batch(self, model: str, batch_id: str, uri: str) -> bool:
        """Claim a batch for processing. False when it was already scored or rejected.

        A batch claimed but never finished (the daemon died while scoring) is claimable
        again: its effects were never committed, so processing it again is not a repeat.
        Not fsynced: a claim lost to a power cut only means the batch is claimed again.
        """
        with self.transaction(fsync=False) as conn:
            # INSERT first: two processes claiming at once never both win (the UNIQUE key).
            added = conn.execute(
                "INSERT INTO batches (model, batch_id, uri, status, claimed_at) "
                "VALUES (?, ?, ?, 'claimed', ?) ON CONFLICT (model, batch_id) DO NOTHING",
                (model, batch_id, uri, time.time()),
            ).rowcount
            if added == 1:
                return True
            row = conn.execute(
                "SELECT status FROM batches WHERE model = ? AND batch_id = ?", (model, batch_id)
            ).fetchone()
            return bool(row["status"] == "claimed")

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
        return batch_of(rows[0]) if rows else None

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
        conn: StateConn,
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

    @staticmethod
    def last_scored(conn: StateConn, model: str, limit: int) -> list[dict[str, Any]]:
        """The model's `limit` last scored batches, newest first: id, uri, finished_at."""
        rows = conn.execute(
            "SELECT batch_id, uri, finished_at FROM batches WHERE model = ? AND status = 'scored' "
            "ORDER BY seq DESC LIMIT ?",
            (model, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    def recent_batches(self, model: str, limit: int = 20) -> list[BatchRecord]:
        rows = self._read(
            "SELECT * FROM batches WHERE model = ? AND status != 'claimed' "
            "ORDER BY seq DESC LIMIT ?",
            (model, limit),
        )
        return [batch_of(r) for r in rows]

    @staticmethod
    def drift_flags_since_reset(conn: StateConn, model: str, limit: int) -> list[bool]:
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
        conn: StateConn, model: str, limit: int
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
            flags = self.drift_flags_since_reset(self._live(), model, 10_000)
        streak = 0
        for drifted in flags:
            if not drifted:
                break
            streak += 1
        return streak

    @staticmethod
    def reset_streak(conn: StateConn, model: str) -> None:
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
                "INSERT INTO watermarks (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO NOTHING",
                (f"deployed_at:{model}", repr(time.time()), time.time()),
            )

    def deployed_at(self, model: str) -> float | None:
        """When the daemon started using the model's current reference version."""
        value = self.watermark(f"deployed_at:{model}")
        return None if value is None else float(value)

    # ---- decisions ----------------------------------------------------------------------

    @staticmethod
    def record_decision(
        conn: StateConn,
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
                None if readings is None else json.dumps(readings, default=finite),
            ),
        )

    @staticmethod
    def trigger_times(conn: StateConn, model: str, since: float) -> list[float]:
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
        sql = "SELECT * FROM decisions WHERE model = ?"
        params: tuple[Any, ...] = (model,)
        if batch_id is not None:
            sql += " AND batch_id = ?"
            params += (batch_id,)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [decision_of(r) for r in rows]

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
        return decision_of(found[0])

    @staticmethod
    def last_trigger_at(conn: StateConn, model: str, signal: str) -> float | None:
        """When `signal` last triggered (or dry-ran) a retrain of the model."""
        row = conn.execute(
            "SELECT MAX(at) AS at FROM decisions WHERE model = ? AND signal = ? "
            "AND outcome IN ('triggered', 'dry_run')",
            (model, signal),
        ).fetchone()
        return None if row is None or row["at"] is None else float(row["at"])

    # ---- performance: the production model's loss per labelled period --------------------

    @staticmethod
    def add_label_period(conn: StateConn, model: str, period: LabelPeriod) -> bool:
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
        conn: StateConn, model: str, version: str, *, after: float = 0.0
    ) -> list[LabelPeriod]:
        """The periods served by `version`, oldest first; only those recorded after `after`."""
        rows = conn.execute(
            "SELECT * FROM label_periods WHERE model = ? AND version = ? AND at > ? ORDER BY id",
            (model, version, after),
        ).fetchall()
        return [label_period_of(r) for r in rows]

    @staticmethod
    def batches_served(conn: StateConn, model: str, version: str) -> int:
        """Batches scored against `version` (its age in batches)."""
        row = conn.execute(
            "SELECT COUNT(*) AS n FROM batches WHERE model = ? AND reference_version = ? "
            "AND status = 'scored'",
            (model, version),
        ).fetchone()
        return int(row["n"])

    @staticmethod
    def batches_served_since(conn: StateConn, model: str, version: str, since: float) -> int:
        """Batches scored against `version` after `since` (Unix time)."""
        row = conn.execute(
            "SELECT COUNT(*) AS n FROM batches WHERE model = ? AND reference_version = ? "
            "AND status = 'scored' AND finished_at > ?",
            (model, version, since),
        ).fetchone()
        return int(row["n"])

    @staticmethod
    def batch_version(conn: StateConn, model: str, batch_prefix: str) -> str | None:
        """The reference version the newest scoring of a batch (or its revisions) used."""
        row = conn.execute(
            "SELECT reference_version FROM batches WHERE model = ? AND status = 'scored' "
            "AND (batch_id = ? OR substr(batch_id, 1, ?) = ?) ORDER BY seq DESC LIMIT 1",
            (model, batch_prefix, len(batch_prefix) + 4, batch_prefix + "#rev"),
        ).fetchone()
        return None if row is None else str(row["reference_version"])
