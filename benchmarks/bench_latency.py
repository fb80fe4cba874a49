"""Batch-to-metric latency of the folder source, and /metrics while a big batch scores.

    .venv/bin/python benchmarks/bench_latency.py [--batches 30] [--rows 10000] [--big 1000000]

A real `watcher run` (subprocess, its own metrics port, a temporary folder) per mode:

- ``auto``: inotify; a batch renamed into the folder is taken at once;
- ``poll``: no notifications, ``poll_interval_seconds = 0.5``, ``settle_seconds = 0.5``
  (the settle rule needs two polls of an unchanged file, then the age).

For each mode, `--batches` Parquet batches of `--rows` rows are written to a temporary name
and renamed into the folder one at a time; the time from the rename to the moment the
daemon sets the batch's metrics (`watcher_last_batch_timestamp_seconds`, read back from
`/metrics`) is the batch-to-metric latency. The per-stage split comes from
`watcher_batch_duration_seconds` (sum per stage, averaged per batch); "waiting" is the
rest: notification or poll, settle, the loop.
Target (issue 17): p95 <= 100 ms for a 10k-row batch with ``auto``.

Then, in ``auto`` mode, a drifted batch of `--big` rows (default 1M): `/metrics` is scraped
back to back while it is scored, and the p50/p99 of the scrape times are printed (target
p99 <= 50 ms), with the number of `watcher_batch_duration_seconds` series per model and the
daemon's peak RSS (VmHWM). The anchor, in the same run: 5 s of the same back-to-back scrapes
of the idle daemon just before (the machine's own load shows in both). `--big 0` skips this
part.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watcher.dev.localservices import free_port

STAGES = ("load", "quality", "drift", "record")


def frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(shift, 1.0, n),
            "b": rng.normal(10 + 3 * shift, 3.0, n),
            "t": rng.uniform(0, 1, n) + shift * 0.3,
            "w": rng.gamma(2.0, 1.0 + shift, n),
            "c": rng.choice(["x", "y", "z"], n),
            "p": rng.normal(5 + shift, 1.0, n),
        }
    )


def write_config(tmp: Path, port: int, watch: str) -> Path:
    incoming = tmp / "incoming"
    incoming.mkdir()
    reference = tmp / "reference.parquet"
    frame(10_000, seed=1).to_parquet(reference)
    cfg = tmp / "watcher.toml"
    cfg.write_text(
        f"""
[daemon]
state_dir = "{tmp / "state"}"
poll_interval_seconds = 0.5

[metrics]
port = {port}

[registry]
path = "{tmp / "registry"}"

[models.m]
reference = "{reference}"
source = {{ kind = "directory", path = "{incoming}", settle_seconds = 0.5, watch = "{watch}" }}
columns = {{ numeric = ["a", "b", "t", "w"], categorical = ["c"], prediction = "p" }}
policy = {{ consecutive = 1000 }}
"""
    )
    return cfg


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def scored(text: str) -> float:
    key = 'watcher_batches_total{model="m",outcome="scored"}'
    for line in text.splitlines():
        if line.startswith(key):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def last_batch_at(text: str) -> float:
    v = values(text)
    return v[("watcher_last_batch_timestamp_seconds", (("model", "m"),))]


def stage_sums(text: str) -> dict[str, float]:
    v = values(text)
    return {
        s: v.get(("watcher_batch_duration_seconds_sum", (("model", "m"), ("stage", s))), 0.0)
        for s in STAGES
    }


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start(cfg: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(cfg)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while not ready(port):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the daemon did not start; see {log}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def latency(watch: str, batches: int, rows: int, big: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as d:
        tmp = Path(d)
        port = free_port()
        cfg = write_config(tmp, port, watch)
        proc = start(cfg, tmp / "daemon.log", port)
        try:
            incoming = tmp / "incoming"
            batch = frame(rows, seed=2)
            lat: list[float] = []
            before = scrape(port)
            sums0 = stage_sums(before)
            count = scored(before)
            for i in range(batches):
                tmpfile = incoming / f".b{i}.parquet.tmp"
                batch.to_parquet(tmpfile)
                time.sleep(0.05)  # the write's own events are over before the clock starts
                t0 = time.time()
                tmpfile.rename(incoming / f"b{i:03d}.parquet")
                # The daemon stamps the metric when it sets it; scraping slowly keeps the
                # benchmark's own load off the daemon's CPU.
                while True:
                    time.sleep(0.05)
                    text = scrape(port)
                    if scored(text) > count:
                        lat.append(last_batch_at(text) - t0)
                        count = scored(text)
                        break
            sums = stage_sums(scrape(port))
            per_stage = {s: (sums[s] - sums0[s]) / batches * 1000 for s in STAGES}
            processing = sum(per_stage.values())
            ms = [x * 1000 for x in lat]
            print(
                f"{watch:>4}: {batches} x {rows} rows, batch-to-metric p50 "
                f"{statistics.median(ms):.0f} ms, p95 {pct(ms, 95):.0f} ms, max {max(ms):.0f} ms"
            )
            split = ", ".join(f"{s} {v:.1f}" for s, v in per_stage.items())
            print(
                f"      per batch: {split} ms (processing {processing:.0f} ms); waiting "
                f"{statistics.median(ms) - processing:.0f} ms (p50 minus processing)"
            )
            if big:
                metrics_during_big(tmp, port, big, proc.pid)
        finally:
            stop(proc)


def metrics_during_big(tmp: Path, port: int, rows: int, pid: int) -> None:
    incoming = tmp / "incoming"
    before = scored(scrape(port))
    staging = incoming / ".big.parquet.tmp"
    frame(rows, seed=3, shift=2.0).to_parquet(staging)
    # The anchor: the same back-to-back scrapes of the idle daemon, in the same run (the
    # machine's load shows in both; the ratio is what the batch adds).
    idle: list[float] = []
    t_idle = time.perf_counter()
    while time.perf_counter() - t_idle < 5:
        s = time.perf_counter()
        scrape(port)
        idle.append((time.perf_counter() - s) * 1000)
    times: list[float] = []
    staging.rename(incoming / "big.parquet")
    t0 = time.perf_counter()
    while True:
        s = time.perf_counter()
        text = scrape(port)
        times.append((time.perf_counter() - s) * 1000)
        if scored(text) > before:
            break
    took = time.perf_counter() - t0
    series = sum(
        1
        for line in text.splitlines()
        if line.startswith("watcher_batch_duration_seconds") and 'model="m"' in line
    )
    hwm = next(
        (
            line.split()[1]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmHWM")
        ),
        "?",
    )
    print(
        f"/metrics during a {rows}-row drifted batch ({took:.1f} s, {len(times)} scrapes): "
        f"p50 {statistics.median(times):.1f} ms, p99 {pct(times, 99):.1f} ms, "
        f"max {max(times):.1f} ms"
    )
    print(
        f"      idle daemon, same run ({len(idle)} scrapes): p50 {statistics.median(idle):.1f} "
        f"ms, p99 {pct(idle, 99):.1f} ms; during / idle: p99 x{pct(times, 99) / pct(idle, 99):.1f}"
    )
    print(
        f"      watcher_batch_duration_seconds series for one model: {series}; "
        f"daemon peak RSS (VmHWM) {int(hwm) // 1024 if hwm != '?' else hwm} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--modes", default="auto,poll")
    args = ap.parse_args()
    for i, watch in enumerate(args.modes.split(",")):
        latency(watch, args.batches, args.rows, args.big if i == 0 else 0)


if __name__ == "__main__":
    main()
