"""One daemon per state directory, and per PostgreSQL state database."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from watcher.errors import WatcherError


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


# First key of the "one daemon per state database" advisory lock ("watc" in ASCII); the
# second is the schema's hash, so deployments in two schemas of one database do not clash.
_PG_DAEMON_LOCK = 0x77617463


class DatabaseLock:
    """One daemon per PostgreSQL state database, until replicas share one: a session
    advisory lock held on a connection of its own for the daemon's lifetime. PostgreSQL
    drops it when that connection ends (the process died, even by SIGKILL)."""

    def __init__(self, conninfo: str, where: str, connect_timeout: float = 10.0) -> None:
        self.conninfo = conninfo
        self.where = where
        self.connect_timeout = connect_timeout
        self._conn: Any = None

    def acquire(self) -> None:
        import psycopg

        conn = psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=max(1, round(self.connect_timeout)),
            application_name=f"watcher daemon pid {os.getpid()}",
        )
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))", (_PG_DAEMON_LOCK,)
        ).fetchone()
        if row is None or not row[0]:
            holder = conn.execute(
                "SELECT a.application_name, a.client_addr FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.granted AND l.classid = %s::oid "
                "AND l.objid = hashtext(current_schema())::oid "
                "AND l.database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) LIMIT 1",
                (_PG_DAEMON_LOCK,),
            ).fetchone()
            conn.close()
            who = "unknown" if holder is None else f"{holder[0]} on {holder[1] or 'local'}"
            raise StateLocked(
                f"another watcher daemon ({who}) is running on the state database "
                f"{self.where}; refusing to start a second one",
                hint="stop the other daemon first, or give this one its own [state] database",
            )
        self._conn = conn

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # ends the session: the lock goes with it
            self._conn = None
