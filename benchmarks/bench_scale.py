"""Scale: a batch's cost against large references, and many models in one process.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--models 10,100,1000]

Part 1, batch cost against the reference's size: 15 features (10 numeric, 5 categorical),
references of 10k, 100k and 1M rows, a 10k-row batch (4 features drifting). Each
reference is prepared once (timed); then, in `--rounds` rounds (default 21), the batch
goes through every reference in turn (the order alternating between rounds): load (read
from Parquet bytes in memory, as the folder source reads a file), quality (`check_batch`
on the prepared profile), drift (`engine.score` on the quality pass's samples, as the
pipeline calls it; evidently's automatic choice: Wasserstein / Jensen-Shannon above 1,000
rows), commit (the ledger's claim and the fsynced result transaction, SQLite), and the
per-test cost of the batch's side for each fast-path test. Each is timed in the process's
CPU time (what the work costs: on this shared 2-core machine a wall time also holds what
the neighbours took meanwhile, 0-30 ms at random); the four stages' wall time and a
machine anchor (sorting 1M floats) are printed too. Per reference the median of the
rounds, then the ratio of the medians 1M / 10k, and the "paired ratio" (1M / 10k within
each round, then the median: the machine's state drifting over the run cancels out).
Target: 1M <= 2x 10k.

Part 1b, the daemon's own path: `--pipeline-batches` 10k-row batches (default 41) through
`Pipeline.process` with a folder source and SQLite state, against a 10k-row reference;
the stage split read back from `watcher_batch_duration_seconds` per batch, process()'s
wall and CPU time. Target: load + quality + drift + commit <= 20 ms.

Part 2, M models in one process (default 10, 100, 1,000), 15 features each and a
`--ref-rows`-row reference each (default 5,000): preparation (every reference prepared
and profiled, lean, as the daemon does on each model's first batch: the daemon itself
starts lazily, see tests/integration/test_daemon_many_models.py; the small-batch noise line is not
included), RSS once all are prepared (frames dropped, as in the daemon), the series a
scrape exports once every model has scored a batch (with watcher's Metrics, as the
pipeline exports them at `--detail`, default "model" as the daemon's default), scrape
size (text, and gzipped on the wire as Prometheus asks for it) and time over HTTP (idle,
and while batches are scored in another thread: "busy ms" in the text format, "busy OM"
with the Accept header Prometheus sends, OpenMetrics), batches scored per minute, and RSS
after `--batches` more batches (flat is the target: <= +5 %).

The machine is shared: read the ratios as much as the absolute figures.
"""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import disable_created_metrics

from watcher import chunked
from watcher.config import ColumnsConfig, QualityConfig, dump_toml, load_config
from watcher.drift import catalog, engine, stattests
from watcher.drift.quality import check_batch, profile_reference
from watcher.metrics import Metrics
from watcher.metrics_http import Health, MetricsServer
from watcher.model_quality import PerformanceTracker
from watcher.pipeline import ModelRuntime, Pipeline
from watcher.reference import load_reference
from watcher.sources.base import BatchRef
from watcher.sources.directory import DirectorySource
from watcher.state import StateStore

NUMERIC = [f"num_{i}" for i in range(10)]
CATEGORICAL = [f"cat_{i}" for i in range(5)]
COLUMNS = ColumnsConfig(numeric=NUMERIC, categorical=CATEGORICAL)
QUALITY = QualityConfig()
SPECS = [engine.ColumnSpec(c, "numeric") for c in NUMERIC] + [
    engine.ColumnSpec(c, "categorical") for c in CATEGORICAL
]
LEVELS = [f"level_{i}" for i in range(8)]


def frame(n: int, rng: np.random.Generator, drift: float = 0.0) -> pd.DataFrame:
    data: dict[str, Any] = {}
    for i, c in enumerate(NUMERIC):
        shift = drift if i < 3 else 0.0
        data[c] = rng.normal(shift, 1 + i / 10, n)
    for i, c in enumerate(CATEGORICAL):
        p = np.full(len(LEVELS), 1 / len(LEVELS))
        if i == 0 and drift:
            p = np.linspace(1, 3, len(LEVELS))
            p /= p.sum()
        data[c] = rng.choice(LEVELS, n, p=p)
    return pd.DataFrame(data)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


CPU: dict[str, list[float]] = {}  # CPU milliseconds of the `_ms` calls, by label


def _ms(fn: Callable[[], object], label: str = "") -> float:
    """Wall milliseconds of `fn()`; its CPU milliseconds (the process's, all threads) go to
    `CPU[label]`. On this shared machine the wall time also counts the time the neighbours
    held the cores; the CPU time is what the work itself costs."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    fn()
    wall = (time.perf_counter() - t0) * 1000
    if label:
        CPU.setdefault(label, []).append((time.process_time() - c0) * 1000)
    return wall


def _anchor() -> None:
    """A fixed piece of work (sorting 1M floats): how fast the machine is at that moment."""
    np.sort(ANCHOR_VALUES)


ANCHOR_VALUES = np.random.default_rng(0).random(1_000_000)


class _Reference:
    """One prepared reference and the batch's stages against it, each timed once per call."""

    def __init__(self, ref: pd.DataFrame, raw: bytes, store: StateStore, fast: list[str]) -> None:
        self.n = len(ref)
        self.raw = raw
        self.store = store
        t0 = time.perf_counter()
        self.prepared = engine.prepare_reference(ref, SPECS, version=f"r{self.n}", lean=True)
        self.profile = profile_reference(ref, COLUMNS, self.prepared.samples)
        self.prepare_ms = (time.perf_counter() - t0) * 1000
        self.fast = fast
        self.k = 0

    def stages(self) -> dict[str, float]:
        """CPU milliseconds per stage and test (the work's own cost: on this shared machine
        a wall time also holds whatever the neighbours took meanwhile, 0-30 ms at random),
        and the wall time of the four stages and of the machine anchor."""
        r: dict[str, float] = {}
        wall: dict[str, float] = {}

        def timed(key: str, fn: Callable[[], object]) -> None:
            c0 = time.process_time()
            wall[key] = _ms(fn)
            r[key] = (time.process_time() - c0) * 1000

        frames: list[pd.DataFrame] = []
        # As the folder source reads a Parquet batch (here from memory, not the disk).
        timed("load", lambda: frames.append(chunked.read_parquet(io.BytesIO(self.raw))))
        batch = frames[0]
        checked: list[Any] = []
        timed("quality", lambda: checked.append(check_batch(batch, self.profile, COLUMNS, QUALITY)))
        clean, quality = checked[0]
        # The pipeline hands the quality pass's samples to the drift engine.
        scored: list[engine.DriftResult] = []
        timed(
            "drift",
            lambda: scored.append(engine.score(self.prepared, clean, samples=quality.samples)),
        )
        timed("commit", partial(self._commit, quality, scored[0]))
        stages = ("load", "quality", "drift", "commit")
        r["total"] = sum(r[k] for k in stages)
        ref_num = self.prepared.samples["num_0"]
        ref_cat = self.prepared.samples["cat_1"]
        cur_num = quality.samples["num_0"]
        cur_cat = quality.samples["cat_1"]
        for test in self.fast:
            kinds = catalog.TESTS[test].kinds
            if "numeric" in kinds:
                timed(f"{test}/num", partial(stattests.run, test, "numeric", ref_num, cur_num))
            if "categorical" in kinds:
                timed(f"{test}/cat", partial(stattests.run, test, "categorical", ref_cat, cur_cat))
        r["total, wall"] = sum(wall[k] for k in stages)
        r["machine anchor, wall"] = _ms(_anchor)
        return r

    def _commit(self, quality: Any, drift: engine.DriftResult) -> None:
        """The ledger's share of the pipeline's record step on SQLite: the claim (not
        fsynced) and the result in one fsynced transaction, as `Pipeline._record`."""
        self.k += 1
        batch_id = f"r{self.n}-b{self.k}"
        self.store.claim_batch("m", batch_id, batch_id)
        result = {"drift": drift.to_json_dict(), "quality": quality.to_dict()}
        with self.store.transaction() as conn:
            self.store.finish_batch(
                conn,
                model="m",
                batch_id=batch_id,
                status="scored",
                rows=quality.rows,
                reference_version=f"r{self.n}",
                dataset_drift=drift.dataset_drift,
                drift_share=drift.drift_share,
                result=result,
            )


def part1(sizes: list[int], repeat: int) -> None:
    rng = np.random.default_rng(1)
    batch = frame(10_000, rng, drift=0.3)
    buf = io.BytesIO()
    batch.to_parquet(buf)
    fast = [t for t, info in catalog.TESTS.items() if info.path == "fast"]
    print(
        f"== Part 1: a 10k-row batch, 15 features, against references of N rows (CPU ms but "
        f"for the wall rows; median of {repeat} rounds, the references in turn in each round)"
    )
    with tempfile.TemporaryDirectory(prefix="bench_scale") as tmp:
        store = StateStore(Path(tmp) / "state.db")
        try:
            refs = [_Reference(frame(n, rng), buf.getvalue(), store, fast) for n in sizes]
            rounds: list[dict[int, dict[str, float]]] = []
            for i in range(repeat + 1):
                # Alternate the order, so a reference is not always measured right after
                # the same other one (caches, the neighbours' load).
                order = refs if i % 2 else refs[::-1]
                measured = {ref.n: ref.stages() for ref in order}
                if i:  # the first round warms up (imports, first-use integrals)
                    rounds.append(measured)
        finally:
            store.close()
    _table(refs, rounds, sizes)


def _table(
    refs: list[_Reference], rounds: list[dict[int, dict[str, float]]], sizes: list[int]
) -> None:
    base, top = sizes[0], sizes[-1]
    keys = list(rounds[0][base])
    print(
        f"{'':18}"
        + "".join(f"{f'{n:,} rows':>14}" for n in sizes)
        + f"{'ratio of medians':>18}{'paired ratio':>14}"
    )
    print(
        f"{'prepare (once)':18}"
        + "".join(f"{ref.prepare_ms:14.1f}" for ref in refs)
        + f"{refs[-1].prepare_ms / refs[0].prepare_ms:18.2f}"
    )
    for k in keys:
        med = [statistics.median(r[n][k] for r in rounds) for n in sizes]
        ratio = med[-1] / med[0] if med[0] else float("nan")
        # The ratio within each round (both measured seconds apart), then its median: the
        # machine's load drifting over the run cancels out.
        paired = statistics.median(r[top][k] / r[base][k] for r in rounds if r[base][k])
        print(f"{k:18}" + "".join(f"{v:14.2f}" for v in med) + f"{ratio:18.2f}{paired:14.2f}")
    for key in ("total", "total, wall"):
        v = sorted(r[base][key] for r in rounds)
        print(
            f"load + quality + drift + commit against the {base:,}-row reference, "
            f"{'wall' if 'wall' in key else 'CPU'}: median {statistics.median(v):.1f} ms, "
            f"fastest {v[0]:.1f}, slowest {v[-1]:.1f} (target <= 20)"
        )


def part_pipeline(batches: int, ref_rows: int) -> float:
    """The daemon's own path for a 10k-row batch: `Pipeline.process` (claim, load from a
    Parquet file in the watched folder, quality, drift, the record step's one fsynced
    SQLite transaction, archive, metrics), with the stage split the pipeline itself
    records in `watcher_batch_duration_seconds` (read back per batch)."""
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory(prefix="bench_scale") as name:
        tmp = Path(name)
        frame(ref_rows, rng).to_parquet(tmp / "reference.parquet")
        raw = {
            "daemon": {"state_dir": str(tmp / "state")},
            "metrics": {"enabled": False},
            "registry": {"path": str(tmp / "registry")},
            "models": {
                "m": {
                    "reference": str(tmp / "reference.parquet"),
                    "source": {"kind": "directory", "path": str(tmp / "in"), "settle_seconds": 0},
                    "columns": {"numeric": NUMERIC, "categorical": CATEGORICAL},
                }
            },
        }
        (tmp / "watcher.toml").write_text(dump_toml(raw), encoding="utf-8")
        (tmp / "in").mkdir()
        settings = load_config(tmp / "watcher.toml")
        store = StateStore(settings.daemon.state_dir / "state.db")
        metrics = Metrics()
        cfg = settings.models["m"]
        rt = ModelRuntime(
            "m",
            cfg,
            DirectorySource("m", cfg.source, store),
            load_reference("m", cfg, settings),
            PerformanceTracker("m", cfg, settings.daemon.state_dir, store, metrics),
        )
        store.set_reference_version("m", rt.reference.version)
        rt.reference.ensure()
        pipeline = Pipeline(settings, store, metrics)
        pool = [frame(10_000, rng, drift=d) for d in (0.0, 0.0, 0.1)]
        CPU.pop("process", None)  # this reference's batches only
        stages = ("load", "quality", "drift", "record")
        times: dict[str, list[float]] = {k: [] for k in (*stages, "process", "anchor")}

        def stage_sums() -> list[float]:
            get = metrics.registry.get_sample_value
            labels = [{"model": "", "stage": st} for st in stages]
            return [get("watcher_batch_duration_seconds_sum", lb) or 0.0 for lb in labels]

        try:
            for i in range(batches + 3):
                path = tmp / "in" / f"b{i:04d}.parquet"
                pool[i % len(pool)].to_parquet(path)
                ref = BatchRef("m", path.name, str(path))
                before = stage_sums()
                label = "process" if i >= 3 else "warm-up"
                took = _ms(lambda ref=ref: pipeline.process(rt, ref), label)  # type: ignore[misc]
                if i < 3:  # warming up
                    continue
                times["process"].append(took)
                for st, b, a in zip(stages, before, stage_sums(), strict=True):
                    times[st].append((a - b) * 1000)
                times["anchor"].append(_ms(_anchor))
            assert store.batch_status("m", path.name) == "scored"
        finally:
            pipeline.close()
            store.close()
    print(
        f"\n== Part 1b: {batches} batches of 10k rows through the daemon's Pipeline.process, "
        f"{ref_rows:,}-row reference, SQLite state (ms)"
    )
    print(f"{'':30}{'median':>9}{'fastest':>9}{'p90':>9}")
    for k, label in [
        ("load", "load (Parquet file)"),
        ("quality", "quality"),
        ("drift", "drift"),
        ("record", "record (one fsynced commit)"),
        ("process", "process() whole"),
        ("anchor", "machine anchor (sort 1M)"),
    ]:
        v = sorted(times[k])
        p90 = v[min(len(v) - 1, int(0.9 * len(v)))]
        print(f"{label:30}{statistics.median(v):9.1f}{v[0]:9.1f}{p90:9.1f}")
    cpu = sorted(CPU["process"])
    print(
        f"{'process() whole, CPU time':30}{statistics.median(cpu):9.1f}{cpu[0]:9.1f}"
        f"{cpu[min(len(cpu) - 1, int(0.9 * len(cpu)))]:9.1f}"
    )
    four = sorted(sum(times[st][i] for st in stages) for i in range(len(times["load"])))
    print(
        f"load + quality + drift + record, wall: median {statistics.median(four):.1f} ms, "
        f"fastest {four[0]:.1f} (target <= 20)"
    )
    return statistics.median(cpu)


# What Prometheus (2.42, Debian's) sends: OpenMetrics first.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def _series_and_bytes(port: int, openmetrics: bool = False) -> tuple[int, int, int, float]:
    """Series, text bytes, bytes on the wire and milliseconds of one scrape made as
    Prometheus makes it (it always asks for gzip; `openmetrics`: its Accept header too)."""
    headers = {"Accept-Encoding": "gzip"}
    if openmetrics:
        headers["Accept"] = PROMETHEUS_ACCEPT
    url = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        wire = resp.read()
        zipped = resp.headers.get("Content-Encoding") == "gzip"
    elapsed = (time.perf_counter() - t0) * 1000
    body = gzip.decompress(wire) if zipped else wire
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return series, len(body), len(wire), elapsed


DETAIL = ["model"]  # [metrics] detail, set from --detail


def export(m: Metrics, name: str, quality: Any, drift: engine.DriftResult) -> None:
    """What `Pipeline._export` sets for a scored batch (kept in step with it by hand)."""
    per_feature = DETAIL[0] == "feature"
    m.batches.labels(name, "scored").inc()
    m.batch_rows.labels(name).set(quality.rows)
    m.last_batch_timestamp.labels(name).set(time.time())
    m.dataset_drift_ratio.labels(name).set(drift.drift_share)
    m.dataset_drifted.labels(name).set(int(drift.dataset_drift))
    m.drifted_features.labels(name).set(drift.n_drifted)
    m.drift_streak.labels(name).set(0)
    for col, c in drift.columns.items() if per_feature else ():
        m.set_feature_drift(name, col, c.stattest, c.score, c.threshold)
        m.feature_drifted.labels(name, col).set(int(c.drifted))
    for col, share in quality.missing_share.items() if per_feature else ():
        m.missing_values_ratio.labels(name, col).set(share)
    m.retrain_decisions.labels(name, "triggered").inc(0)
    # The rest of a scored model's series in the daemon
    # (tests/integration/test_daemon_many_models.py counts them): its source, the noise line,
    # the drift signal. The bench has no prediction column: the prediction drift gauge gets
    # the drift share as a stand-in.
    m.source_up.labels(name).set(1)
    m.drift_batch_too_small.labels(name).set(0)
    m.drift_min_batch_rows.labels(name).set(0)
    m.prediction_drift_score.labels(name).set(drift.drift_share)
    m.trigger_signal_value.labels(name, "drift").set(0)
    m.trigger_signal_threshold.labels(name, "drift").set(2)
    m.trigger_signal_fired.labels(name, "drift").set(0)


def part2(counts: list[int], ref_rows: int, batch_rows: int, batches: int) -> None:
    print(
        f"\n== Part 2: M models x 15 features, {ref_rows:,}-row references, "
        f"{batch_rows:,}-row batches"
    )
    header = (
        f"{'models':>7}{'prepare s':>12}{'RSS MB':>9}{'series':>9}{'series/model':>14}"
        f"{'text KB':>9}{'wire KB':>9}{'idle ms':>9}{'busy ms':>9}{'busy OM':>9}"
        f"{'batches/min':>13}"
        f"{'RSS after':>11}{'growth %':>10}"
    )
    print(header)
    for n_models in counts:
        _models_row(n_models, ref_rows, batch_rows, batches)


def _models_row(n_models: int, ref_rows: int, batch_rows: int, batches: int) -> None:
    rng = np.random.default_rng(n_models)
    before = rss_mb()
    startup = 0.0  # preparing and profiling only: generating the data is not timed
    models = []
    for i in range(n_models):
        ref = frame(ref_rows, rng)
        t0 = time.perf_counter()
        # As the daemon prepares a reference (on the model's first batch): lean, the
        # quality profile read off the prepared samples, and the frame dropped after.
        prepared = engine.prepare_reference(ref, SPECS, version=f"m{i}", lean=True)
        profile = profile_reference(ref, COLUMNS, prepared.samples)
        startup += time.perf_counter() - t0
        models.append((f"model_{i}", prepared, profile, None))
        del ref
    rss_start = rss_mb() - before
    pool = [frame(batch_rows, rng, drift=d) for d in (0.0, 0.1, 0.3)]
    m = Metrics()
    for name, *_ in models:
        m.init_model(name, preset_events=DETAIL[0] == "feature")  # as the daemon does
        m.set_model_version(name, "1")

    def score(k: int) -> None:
        name, prepared, profile, _ = models[k % n_models]
        batch = pool[k % len(pool)]
        t_q = time.perf_counter()
        clean, quality = check_batch(batch, profile, COLUMNS, QUALITY)
        t_d = time.perf_counter()
        drift = engine.score(prepared, clean, samples=quality.samples)
        t_e = time.perf_counter()
        label = name if DETAIL[0] == "feature" else ""
        m.batch_duration.labels(label, "quality").observe(t_d - t_q)
        m.batch_duration.labels(label, "drift").observe(t_e - t_d)
        export(m, name, quality, drift)

    for k in range(n_models):
        score(k)
    server = MetricsServer(m, Health(600), "127.0.0.1", 0)
    server.start()
    try:
        series, size, wire, idle = min(
            (_series_and_bytes(server.port) for _ in range(3)), key=lambda x: x[3]
        )
        stop = threading.Event()
        done = [0]

        def work() -> None:
            k = 0
            while not stop.is_set():
                score(k)
                k += 1
            done[0] = k

        worker = threading.Thread(target=work)
        t_busy = time.perf_counter()
        worker.start()
        busy = max(_series_and_bytes(server.port)[3] for _ in range(5))
        busy_om = max(_series_and_bytes(server.port, openmetrics=True)[3] for _ in range(5))
        time.sleep(max(0.0, 3.0 - (time.perf_counter() - t_busy)))
        stop.set()
        worker.join()
        per_min = done[0] / (time.perf_counter() - t_busy) * 60
        rss_mid = rss_mb() - before
        for k in range(batches):
            score(k)
        rss_end = rss_mb() - before
    finally:
        server.stop()
    growth = (rss_end - rss_mid) / max(rss_mid, 1e-9) * 100
    print(
        f"{n_models:7}{startup:12.2f}{rss_start:9.0f}{series:9}{series / n_models:14.1f}"
        f"{size / 1024:9.0f}{wire / 1024:9.0f}{idle:9.0f}{busy:9.0f}{busy_om:9.0f}"
        f"{per_min:13.0f}"
        f"{rss_end:11.0f}{growth:10.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10k and 100k only, 10/100 models")
    parser.add_argument("--models", default="10,100,1000")
    parser.add_argument("--ref-rows", type=int, default=5_000)
    parser.add_argument("--batch-rows", type=int, default=1_000)
    parser.add_argument("--batches", type=int, default=5_000)
    parser.add_argument("--skip-part1", action="store_true")
    parser.add_argument("--skip-part2", action="store_true")
    parser.add_argument("--rounds", type=int, default=21, help="Part 1's rounds (median)")
    parser.add_argument("--pipeline-batches", type=int, default=41, help="Part 1b's batches")
    parser.add_argument("--detail", choices=["model", "feature"], default="model")
    args = parser.parse_args()
    DETAIL[0] = args.detail
    if args.detail == "model":
        disable_created_metrics()  # as the daemon does at this detail
    print(f"[metrics] detail = {args.detail!r}")
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    counts = [10, 100] if args.quick else [int(x) for x in args.models.split(",")]
    if not args.skip_part1:
        part1(sizes, repeat=5 if args.quick else args.rounds)
    if not args.skip_part1:
        anchor = part_pipeline(args.pipeline_batches, 10_000)
        if not args.quick:
            big = part_pipeline(args.pipeline_batches, 1_000_000)
            print(
                f"\nprocess() CPU time, 1M-row reference / 10k-row reference: "
                f"{big / anchor:.2f}x (target <= 2)"
            )
    if not args.skip_part2:
        part2(counts, args.ref_rows, args.batch_rows, 500 if args.quick else args.batches)


if __name__ == "__main__":
    main()
