"""Concept drift against the real daemon and the session's real Airflow 3.3.2.

The inputs keep their distribution (no data drift); the target moves, so the production
model's loss on the labelled periods rises. Exactly one `performance_degraded` run must
reach Airflow once the labels show it, none while the loss holds steady, and a restarted
daemon must not start another.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from fixtures_airflow import AirflowServer
from harness import DaemonProcess
from performance_support import config, labelled
from support import drop, wait_for
from test_daemon_airflow import (
    DAG,
    RUN_TIMEOUT,
    handled_run,
    new_tag,
    ready,
    runs_tagged,
    store_at,
)

from watcher.config import dump_toml
from watcher.dev.localservices import free_port
from watcher.policy import run_id_for

pytestmark = pytest.mark.airflow


def write_config(tmp: Path, server: AirflowServer, port: int) -> Path:
    path = config(tmp, triggers=["drift", "performance"], cooldown_seconds=6 * 3600.0)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw["daemon"]["poll_interval_seconds"] = 0.1
    raw["metrics"] = {"port": port}
    raw["airflow"] = server.airflow_config(poll_interval_seconds=0.3, request_timeout_seconds=30.0)
    raw["models"]["m"]["retrain"] = {"dag_id": DAG}
    raw["models"] = raw.pop("models")
    path.write_text(dump_toml(raw), encoding="utf-8")
    return path


def decision_on(state: Path, point: str) -> str | None:
    with store_at(state) as store:
        found = store.decisions("m", 1, batch_id=point)
    return found[0].outcome if found else None


def test_concept_drift_makes_exactly_one_performance_run(
    airflow_server: AirflowServer, tmp_path: Path
) -> None:
    tag, port = new_tag(), free_port()
    cfg = write_config(tmp_path, airflow_server, port)
    state = tmp_path / "state"

    def period(i: int, shift: float) -> str:
        """Serve period i, wait for it to be scored; deliver its labels, wait for the
        decision on them. Returns that decision."""
        data = labelled(200, seed=100 + i, concept_shift=shift, start_id=i * 10_000)
        batch = f"{tag}-b{i}.parquet"
        drop(tmp_path / "incoming", batch, data.drop(columns=["y"]))
        wait_for(lambda: decision_on(state, batch), 60, what=f"{batch} scored")
        labels = f"{tag}-labels-{i}.csv"
        drop(tmp_path / "labels", labels, data[["id", "y"]])
        return wait_for(
            lambda: decision_on(state, f"labels:{labels}"), 60, what=f"decision on {labels}"
        )

    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        wait_for(lambda: ready(port), 60, what="/readyz")
        # The loss holds steady: nothing.
        assert [period(i, 0.0) for i in range(4)] == ["no_trigger"] * 4
        assert runs_tagged(airflow_server, tag) == []
        # Same inputs, target moved: the labels show it and one run starts.
        assert period(4, 3.0) == "triggered"
        run_id = run_id_for("m", f"labels:{tag}-labels-4.csv")
        wait_for(lambda: handled_run(state, run_id), RUN_TIMEOUT, 0.3, f"run {run_id} tracked")
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()[-3000:]

    [run] = runs_tagged(airflow_server, tag)
    assert run["dag_run_id"] == run_id
    assert run["state"] == "success"
    assert run["conf"]["reason_kind"] == "performance_degraded"
    assert run["conf"]["reason"].startswith("performance: loss ")
    assert run["note"] == f"watcher: {run['conf']['reason']}"
    with store_at(state) as store:
        assert not any(b.dataset_drift for b in store.recent_batches("m", 100))  # no data drift

    # A restarted daemon: the same labels are not read again; new degraded labels are
    # the cooldown's to hold (6 h by default), and no batch decision re-fires either.
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        wait_for(lambda: ready(port), 60, what="/readyz after the restart")
        assert period(5, 3.0) == "suppressed_cooldown"
        assert decision_on(state, f"{tag}-b5.parquet") == "no_trigger"
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()[-3000:]
    assert [r["dag_run_id"] for r in runs_tagged(airflow_server, tag)] == [run_id]
    with store_at(state) as store:
        triggers = [i for i in store.outbox_items("m") if i["kind"] == "trigger"]
    assert [t["key"] for t in triggers] == [run_id]
