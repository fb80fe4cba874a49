"""One connection to the state database, SQLite (the embedded default) or PostgreSQL.

The store's SQL is written once, in the dialect both engines share, with `?` placeholders
and rows read by column name; `StateConn` runs it on either driver (sqlite3, or psycopg 3
with the placeholders rewritten) and keeps the store's scrubber, so the helpers that write
inside a transaction scrub what they store. Raw drivers rather than an ORM: a batch's
transaction must be exactly one BEGIN … COMMIT (`BEGIN IMMEDIATE` on SQLite), which the
drivers give without an extra layer deciding when to begin.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]


def _driver_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:  # the postgres backend needs the `sql` extra; SQLite never does
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


# What a failed state read or write raises, whichever the backend.
DB_ERRORS: tuple[type[Exception], ...] = _driver_errors()


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled). The store's SQL has no
    `?` inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


class StateConn:
    """A driver connection with the sqlite3 calling convention on both backends."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect: Dialect = dialect
        self.scrub: Callable[[str], str] = _identity
        self._changes = 0  # rows changed through this connection (PostgreSQL)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.dialect == "sqlite":
            cur: Cursor = self.raw.execute(sql, params)
            return cur
        cur = self.raw.execute(_pg_sql(sql), tuple(params))
        if not _is_read(sql):
            self._changes += max(cur.rowcount, 0)
        return cur

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> None:
        if self.dialect == "sqlite":
            self.raw.executemany(sql, seq)
            return
        with self.raw.cursor() as cur:
            cur.executemany(_pg_sql(sql), [tuple(p) for p in seq])
            self._changes += max(cur.rowcount, 0)

    @property
    def changes(self) -> int:
        """A counter that grows when a statement changed rows (to tell an empty transaction)."""
        if self.dialect == "sqlite":
            return int(self.raw.total_changes)
        return self._changes

    @property
    def in_transaction(self) -> bool:
        if self.dialect == "sqlite":
            return bool(self.raw.in_transaction)
        from psycopg.pq import TransactionStatus

        return bool(self.raw.info.transaction_status != TransactionStatus.IDLE)

    @property
    def usable(self) -> bool:
        """False once a PostgreSQL connection was lost (server restart, terminated)."""
        return self.dialect == "sqlite" or not (self.raw.closed or self.raw.broken)

    def begin(self, *, durable: bool = True) -> None:
        """`durable=False`: this commit does not wait for the disk (it survives kill -9,
        not a power cut) — for writes that are safe to lose, such as a batch's claim."""
        if self.dialect == "sqlite":
            # A pragma cannot change inside a transaction; the store's next begin resets it.
            self.raw.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.raw.execute("BEGIN IMMEDIATE")
            return
        self.raw.execute("BEGIN")
        if not durable:
            self.raw.execute("SET LOCAL synchronous_commit = off")

    def commit(self) -> None:
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.usable and self.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


def _identity(text: str) -> str:
    return text


def _is_read(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


def connect_sqlite(path: Path) -> StateConn:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    raw.row_factory = sqlite3.Row
    raw.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed batch result or outbox row survives a power cut, not just a crash.
    raw.execute("PRAGMA synchronous=FULL")
    raw.execute("PRAGMA foreign_keys=ON")
    return StateConn(raw, "sqlite")


def connect_postgres(dsn: str, *, connect_timeout: float = 10.0) -> StateConn:
    import psycopg
    from psycopg.rows import dict_row

    raw = psycopg.connect(
        dsn,
        autocommit=True,  # transactions are explicit: BEGIN … COMMIT in `transaction`
        row_factory=dict_row,
        connect_timeout=max(1, round(connect_timeout)),
        application_name="watcher",
    )
    return StateConn(raw, "postgresql")


def is_write_failure(exc: Exception) -> bool:
    """The state cannot be written (disk full, read-only, I/O error, server gone): the
    daemon's health and `watcher_state_writable` report it until a write works again."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(
            what in text for what in ("full", "readonly", "read-only", "disk i/o", "unable to open")
        )
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(exc, psycopg.OperationalError)
