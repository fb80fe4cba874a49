"""The store's connection and transactions, the same on both backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from watcher.errors import WatcherError
from watcher.state.config import StateTarget
from watcher.state.db import (
    DB_ERRORS,
    StateConn,
    connect_postgres,
    connect_sqlite,
    is_write_failure,
)
from watcher.state.migrate import ensure_schema


class StateUnavailable(WatcherError):
    """The state database cannot be opened (server down, wrong DSN or password)."""


class StoreCore:
    """Thread-safe access to the state database. One instance per process.

    Calls are short (milliseconds); the daemon makes them from worker threads next to the
    CPU work, or from the event loop for the few small reads of the dispatchers.
    """

    def __init__(
        self,
        target: Path | str | StateTarget,
        *,
        auto_migrate: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        if isinstance(target, Path):
            target = StateTarget.sqlite(target)
        elif isinstance(target, str):
            target = StateTarget.postgres(target)
        self.target = target
        # The SQLite file (None on PostgreSQL).
        self.path = target.path
        self._connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._closed = False
        self._scrub: Callable[[str], str] = _identity
        try:
            self._conn = self._connect()
        except DB_ERRORS as exc:
            raise StateUnavailable(
                f"cannot open the state database {target.where}: {exc}".strip(),
                hint="check [state] (dsn, password) and that the database server is up",
            ) from exc
        except ImportError as exc:
            raise StateUnavailable(
                f"the PostgreSQL state backend needs psycopg, which is not installed ({exc})",
                hint="pip install 'watcher-drift[sql]'",
            ) from exc
        try:
            ensure_schema(self._conn, target.sqlalchemy_url, target.where, auto=auto_migrate)
        except BaseException:
            self._conn.close()
            raise
        # Set by a replica (watcher.replicas): run first in every transaction made for a
        # model, it refuses the transaction once this replica no longer owns the model.
        self.fencer: Callable[[StateConn, str], None] | None = None
        # Why the last write failed (disk full, read-only, I/O error, server gone), None
        # once one works: the daemon's health and `watcher_state_writable` read it.
        self.write_error: str | None = None

    def _connect(self) -> StateConn:
        if self.target.path is not None:
            conn = connect_sqlite(self.target.path)
        else:
            conn = connect_postgres(self.target.conninfo, connect_timeout=self._connect_timeout)
        conn.scrub = self._scrub
        return conn

    def _live(self) -> StateConn:
        """The connection, opened again when PostgreSQL dropped it (a server restart, a
        terminated backend): the failed call raised; the next one reconnects. Never after
        `close`: a scoring thread that a shutdown abandoned must not reconnect and commit
        behind the back of the daemon that stopped (or of the one that replaced it)."""
        if self._closed:
            raise StateUnavailable(
                f"the state store {self.target.where} is closed",
                hint="the daemon stopped; the batch is scored again at the next start",
            )
        if not self._conn.usable:
            self._conn = self._connect()
        return self._conn

    @property
    def dialect(self) -> str:
        return self.target.dialect

    @property
    def scrub(self) -> Callable[[str], str]:
        return self._scrub

    @scrub.setter
    def scrub(self, scrubber: Callable[[str], str]) -> None:
        """Every text stored from outside (errors, alert payloads, incident details) passes
        through this; the daemon sets its Scrubber, so a secret a server echoed never
        reaches the state database or `watcher status`."""
        self._scrub = scrubber
        self._conn.scrub = scrubber

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()

    @contextmanager
    def transaction(self, *, fsync: bool = True, model: str | None = None) -> Iterator[StateConn]:
        """BEGIN (IMMEDIATE on SQLite) … COMMIT; everything inside is written together or
        not at all. `fsync=False`: the commit does not wait for the disk (see `begin`).
        `model`: a write for that model, fenced by the replica's lease when there is one."""
        with self._lock:
            conn = self._live()
            changes = conn.changes
            try:
                conn.begin(durable=fsync)
                try:
                    if model is not None and self.fencer is not None:
                        self.fencer(conn, model)
                    yield conn
                    conn.commit()
                except BaseException:
                    # A COMMIT that failed (disk full) leaves the transaction open: without
                    # this rollback every later BEGIN would fail too.
                    conn.rollback()
                    raise
            except DB_ERRORS as exc:
                if is_write_failure(exc):
                    self.write_error = str(exc)
                raise
            if conn.changes > changes:  # an empty transaction proves nothing
                self.write_error = None

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """A read, asked once more on a new connection when the server had dropped this one
        (a restart, a terminated backend). Unlike a write, a read is safe to repeat; without
        this a replica starting while PostgreSQL restarts died on its first query."""
        with self._lock:
            try:
                return list(self._live().execute(sql, params).fetchall())
            except DB_ERRORS:
                if self._closed or self._conn.usable:
                    raise  # not a lost connection: a second try would fail the same way
                return list(self._live().execute(sql, params).fetchall())

    # ---- watermarks (sql source) --------------------------------------------------------

    def watermark(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM watermarks WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    @staticmethod
    def watermark_in(conn: StateConn, key: str) -> str | None:
        """The watermark as of the caller's transaction (a read-modify-write loses nothing)."""
        row = conn.execute("SELECT value FROM watermarks WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def set_watermark(conn: StateConn, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO watermarks (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            (key, value, time.time()),
        )


def _identity(text: str) -> str:
    return text
