"""The state store on SQLite and PostgreSQL, measured in one run on this machine.

    .venv/bin/python benchmarks/bench_state.py [--batches N]

Per backend (SQLite: a file under a temporary directory; PostgreSQL: a database on
127.0.0.1:5432 created for the run and dropped after it):

- batch transactions per second: what the pipeline commits per batch — claim, then one
  transaction holding the result (a 20-column result JSON), the decision and an outbox
  action — done `--batches` times in a row;
- opening a store at the newest schema revision (the fast path of every start), and
  creating the schema on an empty database (Alembic, every revision);
- SQLite only: upgrading the watcher 0.1 state file in tests/state_fixtures.

The machine is shared and noisy: read the PostgreSQL/SQLite ratio of the same run.
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from watcher.state import Action, StateStore
from watcher.state.config import StateTarget

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "state_fixtures" / "watcher_0_1_state.sql"
ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
RESULT = {
    "drift": {"columns": {f"col_{i}": {"drifted": i % 3 == 0, "score": i / 7} for i in range(20)}}
}


def batches_per_second(store: StateStore, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        bid = f"b{i:06d}"
        store.claim_batch("m", bid, f"/in/{bid}.parquet")
        with store.transaction() as conn:
            store.finish_batch(
                conn,
                model="m",
                batch_id=bid,
                status="scored",
                rows=10_000,
                reference_version="0001",
                dataset_drift=False,
                drift_share=0.1,
                result=RESULT,
            )
            store.record_decision(conn, model="m", batch_id=bid, outcome="no_action", reason="")
            store.enqueue(conn, Action("alert", f"a-{bid}", "m", {"subject": bid}))
    return n / (time.perf_counter() - t0)


def open_times(target: StateTarget, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        StateStore(target).close()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=500)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_target = StateTarget.sqlite(Path(tmp) / "state.db")
        t0 = time.perf_counter()
        store = StateStore(sqlite_target)
        create = time.perf_counter() - t0
        rows.append(
            ("sqlite", batches_per_second(store, args.batches), create, open_times(sqlite_target))
        )
        store.close()
        old = Path(tmp) / "old.db"
        with sqlite3.connect(old) as db:
            db.executescript(FIXTURE.read_text(encoding="utf-8"))
        db.close()
        t0 = time.perf_counter()
        StateStore(old).close()
        upgrade = time.perf_counter() - t0
    name = f"bench_state_{secrets.token_hex(5)}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        pg_target = StateTarget.postgres(f"postgresql://postgres@127.0.0.1:5432/{name}")
        t0 = time.perf_counter()
        store = StateStore(pg_target)
        create = time.perf_counter() - t0
        rows.append(
            ("postgres", batches_per_second(store, args.batches), create, open_times(pg_target))
        )
        store.close()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    print(f"{args.batches} batch transactions per backend")
    print(f"{'backend':<10} {'batches/s':>10} {'create schema':>14} {'open at head':>13}")
    for backend, rate, create, at_head in rows:
        print(f"{backend:<10} {rate:>10.0f} {create * 1000:>12.0f}ms {at_head * 1000:>11.1f}ms")
    print(f"postgres/sqlite batches/s ratio: {rows[1][1] / rows[0][1]:.2f}")
    print(f"upgrade of the watcher 0.1 state file: {upgrade * 1000:.0f}ms")


if __name__ == "__main__":
    main()
