"""The exporter: promtool has nothing to say about a real daemon's metrics, /healthz and
/readyz tell the truth, and one model has exactly one version series."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness import run_daemon
from prometheus_client import CollectorRegistry, generate_latest
from support import drop, frame, write_config

from watcher.config import load_config
from watcher.metrics import Metrics
from watcher.metrics_http import Health, MetricsServer
from watcher.state import StateStore


def test_promtool_check_metrics_is_silent_on_a_real_daemon(
    tmp_path: Path, promtool_bin: str
) -> None:
    settings = load_config(write_config(tmp_path))
    incoming = tmp_path / "incoming"
    drop(incoming, "ok.parquet", frame(300, seed=3))
    drop(incoming, "drifted.parquet", frame(300, seed=4, shift=2.0))
    drop(incoming, "bad.csv", frame(300, seed=5).drop(columns=["b"]))
    registry = CollectorRegistry()

    async def run() -> None:
        store = StateStore(settings.daemon.state_dir / "state.db")
        try:
            async with run_daemon(settings, registry) as daemon:
                await daemon.until(lambda: len(store.processed_ids("m")) == 3, 30, "3 batches")
        finally:
            store.close()

    asyncio.run(run())
    text = generate_latest(registry)
    assert b"watcher_feature_drift_score{" in text  # the scored batches are in it
    assert b"watcher_trigger_signal_value{" in text  # and the policy's signals
    assert b"watcher_trigger_signal_threshold{" in text
    assert b'watcher_batches_rejected_total{model="m",reason="missing_columns"} 1.0' in text
    proc = subprocess.run(
        [promtool_bin, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == b""


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_health_endpoints() -> None:
    metrics = Metrics()
    health = Health(stale_after_seconds=0.5)
    server = MetricsServer(metrics, health, "127.0.0.1", 0)
    server.start()
    try:
        assert status(server.port, "/healthz") == 200
        assert status(server.port, "/readyz") == 503  # references not loaded yet
        health.ready = True
        assert status(server.port, "/readyz") == 200
        time.sleep(0.6)  # the main loop stopped beating
        assert status(server.port, "/healthz") == 503
        assert status(server.port, "/readyz") == 503
        health.beat()
        assert status(server.port, "/healthz") == 200
        assert status(server.port, "/metrics") == 200
        assert status(server.port, "/nope") == 404
    finally:
        server.stop()


def test_one_version_series_per_model() -> None:
    m = Metrics()
    m.set_model_version("a", "v1")
    m.set_model_version("b", "v7")
    m.set_model_version("a", "v2")
    get = m.registry.get_sample_value
    assert get("watcher_model_info", {"model": "a", "version": "v2"}) == 1
    assert get("watcher_model_info", {"model": "a", "version": "v1"}) is None
    assert get("watcher_model_info", {"model": "b", "version": "v7"}) == 1
