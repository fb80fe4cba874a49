"""`watcher run` as a real subprocess: batches in, metrics out over HTTP, clean SIGTERM,
and a restart that scores nothing twice."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest
from harness import DaemonProcess
from prometheus_client.parser import text_string_to_metric_families
from support import drop, frame, wait_for, write_config

from watcher.dev.localservices import free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values


def get(
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0  # not listening yet


def test_run_scrape_sigterm_restart(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, metrics_port=port)
    incoming = tmp_path / "incoming"
    log = tmp_path / "daemon.log"
    proc = DaemonProcess(cfg, log)
    try:
        wait_for(lambda: http_status(port, "/readyz") == 200, 60, what="/readyz")
        assert http_status(port, "/healthz") == 200
        drop(incoming, "b1.parquet", frame(300, seed=10))
        drop(incoming, "b2.csv", frame(300, seed=11, shift=2.0))
        drop(incoming, "b3.csv", frame(300, seed=12).drop(columns="a"))  # rejected
        wait_for(
            lambda: (
                (get(scrape(port), "watcher_batches_total", model="m", outcome="scored") or 0) >= 2
                and (get(scrape(port), "watcher_batches_total", model="m", outcome="rejected") or 0)
                >= 1
            ),
            60,
            what="3 batches processed",
        )
        v = scrape(port)
        assert get(v, "watcher_batches_total", model="m", outcome="scored") == 2
        assert get(v, "watcher_batches_total", model="m", outcome="rejected") == 1
        assert get(v, "watcher_batches_rejected_total", model="m", reason="missing_columns") == 1
        assert get(v, "watcher_dataset_drifted", model="m") == 1  # the last scored (b2) drifted
        assert get(v, "watcher_dataset_drift_ratio", model="m") >= 0.5
        assert get(v, "watcher_feature_drifted", model="m", feature="a") == 1
        assert get(v, "watcher_batch_rows", model="m") == 300
        assert (get(v, "watcher_batch_duration_seconds_count", model="m", stage="drift") or 0) == 2
        assert (get(v, "watcher_last_batch_timestamp_seconds", model="m") or 0) > 0
        assert get(v, "watcher_build_info", version=__import__("watcher").__version__) == 1
        assert any(k[0] == "watcher_model_info" and v[k] == 1 for k in v)
        assert proc.stop() == 0
    finally:
        proc.kill()
    text = log.read_text()
    assert "stopped" in text

    # Restart: the same files (even copied back into incoming/) are not scored again.
    (incoming / "processed" / "b1.parquet").rename(incoming / "b1.parquet")
    drop(incoming, "b4.parquet", frame(300, seed=13))
    proc = DaemonProcess(cfg, log)
    try:
        wait_for(lambda: http_status(port, "/readyz") == 200, 60, what="/readyz after restart")
        wait_for(
            lambda: (
                (get(scrape(port), "watcher_batches_total", model="m", outcome="scored") or 0) >= 1
            ),
            60,
            what="b4 scored",
        )
        wait_for(
            lambda: (incoming / "processed" / "b1.parquet").exists(),
            30,
            what="the already-scored b1 moved on without rescoring",
        )
        v = scrape(port)
        assert get(v, "watcher_batches_total", model="m", outcome="scored") == 1  # only b4
        assert proc.stop() == 0
    finally:
        proc.kill()
    from watcher.state import StateStore

    store = StateStore(tmp_path / "state" / "state.db")
    try:
        assert sorted(store.processed_ids("m")) == ["b1.parquet", "b2.csv", "b3.csv", "b4.parquet"]
    finally:
        store.close()


def _status_of(tmp: Path, batch: str) -> str | None:
    from watcher.state import StateStore

    store = StateStore(tmp / "state" / "state.db")
    try:
        return store.batch_status("m", batch)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "status"), [(signal.SIGTERM, 0, "scored"), (signal.SIGINT, 1, "claimed")]
)
def test_only_a_second_sigint_forces_an_exit_a_second_sigterm_waits(
    tmp_path: Path, sig: signal.Signals, code: int, status: str
) -> None:
    """Two SIGTERMs while a big batch is scored: the batch still finishes and the daemon
    stops cleanly (exit 0). Two SIGINTs: the second exits at once (exit 1), the batch
    left claimed to be scored at the next start."""
    cfg = write_config(tmp_path, metrics_port=free_port(), poll=0.2)
    log = tmp_path / "daemon.log"
    proc = DaemonProcess(cfg, log)
    try:
        wait_for(lambda: "watching 1 model" in log.read_text(), 60, what="daemon ready")
        drop(tmp_path / "incoming", "big.parquet", frame(600_000, seed=7, shift=2.0))
        wait_for(lambda: _status_of(tmp_path, "big.parquet") == "claimed", 60, 0.05, "claimed")
        proc.signal(sig)
        wait_for(lambda: "stop requested" in log.read_text(), 10, 0.02, "the first signal")
        assert proc.alive(), "the daemon exited before the batch in flight was done"
        proc.signal(sig)
        assert proc.proc.wait(120) == code
    finally:
        proc.kill()
    text = log.read_text()
    if sig == signal.SIGTERM:
        assert text.count("stop requested") == 2  # the second was a request, not a kill
        assert "stopped" in text
    else:
        assert "second interrupt: exiting now" in text
        assert "stopped" not in text
    assert _status_of(tmp_path, "big.parquet") == status
