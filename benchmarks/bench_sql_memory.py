"""Memory of the sql source: a prediction-log table scored window by window stays bounded.

    .venv/bin/python benchmarks/bench_sql_memory.py [--sizes 500000,1000000,5000000]

Needs the PostgreSQL server on 127.0.0.1:5432 (user postgres, trust). Creates a database
``watcher_bench_<random>`` and drops it at the end (also on failure or Ctrl-C).

For each size, a table is generated server-side with generate_series: 10 hourly windows
(so rows per window grow with the table: 50k, 100k, 500k), 6 numeric and 2 categorical
features, a prediction, an id and a timestamp, plus a wide column the source must not read.
Each table is then scored in a fresh Python process, as the daemon does it: `SqlSource.poll`,
then per window `load` (server-side chunks of 50k rows, max_rows_per_window 200k) and the
drift engine's `score` against a 20k-row reference, then `commit`. The child reports its
peak RSS (ru_maxrss) and time per window, once per read method (`--methods`): ``rows``,
the old path (a server-side cursor, rows as tuples into pandas), and ``arrow``, the
columnar one (ADBC into Arrow); both on the same tables in the same run. Two more runs on
the largest table: with the row cap lifted (what the cap bounds), and cut into windows as
small as the smallest table's (memory follows the window, not the table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
WINDOWS = 10
CAP = 200_000
CHUNK = 50_000
NUMERIC = [f"x{i}" for i in range(6)]
CATEGORICAL = ["region", "device"]


def table_ddl(name: str, rows: int) -> str:
    step = 3600 * WINDOWS / rows  # seconds between rows, so the table spans 10 hours
    # Later windows drift a little (x0, x1 shift with the hour) so scoring does real work.
    return f"""
CREATE TABLE {name} (
    id bigint PRIMARY KEY, ts timestamptz NOT NULL,
    x0 double precision, x1 double precision, x2 double precision,
    x3 double precision, x4 double precision, x5 integer,
    region text, device text, predicted double precision, payload text
);
INSERT INTO {name}
SELECT i,
       timestamptz '2024-03-01 00:00+00' + i * interval '{step} seconds',
       random() + (i * {step} / 36000.0), random() * 2, random() * 3,
       random() * 4, random() * 5, (random() * 100)::int,
       (ARRAY['north','south','east','west'])[1 + (i % 4)],
       (ARRAY['ios','android','web'])[1 + (i % 3)],
       random() * 10,
       repeat('x', 200)
FROM generate_series(0, {rows - 1}) AS i;
CREATE INDEX ON {name} (ts);
ANALYZE {name};
"""


def child(dsn: str, table: str, cap: int, window_seconds: float, method: str) -> None:
    """Score every window of `table` and print one JSON line of measurements."""
    import numpy as np
    import pandas as pd
    from prometheus_client import CollectorRegistry

    from watcher.config import ColumnsConfig, ModelConfig, SqlSourceConfig
    from watcher.drift import engine
    from watcher.metrics import Metrics
    from watcher.sources.sql.source import SqlSource
    from watcher.state import StateStore

    columns = ColumnsConfig(numeric=NUMERIC, categorical=CATEGORICAL, prediction="predicted")
    cfg = SqlSourceConfig(
        dsn=dsn,
        table=table,
        window_seconds=window_seconds,
        allowed_lateness_seconds=0,
        chunk_rows=CHUNK,
        max_rows_per_window=cap,
        late_check_windows=0,
    )
    model = ModelConfig(source=cfg, columns=columns)
    rng = np.random.default_rng(7)
    n = 20_000
    reference = pd.DataFrame(
        {
            **{f"x{i}": rng.random(n) * (i + 1) for i in range(5)},
            "x5": rng.integers(0, 100, n),
            "region": rng.choice(["north", "south", "east", "west"], n),
            "device": rng.choice(["ios", "android", "web"], n),
            "predicted": rng.random(n) * 10,
        }
    )
    specs, prediction = engine.specs_from_config(model)
    prepared = engine.prepare_reference(reference, specs, version="bench", prediction=prediction)
    del reference
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state.db")
        metrics = Metrics(CollectorRegistry())
        source = SqlSource("bench", cfg, columns, store, metrics)
        source.columnar = method == "arrow"
        refs = asyncio.run(source.poll())
        load_s, score_s, rows, kept, drifted = [], [], 0, 0, 0
        for ref in refs:
            t0 = time.perf_counter()
            frame = source.load(ref)
            t1 = time.perf_counter()
            result = engine.score(prepared, frame)
            t2 = time.perf_counter()
            with store.transaction() as conn:
                source.commit(conn, ref)
            load_s.append(t1 - t0)
            score_s.append(t2 - t1)
            rows += int(frame.attrs["window_rows"])
            kept += len(frame)
            drifted += int(result.dataset_drift)
            del frame
        asyncio.run(source.close())
        sampled_out = metrics.registry.get_sample_value(
            "watcher_sampled_out_rows_total", {"model": "bench"}
        )
        store.close()
    print(
        json.dumps(
            {
                "table": table,
                "cap": cap,
                "windows": len(refs),
                "rows": rows,
                "kept": kept,
                "sampled_out": int(sampled_out or 0),
                "drifted_windows": drifted,
                "baseline_mb": baseline_kb / 1024,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "load_s": sum(load_s) / len(load_s),
                "score_s": sum(score_s) / len(score_s),
            }
        )
    )


def main() -> int:
    import psycopg

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="500000,1000000,5000000")
    # A lower cap shows the sampling at small sizes: e.g. --sizes 500000 --cap 20000.
    parser.add_argument("--cap", type=int, default=CAP)
    parser.add_argument(
        "--methods",
        default="rows,arrow",
        help="how windows are read: rows (cursor, tuples; the old path), arrow (ADBC)",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        c = args.child
        child(c[0], c[1], int(c[2]), float(c[3]), c[4])
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    db = f"watcher_bench_{secrets.token_hex(4)}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{db}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"'.encode())
    try:
        runs: list[tuple[str, int, float]] = []
        with psycopg.connect(f"{ADMIN.rsplit('=', 1)[0]}={db}", autocommit=True) as conn:
            for n in sizes:
                t0 = time.perf_counter()
                conn.execute(table_ddl(f"t{n}", n).encode())
                size = conn.execute(
                    "SELECT pg_size_pretty(pg_total_relation_size(%s::regclass))", (f"t{n}",)
                ).fetchone()
                print(
                    f"generated t{n}: {n:,} rows, {size[0] if size else '?'} on disk, "
                    f"{time.perf_counter() - t0:.1f}s",
                    flush=True,
                )
                runs.append((f"t{n}", args.cap, 3600))
        largest = f"t{max(sizes)}"
        runs.append((largest, 10**9, 3600))  # the same table without a row cap
        # ... and in windows as small as the smallest table's: memory follows the window.
        runs.append((largest, args.cap, 3600 * min(sizes) / max(sizes)))

        header = (
            f"{'read':>5} {'table rows':>11} {'window s':>8} {'cap':>8} {'windows':>7} "
            f"{'rows/window':>11} "
            f"{'kept/window':>11} {'sampled out':>11} {'baseline MB':>11} {'peak RSS MB':>11} "
            f"{'load s/win':>10} {'score s/win':>11}"
        )
        print(header)
        print("-" * len(header))
        for (table, cap, window), method in (
            (run, m) for run in runs for m in args.methods.split(",")
        ):
            out = subprocess.run(
                [sys.executable, __file__, "--child", dsn, table, str(cap), str(window), method],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{method:>5} {r['rows']:>11,} {window:>8g} "
                f"{('none' if cap >= 10**9 else f'{cap:,}'):>8} "
                f"{r['windows']:>7} {r['rows'] // r['windows']:>11,} "
                f"{r['kept'] // r['windows']:>11,} {r['sampled_out']:>11,} "
                f"{r['baseline_mb']:>11.0f} {r['peak_mb']:>11.0f} "
                f"{r['load_s']:>10.2f} {r['score_s']:>11.2f}",
                flush=True,
            )
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'.encode())
        print(f"dropped database {db}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
