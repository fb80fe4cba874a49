"""The state tests run on both backends: SQLite (a file in tmp_path) and the real
PostgreSQL on 127.0.0.1:5432. One PostgreSQL database per test session (dropped after it),
one schema per test inside it, chosen through the DSN's search_path, so each test starts
from an empty state exactly as a new SQLite file does."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from fixtures_postgres import ADMIN_DSN, PG_HOST, PG_PORT, PG_USER
from psycopg import sql

from watcher.state import StateStore
from watcher.state.config import StateTarget


@dataclass(frozen=True)
class StateBackend:
    """Where one test's state lives, and how to open stores on it."""

    name: str  # "sqlite" or "postgres"
    target: StateTarget
    dsn: str | None = None  # the PostgreSQL URL (with its search_path), None on SQLite
    schema: str | None = None
    database: str | None = None

    def open(self, **kwargs: object) -> StateStore:
        return StateStore(self.target, **kwargs)  # type: ignore[arg-type]

    def conninfo(self) -> str:
        assert self.database is not None
        assert self.schema is not None
        return (
            f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={self.database} "
            f"options='-csearch_path={self.schema}'"
        )


@pytest.fixture(scope="session")
def state_pg_database(pg_server: str) -> Iterator[str]:
    name = f"issue12_state_{secrets.token_hex(5)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def pg_backend(database: str) -> StateBackend:
    schema = f"t_{secrets.token_hex(6)}"
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={database}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    dsn = (
        f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
        f"?options={quote(f'-csearch_path={schema}')}"
    )
    return StateBackend("postgres", StateTarget.postgres(dsn), dsn, schema, database)


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def state_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StateBackend:
    if request.param == "sqlite":
        return StateBackend("sqlite", StateTarget.sqlite(tmp_path / "state" / "state.db"))
    database: str = request.getfixturevalue("state_pg_database")
    return pg_backend(database)


@pytest.fixture
def open_store(state_backend: StateBackend) -> Iterator[Callable[..., StateStore]]:
    """Opens stores on the test's backend; every one is closed at the end."""
    opened: list[StateStore] = []

    def _open(**kwargs: object) -> StateStore:
        store = state_backend.open(**kwargs)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., StateStore]) -> StateStore:
    return open_store()
