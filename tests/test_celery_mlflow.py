"""One retraining run on Airflow's CeleryExecutor, across two workers that share no working
folder, with MLflow as the registry and the only way files travel between tasks.

Worker A alone takes the first task; then worker B starts and A stops with Celery's warm
shutdown, so the run must continue on B from what A left in MLflow. The task instances'
hostnames (each worker reports its own name) show where each task ran.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fixtures_celery import CeleryAirflow
from fixtures_mlflow import MlflowServer
from fixtures_retrain import MODEL
from mlflow.tracking import MlflowClient

from watcher.pipeline import load_reference
from watcher.registry_backend import open_registry
from watcher.registry_mlflow import CHAMPION, MlflowRegistry

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

DAG = f"retrain_{MODEL}"


def api(cluster: CeleryAirflow, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API call; a poll that timed out (one api-server worker on a loaded 2-core
    machine) is asked again, a few times."""
    for attempt in range(6):
        try:
            return cluster.server.api(method, path, body)
        except TimeoutError:
            if attempt == 5:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def task_instances(cluster: CeleryAirflow, run_id: str) -> dict[str, dict[str, Any]]:
    status, body = api(cluster, "GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances")
    assert status == 200, body
    return {ti["task_id"]: ti for ti in body["task_instances"]}


def wait_for_run(cluster: CeleryAirflow, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, run = api(cluster, "GET", f"/dags/{DAG}/dagRuns/{run_id}")
        assert status == 200, run
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(2)
    raise AssertionError(f"run {run_id} still {run.get('state')} after {timeout}s")


def wait_for_task(cluster: CeleryAirflow, run_id: str, task: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = task_instances(cluster, run_id).get(task, {}).get("state")
        if state == "success":
            return
        if state in ("failed", "upstream_failed"):
            break
        time.sleep(1)
    raise AssertionError(
        f"{task} is {state} after {timeout}s: {cluster.server.log_tail('scheduler')}"
    )


def test_a_run_spans_two_workers_and_deploys_the_champion_through_mlflow(
    celery_airflow: CeleryAirflow, mlflow_server: MlflowServer
) -> None:
    cluster = celery_airflow
    dir_a = cluster.start_worker("worker-a")
    status, run = api(
        cluster,
        "POST",
        f"/dags/{DAG}/dagRuns",
        {"logical_date": None, "conf": {"reason": "drift (celery test)", "batches": []}},
    )
    assert status == 200, run
    run_id = run["dag_run_id"]

    wait_for_task(cluster, run_id, "ingest", timeout=600)
    dir_b = cluster.start_worker("worker-b")
    cluster.stop_worker("worker-a")  # warm shutdown: what A has in flight finishes first
    final = wait_for_run(cluster, run_id, timeout=1200)

    tis = task_instances(cluster, run_id)
    assert final["state"] == "success", {t: ti["state"] for t, ti in tis.items()}
    hosts = {task: ti["hostname"] for task, ti in tis.items()}
    assert hosts["ingest"] == "worker-a"
    assert hosts["notify"] == "worker-b"
    assert set(hosts.values()) == {"worker-a", "worker-b"}

    # The new version is the champion in MLflow, and the daemon's reference follows it.
    registry = open_registry(cluster.settings.registry)
    assert isinstance(registry, MlflowRegistry)
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    name = f"{cluster.settings.registry.model_name_prefix}{MODEL}"
    assert client.get_model_version_by_alias(name, CHAMPION).version == "2"
    assert registry.get(MODEL, "2").run_id == run_id
    reference = load_reference(MODEL, cluster.settings.models[MODEL], cluster.settings)
    assert reference.version == "v2"

    # Worker B's tasks started from files worker A made: they came from MLflow.
    mlrun = registry.retrain_run(MODEL, run_id)
    assert mlrun is not None
    metrics = client.get_run(mlrun).data.metrics
    for task, host in hosts.items():
        if host == "worker-b" and task != "ingest":
            assert metrics[f"handoff_in_bytes.{task}"] > 0, task
    # Nothing was left on either worker's disk, nor in a run folder.
    for folder in (dir_a, dir_b):
        assert not list((folder / "tmp").glob("watcher-*")), folder
    assert not (cluster.settings.daemon.state_dir / "retrain").exists()
