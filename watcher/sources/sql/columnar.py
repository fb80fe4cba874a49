"""Reading a query's rows as columns: ADBC's PostgreSQL driver, straight into Arrow.

Fetching rows through psycopg builds a Python tuple per row and a Python object per value,
then pandas takes them apart again: for a 200k-row window that is most of the time spent
on it. The ADBC driver (`adbc-driver-postgresql`, C++) reads the result in the binary wire format
into Arrow record batches, with no Python object per value; pandas gets a column at a time.

ADBC opens its own connection. So that it reads exactly what the caller's transaction sees
(the window's count, the schema), the caller's snapshot is exported and imported by the
ADBC transaction (``pg_export_snapshot`` / ``SET TRANSACTION SNAPSHOT``). The connection
takes the caller's libpq parameters (host, user, password, application name, time zone and
statement timeout), so it is one more ``watcher:MODEL`` session, killed and timed out like
the others. Errors come out as SQLAlchemy's DBAPIError, as from any other query.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

# $1, $2...: the placeholders libpq (and so ADBC) binds.
_DIALECT = postgresql.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


def available() -> bool:
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


def arrow_batches(conn: Connection, sql: str, params: dict[str, Any]) -> Iterator[pa.RecordBatch]:
    """The rows of `sql` (SQLAlchemy ``:name`` parameters) as Arrow record batches, read
    in the snapshot of `conn`'s open transaction."""
    import adbc_driver_manager.dbapi as adbc_dbapi
    import adbc_driver_postgresql.dbapi as adbc_pg
    from psycopg.conninfo import make_conninfo

    compiled = text(sql).bindparams(**params).compile(dialect=_DIALECT)
    values = tuple(compiled.params[name] for name in compiled.positiontup or ())
    snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
    driver = conn.connection.driver_connection
    assert driver is not None
    conninfo = make_conninfo(driver.info.dsn, password=driver.info.password or "")
    try:
        with adbc_pg.connect(conninfo) as aconn, aconn.cursor() as cur:
            # autocommit is off: the driver has begun a transaction; give it our snapshot.
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            cur.execute(compiled.string, values)
            reader = cur.fetch_record_batch()
            yield from reader
            aconn.rollback()
    except adbc_dbapi.Error as exc:
        raise DBAPIError.instance(
            compiled.string, values, exc, adbc_dbapi.Error, hide_parameters=True
        ) from exc


def conform(batch: pa.RecordBatch, types: dict[str, str]) -> pa.RecordBatch:
    """Cast the columns whose Arrow type differs from the plan's (int4 to int64, ...)."""
    fields = []
    for f in batch.schema:
        want = types.get(f.name)
        target = pa.type_for_alias(want) if want and want != "timestamp" else f.type
        fields.append(pa.field(f.name, target))
    schema = pa.schema(fields)
    return batch if schema.equals(batch.schema) else batch.cast(schema)
