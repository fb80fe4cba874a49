"""Leases: which replica owns which model, with fencing, and outbox claims.

A lease is a row (model, owner, token, expires_at). `acquire` takes a model whose lease
expired (or renews one's own); `renew` (the heartbeat) extends the leases still held;
a replica that dies or hangs stops renewing and loses its models after `lease_seconds`.
Every change of owner increments the token. `fence` runs inside a batch's transaction:
it refuses the transaction (`LeaseLost`) unless the lease is still this owner's, with
this token, unexpired. On PostgreSQL it locks the lease row (FOR UPDATE), so a takeover
waits for the transaction to end; on SQLite BEGIN IMMEDIATE already serialises writers.

Times are the database's clock, not the replicas': replicas on hosts whose clocks
disagree still agree on when a lease expires.

`claim_due` hands each due outbox action to one replica (FOR UPDATE SKIP LOCKED on
PostgreSQL): a claim holds for `claim_seconds`, after which a replica that died while
delivering has its actions claimed by another (deliveries are idempotent by key);
`hold_claim`, right before each delivery, renews the claim or says it was lost. Once
`claim_owner` is set (the daemon does on PostgreSQL), `due_actions` claims: the
dispatchers deliver only what this replica claimed, without knowing about replicas.

`beat_replica` announces a live replica (the `replicas` table, renewed with its leases):
every replica divides the models by the number alive (see `watcher.replicas`).
"""

from __future__ import annotations

from watcher.errors import WatcherError
from watcher.state.db import StateConn
from watcher.state.outbox import OutboxStore
from watcher.state.records import ActionKind, OutboxItem, outbox_of


class LeaseLost(WatcherError):
    """This replica no longer owns the model: its transaction was refused."""


def now_sql(conn: StateConn) -> str:
    """The database's clock as Unix seconds, in SQL."""
    if conn.dialect == "sqlite":
        return "((julianday('now') - 2440587.5) * 86400.0)"
    return "extract(epoch from clock_timestamp())::double precision"


class LeaseStore(OutboxStore):
    # Set by a replica on PostgreSQL: `due_actions` then claims what it returns.
    claim_owner: str | None = None
    claim_seconds: float = 120.0

    def due_actions(self, kind: ActionKind, now: float, limit: int = 100) -> list[OutboxItem]:
        """Without replicas: every due action. With: the due actions this replica claimed
        before and has not delivered yet (a mail waiting for its report), then new claims."""
        if self.claim_owner is None:
            return super().due_actions(kind, now, limit)
        with self.transaction(fsync=False) as conn:
            db_now = now_sql(conn)
            rows = conn.execute(
                "SELECT * FROM outbox WHERE kind = ? AND status = 'pending' "
                f"AND next_attempt_at <= {db_now} AND claimed_by = ? "
                f"AND claimed_until >= {db_now} ORDER BY id LIMIT ?",
                (kind, self.claim_owner, limit),
            ).fetchall()
        mine = [outbox_of(r) for r in rows]
        fresh = self.claim_due(kind, self.claim_owner, self.claim_seconds, limit - len(mine))
        return sorted(mine + fresh, key=lambda item: item.id)

    def hold_claim(self, item_id: int) -> bool:
        """Right before delivering an action: extend this replica's claim on it for another
        `claim_seconds`, or False when the claim ran out and the action may be another
        replica's now. A dispatcher that claimed a long list and works through it slowly
        (a slow SMTP server, retries) would otherwise deliver items whose claims expired
        meanwhile, while the replica that claimed them next delivers them too."""
        if self.claim_owner is None:
            return True  # one daemon: nobody else delivers
        with self.transaction() as conn:
            db_now = now_sql(conn)
            cur = conn.execute(
                f"UPDATE outbox SET claimed_until = {db_now} + ? WHERE id = ? "
                "AND status = 'pending' AND claimed_by = ? "
                f"AND claimed_until >= {db_now}",
                (self.claim_seconds, item_id, self.claim_owner),
            )
            return cur.rowcount == 1

    def acquire(self, model: str, owner: str, lease_seconds: float) -> int | None:
        """Own `model` for `lease_seconds`: the fencing token, or None while another
        replica's lease on it runs."""
        with self.transaction() as conn:
            now = now_sql(conn)
            row = conn.execute(
                "INSERT INTO leases (model, owner, token, expires_at) "
                f"VALUES (?, ?, 1, {now} + ?) ON CONFLICT (model) DO UPDATE SET "
                "token = CASE WHEN leases.owner = excluded.owner THEN leases.token "
                "ELSE leases.token + 1 END, owner = excluded.owner, "
                "expires_at = excluded.expires_at "
                f"WHERE leases.owner = excluded.owner OR leases.expires_at < {now} "
                "RETURNING token",
                (model, owner, lease_seconds),
            ).fetchone()
        return None if row is None else int(row["token"])

    def renew(self, owner: str, lease_seconds: float) -> dict[str, int]:
        """The heartbeat: extend every unexpired lease of `owner`; {model: token} held."""
        with self.transaction() as conn:
            now = now_sql(conn)
            rows = conn.execute(
                f"UPDATE leases SET expires_at = {now} + ? WHERE owner = ? "
                f"AND expires_at >= {now} RETURNING model, token",
                (lease_seconds, owner),
            ).fetchall()
        return {r["model"]: int(r["token"]) for r in rows}

    def release(self, owner: str, models: list[str] | None = None) -> None:
        """Give leases up at once (every one on a clean shutdown, or `models` to hand them
        to a replica with fewer): no wait for the expiry."""
        with self.transaction() as conn:
            if models is None:
                conn.execute("UPDATE leases SET expires_at = 0 WHERE owner = ?", (owner,))
                return
            for model in models:
                conn.execute(
                    "UPDATE leases SET expires_at = 0 WHERE owner = ? AND model = ?",
                    (owner, model),
                )

    def beat_replica(self, owner: str, lease_seconds: float) -> int:
        """Announce `owner` alive for `lease_seconds`; the number of live replicas (>= 1)."""
        with self.transaction() as conn:
            now = now_sql(conn)
            conn.execute(
                f"INSERT INTO replicas (owner, expires_at, started_at) VALUES (?, {now} + ?, "
                f"{now}) ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
                (owner, lease_seconds),
            )
            # A replica dead for a day is forgotten (its row only counted it while alive).
            conn.execute(f"DELETE FROM replicas WHERE expires_at < {now} - 86400")
            row = conn.execute(
                f"SELECT COUNT(*) AS n FROM replicas WHERE expires_at >= {now}"
            ).fetchone()
        return max(1, int(row["n"]))

    def drop_replica(self, owner: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM replicas WHERE owner = ?", (owner,))

    def live_leases(self) -> dict[str, str]:
        """{model: owner} of the leases that run now (the database's clock)."""
        with self.transaction(fsync=False) as conn:
            rows = conn.execute(
                f"SELECT model, owner FROM leases WHERE expires_at >= {now_sql(conn)}"
            ).fetchall()
        return {r["model"]: r["owner"] for r in rows}

    def owners(self) -> dict[str, tuple[str, int, float]]:
        """{model: (owner, token, expires_at)} of every lease, expired or not."""
        rows = self._read("SELECT model, owner, token, expires_at FROM leases")
        return {r["model"]: (r["owner"], int(r["token"]), float(r["expires_at"])) for r in rows}

    @staticmethod
    def fence(conn: StateConn, model: str, owner: str, token: int) -> None:
        """Inside a transaction: refuse it unless `owner` still holds `model` with `token`."""
        lock = "" if conn.dialect == "sqlite" else " FOR UPDATE"
        row = conn.execute(
            f"SELECT owner, token, expires_at >= {now_sql(conn)} AS live FROM leases "
            f"WHERE model = ?{lock}",
            (model,),
        ).fetchone()
        if row is None or row["owner"] != owner or int(row["token"]) != token or not row["live"]:
            held = "nobody" if row is None else f"{row['owner']} (token {row['token']})"
            raise LeaseLost(
                f"{owner} lost its lease on model {model} (token {token}); now held by {held}: "
                "the write was refused",
                hint="another replica took the model over; this one stops scoring it",
            )

    def claim_due(
        self, kind: ActionKind, owner: str, claim_seconds: float, limit: int = 100
    ) -> list[OutboxItem]:
        """Due actions of `kind` nobody holds a claim on, each claimed now by `owner` alone
        for `claim_seconds`."""
        with self.transaction() as conn:
            now = now_sql(conn)
            skip = "" if conn.dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
            rows = conn.execute(
                f"UPDATE outbox SET claimed_by = ?, claimed_until = {now} + ? WHERE id IN ("
                "SELECT id FROM outbox WHERE kind = ? AND status = 'pending' "
                f"AND next_attempt_at <= {now} "
                f"AND (claimed_until IS NULL OR claimed_until < {now}) "
                f"ORDER BY id LIMIT ?{skip}) RETURNING *",
                (owner, claim_seconds, kind, limit),
            ).fetchall()
        return sorted((outbox_of(r) for r in rows), key=lambda item: item.id)
