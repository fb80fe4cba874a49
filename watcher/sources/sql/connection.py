"""PostgreSQL plumbing shared by the sql source, the labels reader and the DAG's ingest step:
the engine (password from the config, never shown), quoted identifiers, the table's schema
checked against the configured column roles, and database errors turned into watcher errors.

Only PostgreSQL is supported (through psycopg 3): schema checks read ``pg_attribute`` and
windows are cut with ``extract(epoch ...)``. Every session runs with ``timezone=UTC``, so a
``timestamp without time zone`` column is read as UTC.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import stamina
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
)

from watcher.config import ColumnsConfig, SqlSourceConfig
from watcher.errors import BatchRejected, ConfigError, SourceError

log = logging.getLogger(__name__)
T = TypeVar("T")

Kind = Literal["numeric", "boolean", "text", "datetime", "uuid", "other"]

# pg_type.typcategory -> what watcher can do with a column of that type.
_CATEGORY: dict[str, Kind] = {
    "N": "numeric",
    "B": "boolean",
    "S": "text",
    "E": "text",  # enums arrive as their labels
    "D": "datetime",
    "U": "uuid",
}
_TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
_INTEGER_TYPES = ("smallint", "integer", "bigint")


def redacted(url: URL) -> str:
    """The DSN as it may appear in logs and errors: the password replaced by ***."""
    return url.render_as_string(hide_password=True)


def build_url(cfg: SqlSourceConfig) -> URL:
    """The connection URL with the password from `password`/`password_file` applied."""
    try:
        url = make_url(cfg.dsn)
    except ArgumentError as exc:
        raise ConfigError(
            "source.dsn is not a database URL",
            hint="write it as postgresql://user@host:5432/dbname (the password goes in "
            "source.password or source.password_file)",
        ) from exc
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigError(
            f"source.dsn {redacted(url)} is not PostgreSQL, the only database the sql "
            "source supports",
            hint="use a postgresql:// URL",
        )
    url = url.set(drivername="postgresql+psycopg")
    if cfg.password is not None:
        url = url.set(password=cfg.password.get_secret_value())
    return url


def make_engine(cfg: SqlSourceConfig, application_name: str) -> Engine:
    """A small pool whose connections are checked before use and time out instead of hanging.

    `pool_pre_ping` replaces connections the server dropped (restart, pg_terminate_backend)
    before a query is sent on them; `hide_parameters` keeps bound values out of error text.
    """
    url = build_url(cfg)
    statement_ms = int(cfg.statement_timeout_seconds * 1000)
    try:
        engine = create_engine(
            url,
            pool_size=2,
            max_overflow=2,
            pool_pre_ping=True,
            pool_recycle=1800,
            hide_parameters=True,
            connect_args={
                "connect_timeout": max(1, math.ceil(cfg.connect_timeout_seconds)),
                "application_name": application_name[:63],
                "options": f"-c timezone=UTC -c statement_timeout={statement_ms}",
            },
        )
    except NoSuchModuleError as exc:  # pragma: no cover - psycopg is a dependency
        raise ConfigError(f"no driver for {redacted(url)}: {exc}") from exc
    event.listen(engine, "handle_error", _close_cursors)
    return engine


def _close_cursors(context: ExceptionContext) -> None:
    # When the connection dies while a server-side (named) cursor is being opened or read,
    # SQLAlchemy lets go of the cursor without closing it; close it rather than leave it
    # to a finaliser.
    for cursor in (
        getattr(context, "cursor", None),
        getattr(context.execution_context, "cursor", None),
    ):
        if cursor is not None and not getattr(cursor, "closed", True):
            close_cursor(cursor)


def close_cursor(cursor: Any) -> None:
    """Close a DBAPI cursor whose connection may be dead.

    psycopg closes a named cursor on the server first; on a connection that died but is
    not marked so yet that fails and leaves the cursor open. Closing the connection (it
    is being discarded anyway) marks it dead, and then the cursor closes.
    """
    try:
        cursor.close()
    except Exception:
        with contextlib.suppress(Exception):
            cursor.connection.close()
        with contextlib.suppress(Exception):
            cursor.close()


# ---- identifiers --------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """A column or table name as a PostgreSQL identifier, safe whatever it contains."""
    return '"' + name.replace('"', '""') + '"'


def quote_table(name: str) -> str:
    """`table` or `schema.table` (as written in the config) quoted part by part."""
    parts = name.split(".")
    if len(parts) > 2 or not all(parts):
        raise ConfigError(
            f"source table {name!r} is not a table name",
            hint="write it as table or schema.table",
        )
    return ".".join(quote_ident(p) for p in parts)


# ---- errors -------------------------------------------------------------------------------


def is_transient(exc: Exception) -> bool:
    """Connection trouble worth retrying: the server went away, refused, or timed out.

    pg_terminate_backend and a server restart surface as OperationalError (AdminShutdown);
    a connection already known dead as InterfaceError or an invalidated connection.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def db_message(exc: BaseException) -> str:
    """The server's own words, without SQLAlchemy's SQL echo and background link."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    lines = [ln for ln in text_.splitlines() if ln.strip()]
    return "; ".join(lines[:2]) if lines else type(exc).__name__


def retrying(fn: Callable[[], T], what: str = "the query") -> T:
    """Call `fn`, retrying connection trouble up to 3 times within 20 s (bounded, jittered).

    Longer outages are the daemon's to wait out: it calls again next round.
    """
    for attempt in stamina.retry_context(
        on=is_transient, attempts=3, timeout=20.0, wait_initial=0.5, wait_max=5.0
    ):
        with attempt:
            if attempt.num > 1:
                log.warning(
                    "database connection lost; trying %s again (attempt %d)", what, attempt.num
                )
            return fn()
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover


def unreachable(exc: Exception, url: URL, table: str) -> SourceError:
    return SourceError(
        f"database {redacted(url)} is unreachable while reading {table}: {db_message(exc)}",
        hint="watcher retries every poll and resumes from its watermark; check that the "
        "server is up and the DSN is right",
    )


def read_failed(exc: Exception, table: str, what: str) -> BatchRejected:
    """A query on the data itself failed (a view dividing by zero, a bad cast in a view)."""
    return BatchRejected(
        f"reading {what} from {table} failed: {db_message(exc)}",
        check="read_error",
        hint=f"run the same SELECT on {table} to see the failing rows; fix the view or the rows, "
        "then replay the window",
    )


# ---- schema -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as PostgreSQL spells it: "double precision", "text", ...
    kind: Kind


_SCHEMA_SQL = text(
    "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, "
    "t.typcategory AS category "
    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE a.attrelid = CAST(:rel AS regclass) AND a.attnum > 0 AND NOT a.attisdropped "
    "ORDER BY a.attnum"
)


def table_columns(conn: Connection, table: str) -> dict[str, Column] | None:
    """Columns of a table or view, or None when there is no such relation."""
    exists = conn.execute(
        text("SELECT to_regclass(:rel) IS NOT NULL"), {"rel": quote_table(table)}
    ).scalar_one()
    if not exists:
        return None
    rows = conn.execute(_SCHEMA_SQL, {"rel": quote_table(table)}).all()
    return {r.name: Column(r.name, r.type, _CATEGORY.get(str(r.category), "other")) for r in rows}


def schema_error(message: str, hint: str) -> SourceError:
    # Not a window's fault: the watermark stays where it is and nothing is lost. Once the
    # table or the config is fixed, the next poll carries on from there.
    return SourceError(message, hint=hint)


def check_schema(
    cols: dict[str, Column] | None,
    table: str,
    timestamp: str,
    columns: ColumnsConfig,
    *,
    label_target: bool = False,
) -> None:
    """Refuse a table that cannot serve the configured roles, saying what to change.

    Raises SourceError: the table is missing, a configured column is missing, the
    timestamp is not a timestamp, or a numeric feature is not numeric (a type change).
    """
    if cols is None:
        raise schema_error(
            f"table or view {table} does not exist (or the user cannot see it)",
            hint="create it, fix source.table, or GRANT SELECT to the user in source.dsn",
        )
    wanted: dict[str, str] = {timestamp: "the timestamp (source.timestamp_column)"}
    wanted |= {c: "a numeric feature (columns.numeric)" for c in columns.numeric}
    wanted |= {c: "a categorical feature (columns.categorical)" for c in columns.categorical}
    if columns.prediction:
        wanted[columns.prediction] = "the prediction (columns.prediction)"
    if columns.score:
        wanted[columns.score] = "the positive class's probability (columns.score)"
    if columns.id:
        wanted[columns.id] = "the id (columns.id)"
    if columns.target and not label_target:
        wanted[columns.target] = "the target (columns.target)"
    missing = [f"{c} ({role})" for c, role in wanted.items() if c not in cols]
    if missing:
        raise schema_error(
            f"{table} has no column {', '.join(missing)}; it has {', '.join(cols) or 'none'}",
            hint="add the column back, point the config at the right column, or remove it "
            "from the model's columns",
        )
    ts = cols[timestamp]
    if ts.type not in _TIMESTAMP_TYPES:
        raise schema_error(
            f"{table}.{timestamp} is {ts.type}, not a timestamp; windows cannot be cut on it",
            hint="use a timestamptz (or timestamp, read as UTC) column as source.timestamp_column",
        )
    for c in columns.numeric:
        if cols[c].kind not in ("numeric", "boolean"):
            raise schema_error(
                f"{table}.{c} is {cols[c].type}, but it is listed as a numeric feature",
                hint=f"change its type back (ALTER TABLE ... ALTER COLUMN {c} TYPE double "
                f"precision USING {c}::double precision), or list it under columns.categorical",
            )
    if columns.score and cols[columns.score].kind != "numeric":
        raise schema_error(
            f"{table}.{columns.score} is {cols[columns.score].type}, but columns.score must "
            "hold the positive class's probability, a number in [0, 1]",
            hint="store the score as double precision, or remove columns.score",
        )
    for c in columns.categorical:
        if cols[c].kind not in ("numeric", "boolean", "text"):
            raise schema_error(
                f"{table}.{c} is {cols[c].type}, which cannot be scored as a categorical feature",
                hint=f"expose {c} as text in a view, or remove it from columns.categorical",
            )


def select_expr(
    col: Column, *, as_number: bool, alias: str | None = None, relation: str = "t"
) -> str:
    """The SELECT item for a column, typed the way pandas and the drift tests want it.

    Numbers that are scored as numbers come as float8 (never `Decimal` objects); integer
    categories stay integers; uuids and other exotic types come as text.
    """
    q = f"{relation}.{quote_ident(col.name)}"
    as_ = quote_ident(alias or col.name)
    if yields_float(col, as_number=as_number):
        if col.kind == "boolean":
            return f"CAST(CAST({q} AS integer) AS double precision) AS {as_}"
        return f"CAST({q} AS double precision) AS {as_}"
    if col.kind in ("uuid", "other"):
        return f"CAST({q} AS text) AS {as_}"
    return f"{q} AS {as_}"


def yields_float(col: Column, *, as_number: bool) -> bool:
    """Whether `select_expr` reads the column as float8."""
    if col.kind == "numeric":
        return as_number or col.type not in _INTEGER_TYPES
    return col.kind == "boolean" and as_number
