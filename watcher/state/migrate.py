"""Schema versions of the state database, kept by Alembic for both backends.

Every database records its revision in `alembic_version`. `ensure_schema` runs when a
store opens: at the newest revision nothing happens (one small read); behind it, the
database is upgraded in place when `auto` (the default, `[state] auto_migrate`), else the
store refuses to open and says to run `watcher migrate`; a revision this watcher does not
know was written by a newer release and is refused, never touched. A watcher 0.1 state
file (no `alembic_version`) is adopted by the baseline revision with its history.

Two processes upgrading at once (replicas starting together, `watcher status` next to a
starting daemon) are serialised: a transaction-scoped advisory lock on PostgreSQL, an
exclusive `flock` next to the file on SQLite; the second finds the work done.
"""

from __future__ import annotations

import fcntl
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from watcher.errors import WatcherError
from watcher.state.db import StateConn

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key of schema upgrades ("watcher" in ASCII, as a bigint).
_PG_LOCK = 0x77617463686572


class StateSchemaError(WatcherError):
    """The state database's schema is not one this watcher can use as it is."""


def _config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@lru_cache(maxsize=1)
def revisions() -> tuple[str, tuple[str, ...]]:
    """(head, every known revision) of this watcher's migrations."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    head = script.get_current_head()
    assert head is not None
    return head, tuple(r.revision for r in script.walk_revisions())


def current_revision(conn: StateConn) -> str | None:
    """The database's revision; None for an empty database or a watcher 0.1 state file."""
    if conn.dialect == "sqlite":
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).fetchone()
    else:
        found = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_name = 'alembic_version'"
        ).fetchone()
    if found is None:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row["version_num"])


def check_known(revision: str | None, where: str) -> None:
    head, known = revisions()
    if revision is not None and revision not in known:
        raise StateSchemaError(
            f"the state database {where} has schema revision {revision!r}, written by a newer "
            f"watcher release; this watcher knows revisions up to {head!r} and will not touch it",
            hint="run the newer watcher release against this database, or point [state] at "
            "another database",
        )


def ensure_schema(conn: StateConn, url: str, where: str, *, auto: bool) -> None:
    """Bring the database to this watcher's revision, or refuse it (see the module doc)."""
    revision = current_revision(conn)
    head, _ = revisions()
    if revision == head:
        return
    check_known(revision, where)
    if not auto:
        raise StateSchemaError(
            f"the state database {where} is at schema revision {revision or 'none'}, "
            f"this watcher needs {head!r}",
            hint="run `watcher migrate` (back the database up first), or set "
            "[state] auto_migrate = true",
        )
    upgrade(url, where)


def upgrade(url: str, where: str) -> tuple[str | None, str]:
    """Upgrade to the newest revision; returns (revision before, revision after)."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    lock_fd = _file_lock(url) if engine.dialect.name == "sqlite" else None
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
            before = MigrationContext.configure(connection).get_current_revision()
            check_known(before, where)
            cfg = _config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
            after = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
        if lock_fd is not None:
            os.close(lock_fd)  # closing drops the flock
    assert after is not None
    return before, after


def _file_lock(url: str) -> int:
    path = Path(url.removeprefix("sqlite:///") + ".migrate.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
