"""Issue 16's exporter conventions, on real servers: /metrics is prometheus_client's own
handler (OpenMetrics on request, gzip on request), a stattest flip of a real daemon leaves
no stale series, and stamina's retries are counted on the daemon's registry."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import stamina
from harness import run_daemon
from prometheus_client import CollectorRegistry, generate_latest
from support import drop, frame, write_config

from watcher.config import load_config
from watcher.metrics import Metrics
from watcher.metrics_http import Health, MetricsServer
from watcher.state import StateStore


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return {k.lower(): v for k, v in resp.headers.items()}, resp.read()


@pytest.fixture
def server() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics()
    metrics.init_model("m")
    metrics.dataset_drift_ratio.labels("m").set(0.75)
    health = Health(stale_after_seconds=60)
    srv = MetricsServer(metrics, health, "127.0.0.1", 0)
    srv.start()
    yield metrics, srv
    srv.stop()


def test_metrics_negotiates_openmetrics_and_gzip(
    server: tuple[Metrics, MetricsServer], promtool_bin: str
) -> None:
    _, srv = server
    headers, body = _get(
        srv.port,
        "/metrics",
        {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"},
    )
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"].startswith("application/openmetrics-text")
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n")  # OpenMetrics' terminator
    assert 'watcher_dataset_drift_ratio{model="m"} 0.75' in text

    # A plain scrape still gets the text format, uncompressed, and promtool has nothing to say.
    headers, body = _get(srv.port, "/metrics", {})
    assert "content-encoding" not in headers
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# EOF" not in body.decode()
    proc = subprocess.run(
        [promtool_bin, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout + proc.stderr == b""

    # The probes beside it answer as before.
    assert _get(srv.port, "/healthz", {"Accept-Encoding": "gzip"})[1] == b"ok\n"


def test_no_share_gauges_remain(server: tuple[Metrics, MetricsServer]) -> None:
    metrics, _ = server
    names = {family.name for family in metrics.registry.collect()}
    assert "watcher_dataset_drift_ratio" in names
    assert "watcher_missing_values_ratio" in names
    assert not [n for n in names if n.endswith("_share")]


def test_a_stattest_flip_of_a_real_daemon_leaves_no_stale_series(tmp_path: Path) -> None:
    """Column "a" holds 3 distinct values in the reference. A batch with the same 3 values
    is scored with chi-square (evidently's choice for <= 5 distinct values), a batch of
    continuous values in the same range with KS: the chi-square series must go."""
    rng = np.random.default_rng(0)
    reference = frame(600, seed=1)
    reference["a"] = rng.integers(0, 3, len(reference)).astype(float)
    reference.to_parquet(tmp_path / "reference.parquet")
    settings = load_config(write_config(tmp_path))
    incoming = tmp_path / "incoming"
    registry = CollectorRegistry()
    get = registry.get_sample_value

    def series_of_a() -> dict[str, float]:
        out = {}
        for family in registry.collect():
            if family.name == "watcher_feature_drift_score":
                for s in family.samples:
                    if s.labels["feature"] == "a":
                        out[s.labels["stattest"]] = s.value
        return out

    async def run() -> dict[str, dict[str, float]]:
        store = StateStore(settings.daemon.state_dir / "state.db")
        seen: dict[str, dict[str, float]] = {}
        try:
            async with run_daemon(settings, registry) as daemon:
                for n, name in enumerate(("few.parquet", "continuous.parquet"), start=1):
                    batch = frame(300, seed=10 + n)
                    rng2 = np.random.default_rng(n)
                    batch["a"] = (
                        rng2.integers(0, 3, 300).astype(float)
                        if n == 1
                        else rng2.uniform(0, 2, 300)
                    )
                    drop(incoming, name, batch)
                    await daemon.until(lambda n=n: len(store.processed_ids("m")) == n, 30, name)
                    seen[name] = series_of_a()
        finally:
            store.close()
        return seen

    seen = asyncio.run(run())
    assert set(seen["few.parquet"]) == {"chisquare"}
    assert set(seen["continuous.parquet"]) == {"ks"}  # the chi-square series is gone
    for stattest in ("chisquare", "ks"):
        threshold = get(
            "watcher_feature_drift_threshold", {"model": "m", "feature": "a", "stattest": stattest}
        )
        assert (threshold is None) == (stattest == "chisquare")
    # Other features keep exactly one series each.
    text = generate_latest(registry).decode()
    for feature in ("b", "c"):
        lines = [
            ln
            for ln in text.splitlines()
            if ln.startswith("watcher_feature_drift_score{") and f'feature="{feature}"' in ln
        ]
        assert len(lines) == 1, lines


def test_stamina_retries_are_counted_on_the_daemons_registry(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path))
    registry = CollectorRegistry()
    calls = 0

    @stamina.retry(on=ConnectionError, attempts=3, wait_initial=0, wait_max=0, wait_jitter=0)
    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("not yet")
        return "ok"

    async def run() -> None:
        async with run_daemon(settings, registry):
            assert flaky() == "ok"

    asyncio.run(run())
    samples = [
        s
        for family in registry.collect()
        if family.name == "stamina_retries"
        for s in family.samples
        if s.name == "stamina_retries_total"
    ]
    assert sorted(s.labels["retry_num"] for s in samples) == ["1", "2"]
    assert {s.labels["error_type"] for s in samples} == {"ConnectionError"}
    assert all(s.labels["callable"].endswith("flaky") for s in samples)
    assert sum(s.value for s in samples) == 2
