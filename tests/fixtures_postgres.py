"""A fresh database per test on the real PostgreSQL (127.0.0.1:5432, user postgres, trust),
and a writer that logs predictions the way a serving system does.

The server must be running: a missing server fails the tests loudly rather than skipping.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
from psycopg import sql

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
BIKESHARE = (
    Path(__file__).resolve().parents[1] / "examples/bikeshare/data/bikeshare_2011_hourly.csv"
)

NUMERIC = ["temp", "atemp", "hum", "windspeed"]
CATEGORICAL = ["season", "weathersit", "workingday"]

PREDICTIONS_DDL = """
CREATE TABLE predictions (
    id text PRIMARY KEY,
    ts timestamptz,
    temp double precision,
    atemp double precision,
    hum double precision,
    windspeed double precision,
    season integer,
    weathersit text,
    workingday integer,
    predicted double precision,
    request jsonb,
    inserted_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX predictions_ts ON predictions (ts);
CREATE TABLE labels (
    id text NOT NULL,
    label double precision NOT NULL,
    labelled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX labels_id ON labels (id);
"""

_COLUMNS = ["id", "ts", *NUMERIC, *CATEGORICAL, "predicted", "request"]


@dataclass(frozen=True)
class PgDatabase:
    """One throwaway database."""

    name: str

    @property
    def url(self) -> str:
        """SQLAlchemy/watcher form of the DSN."""
        return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"

    @property
    def conninfo(self) -> str:
        return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={self.name}"

    def execute(self, statement: str, params: Mapping[str, Any] | None = None) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(statement.encode(), params)

    def scalar(self, statement: str, params: Mapping[str, Any] | None = None) -> Any:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(statement.encode(), params).fetchone()
            return None if row is None else row[0]

    def terminate_watcher_connections(self, *, busy_only: bool = False) -> int:
        """pg_terminate_backend on the connections watcher holds to this database (only
        those in the middle of a query or transaction with `busy_only`)."""
        busy = " AND state <> 'idle'" if busy_only else ""
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = %s AND application_name LIKE 'watcher:%%'{busy}",
                (self.name,),
            ).fetchall()
        return len(rows)


class PredictionLog:
    """Writes like a serving system: each request's predictions in one short transaction,
    `inserted_at` stamped by the database; labels arrive later in their own table."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        db.execute(PREDICTIONS_DDL)

    def log(self, rows: pd.DataFrame, batch_size: int = 50) -> None:
        records = [
            tuple(None if pd.isna(v) else v for v in rec)
            for rec in rows.reindex(columns=_COLUMNS).itertuples(index=False, name=None)
        ]
        insert = sql.SQL("INSERT INTO predictions ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)),
            sql.SQL(", ").join(sql.Placeholder() * len(_COLUMNS)),
        )
        with psycopg.connect(self.db.conninfo, autocommit=True) as conn:
            for i in range(0, len(records), batch_size):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(insert, records[i : i + batch_size])

    def label(self, labels: Iterable[tuple[str, float]], at: datetime | None = None) -> None:
        with psycopg.connect(self.db.conninfo, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO labels (id, label, labelled_at) "
                "VALUES (%s, %s, COALESCE(%s, clock_timestamp()))",
                [(i, v, at) for i, v in labels],
            )

    def count(self) -> int:
        return int(self.db.scalar("SELECT count(*) FROM predictions"))


def bikeshare_frame() -> pd.DataFrame:
    """The 2011 bikeshare hours as prediction rows: ts, features, a prediction, the target."""
    raw = pd.read_csv(BIKESHARE)
    hours = (raw["day"].astype(int) - 1) * 24 + raw["hr"].astype(int)
    df = pd.DataFrame(
        {
            "id": [f"req-{i:05d}" for i in range(len(raw))],
            "ts": pd.Timestamp("2011-01-01", tz=UTC) + pd.to_timedelta(hours, unit="h"),
            **{c: raw[c].astype(float) for c in NUMERIC},
            "season": raw["season"].astype(int),
            "weathersit": raw["weathersit"].astype(str),
            "workingday": raw["workingday"].astype(int),
        }
    )
    # What a simple production model would have said: warm, dry working days are busy.
    df["predicted"] = (40 + 320 * df["temp"] - 90 * df["hum"] + 30 * df["workingday"]).round(1)
    df["bikers"] = raw["bikers"].astype(float)
    df["request"] = '{"client": "web"}'
    return df


def day(d: int) -> datetime:
    """Midnight UTC of 2011-01-<d> (d may exceed 31: it counts days from Jan 1)."""
    return datetime(2011, 1, 1, tzinfo=UTC) + timedelta(days=d - 1)


@pytest.fixture(scope="session")
def pg_server() -> str:
    try:
        with psycopg.connect(ADMIN_DSN, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on {PG_HOST}:{PG_PORT} is needed for these tests: {exc}")
    assert version is not None
    return str(version[0])


@pytest.fixture
def pg_db(pg_server: str) -> Iterator[PgDatabase]:
    name = f"watcher_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield PgDatabase(name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def bikeshare() -> pd.DataFrame:
    return bikeshare_frame()


@pytest.fixture
def prediction_log(pg_db: PgDatabase) -> PredictionLog:
    return PredictionLog(pg_db)
