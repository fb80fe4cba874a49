"""Replicas on one PostgreSQL state: throughput with 1, 2 and 3 replicas and with one
replica at 1, 2 and 4 workers, and the fail-over time after kill -9.

Throughput: 60 directory models, WAVES batches of 10k rows each dropped at once into
already-running replicas (every model owned); batches per minute from the drop to the
last batch in the ledger. Every setup gets a fresh PostgreSQL schema.

Fail-over: two replicas (lease_seconds LEASE, heartbeat LEASE/4, poll POLL); KILLS times:
drop a batch for a model the victim owns, kill -9 the victim at once, time until another
replica has scored that batch; the victim is restarted before the next kill. The bound to
compare with: lease_seconds + heartbeat + one poll interval (the lease runs out, a
survivor's next beat takes it, its next round polls the folder) plus one batch's scoring.

All processes share this machine's cores (2 here, with other work): the scaling shape is
what to read, and it is bounded by the cores, not by the replicas.

    .venv/bin/python benchmarks/bench_replicas.py [--quick]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import psycopg  # noqa: E402
from fixtures_postgres import ADMIN_DSN, PG_HOST, PG_PORT, PG_USER  # noqa: E402
from psycopg import sql  # noqa: E402
from replicas_support import Fleet, fleet_config, model_name, wait_finished  # noqa: E402
from support import drop, frame  # noqa: E402

from watcher.state import StateStore  # noqa: E402
from watcher.state.config import StateTarget  # noqa: E402

MODELS = 60
ROWS = 10_000
LEASE = 4.0
POLL = 0.5


class Database:
    """A throwaway PostgreSQL database; one schema per setup."""

    def __init__(self) -> None:
        self.name = f"i12_bench_{secrets.token_hex(4)}"
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    def schema(self) -> str:
        schema = f"s_{secrets.token_hex(4)}"
        admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={self.name}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        return (
            f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"
            f"?options=-csearch_path%3D{schema}"
        )

    def drop(self) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


def wait_owned(store: StateStore, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([m for m in store.live_leases() if not m.startswith("~")]) >= n:
            return
        time.sleep(0.2)
    raise SystemExit("the replicas did not take every model in time")


def throughput(
    db: Database, work: Path, batch: Path, replicas: int, workers: int, waves: int
) -> float:
    tmp = Path(tempfile.mkdtemp(dir=work))
    dsn = db.schema()
    cfg = fleet_config(
        tmp, dsn, MODELS, lease_seconds=30, heartbeat_seconds=5, workers=workers, poll=POLL
    )
    fleet = Fleet(cfg, tmp)
    store = StateStore(StateTarget.postgres(dsn))
    try:
        for i in range(replicas):
            fleet.start(i)
        wait_owned(store, MODELS)
        time.sleep(2)  # every replica's first round done (references prepared lazily)
        started = time.monotonic()
        for wave in range(waves):
            for i in range(MODELS):
                shutil.copy(batch, tmp / "in" / model_name(i) / f".b{wave}.tmp")
                (tmp / "in" / model_name(i) / f".b{wave}.tmp").rename(
                    tmp / "in" / model_name(i) / f"b{wave}.parquet"
                )
        done = wait_finished(store, MODELS * waves, timeout=1800)
        elapsed = time.monotonic() - started
        if done != MODELS * waves:
            raise SystemExit(f"only {done} of {MODELS * waves} batches finished")
        fleet.stop_all()
        return done / elapsed * 60
    finally:
        fleet.kill_all()
        store.close()


def failover(db: Database, work: Path, kills: int) -> list[float]:
    tmp = Path(tempfile.mkdtemp(dir=work))
    dsn = db.schema()
    cfg = fleet_config(
        tmp, dsn, MODELS, lease_seconds=LEASE, heartbeat_seconds=LEASE / 4, workers=2, poll=POLL
    )
    fleet = Fleet(cfg, tmp)
    store = StateStore(StateTarget.postgres(dsn))
    times: list[float] = []
    small = frame(2000, seed=3)
    try:
        procs = [fleet.start(0), fleet.start(1)]
        wait_owned(store, MODELS)
        for k in range(kills):
            victim = k % 2
            pid = procs[victim].proc.pid
            time.sleep(LEASE)  # the fleet settles (the restarted replica takes its share)
            owned = sorted(m for m, who in store.live_leases().items() if f":{pid}:" in who)
            model = next(m for m in owned if not m.startswith("~"))
            name = f"f{k}.parquet"
            drop(tmp / "in" / model, name, small)
            t0 = time.monotonic()
            fleet.kill(victim)
            while store.batch_status(model, name) not in ("scored", "rejected", "failed"):
                time.sleep(0.05)
            times.append(time.monotonic() - t0)
            print(f"  kill {k + 1}: {model} scored again after {times[-1]:.1f}s", flush=True)
            procs[victim] = fleet.start(victim)
        fleet.stop_all()
        return times
    finally:
        fleet.kill_all()
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2 waves, 10 kills")
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    waves = 2 if args.quick else args.waves
    work = Path(tempfile.mkdtemp(prefix="bench_replicas_"))
    batch = work / "batch.parquet"
    frame(ROWS, seed=7, shift=0.5).to_parquet(batch)
    db = Database()
    try:
        print(f"{MODELS} models, {waves} x {MODELS} batches of {ROWS} rows, PostgreSQL state")
        rows = []
        for replicas, workers in ((1, 1), (1, 2), (1, 4), (2, 1), (3, 1)):
            rate = throughput(db, work, batch, replicas, workers, waves)
            rows.append((replicas, workers, rate))
            print(f"  {replicas} replica(s) x {workers} worker(s): {rate:.0f} batches/min")
        anchor = rows[0][2]
        print("\n| replicas | workers each | batches/min | vs 1 x 1 |\n|---|---|---|---|")
        for replicas, workers, rate in rows:
            print(f"| {replicas} | {workers} | {rate:.0f} | {rate / anchor:.2f}x |")
        print(
            f"\nfail-over: 2 replicas, lease_seconds {LEASE:g}, heartbeat {LEASE / 4:g}, "
            f"poll {POLL:g}, {args.kills} kills"
        )
        times = failover(db, work, args.kills)
        bound = LEASE + LEASE / 4 + POLL
        print(
            f"\n| kills | p50 | max | lease + heartbeat + poll |\n|---|---|---|---|\n"
            f"| {len(times)} | {statistics.median(times):.1f}s | {max(times):.1f}s | "
            f"{bound:.1f}s |"
        )
    finally:
        db.drop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
