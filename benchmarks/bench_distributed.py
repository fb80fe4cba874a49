"""One retraining run through real Airflow 3.3.2, twice on the same data: LocalExecutor with
the file registry, then CeleryExecutor (Redis, two workers in empty folders of their own)
with MLflow as the registry and the only way files travel between tasks.

Version 1 of the bundled example is bootstrapped from 8 weeks, weeks 9-12 are served as
production batches; the MLflow workspace is a copy with version 1 migrated into a private
`mlflow server` (SQLite store, --serve-artifacts). Each setup gets its own Airflow home and
PostgreSQL metadata database, started here (as the tests do: tests/fixtures_celery.py) and
stopped (the database dropped) before the next.

Printed per task, from Airflow's task instances: seconds from start to end under each setup,
and for the Celery run the seconds spent downloading and uploading hand-off artifacts (the
`handoff_*_seconds.<task>` metrics each task logs to the MLflow run). The run's wall time is
the DAG run's start to end; the rest of the gap is Airflow's scheduling and Celery queueing
plus MLflow bookkeeping. On a shared machine compare ratios, not absolute numbers.

    .venv/bin/python benchmarks/bench_distributed.py
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fixtures_airflow import AirflowServer, create_airflow_database  # noqa: E402
from fixtures_celery import (  # noqa: E402
    CeleryAirflow,
    boot,
    celery_env,
    retrain_airflow,
    start_redis,
)
from fixtures_mlflow import MlflowServer  # noqa: E402
from fixtures_retrain import EXAMPLE_CONFIG, MODEL, v1_workspace, write_config  # noqa: E402

from watcher.config import dump_toml, load_config  # noqa: E402
from watcher.dev.localservices import free_port  # noqa: E402
from watcher.registry import ModelRegistry  # noqa: E402
from watcher.registry_backend import open_registry  # noqa: E402
from watcher.registry_migrate import migrate  # noqa: E402
from watcher.retrain.bootstrap import load_example_data  # noqa: E402

DAG = f"retrain_{MODEL}"
TASKS = [
    "ingest",
    "validate",
    "engineer_features",
    "select_features",
    "tune_and_train",
    "evaluate",
    "gate",
    "deploy",
    "notify",
]


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _api(server: AirflowServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API call, asked again when it timed out (one api-server worker, a loaded machine)."""
    for attempt in range(6):
        try:
            return server.api(method, path, body)
        except TimeoutError:
            if attempt == 5:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def one_run(server: AirflowServer, timeout: float = 1500) -> tuple[str, float, dict[str, float]]:
    """Trigger one run, wait for it; (run id, wall seconds, {task: seconds})."""
    status, run = _api(
        server, "POST", f"/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {"reason": "bench"}}
    )
    assert status == 200, run
    run_id = run["dag_run_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, run = _api(server, "GET", f"/dags/{DAG}/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            break
        time.sleep(2)
    assert run["state"] == "success", f"run {run_id}: {run['state']}"
    status, body = _api(server, "GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances")
    tasks = {
        ti["task_id"]: (_when(ti["end_date"]) - _when(ti["start_date"])).total_seconds()
        for ti in body["task_instances"]
    }
    wall = (_when(run["end_date"]) - _when(run["start_date"])).total_seconds()
    return run_id, wall, tasks


def local_file_run(folder: Path, config: Path) -> tuple[float, dict[str, float]]:
    server = retrain_airflow(folder / "airflow-local", config, create_airflow_database())
    try:
        boot(server)
        _, wall, tasks = one_run(server)
    finally:
        server.stop()
    return wall, tasks


def celery_mlflow_run(
    folder: Path, config: Path, mlflow: MlflowServer
) -> tuple[float, dict[str, float], dict[str, float]]:
    redis, redis_port = start_redis(folder)
    home = folder / "airflow-celery"
    database = create_airflow_database()
    server = retrain_airflow(home, config, database, **celery_env(database, redis_port))
    cluster = CeleryAirflow(server, config, load_config(config), folder)
    try:
        boot(server)
        cluster.start_worker("worker-a")
        cluster.start_worker("worker-b")
        run_id, wall, tasks = one_run(server)
    finally:
        cluster.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(redis.pid, signal.SIGKILL)
    registry = open_registry(cluster.settings.registry)
    mlrun = registry.retrain_run(MODEL, run_id)  # type: ignore[attr-defined]
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(tracking_uri=mlflow.url).get_run(mlrun).data.metrics
    handoff = {
        task: metrics.get(f"handoff_in_seconds.{task}", 0.0)
        + metrics.get(f"handoff_out_seconds.{task}", 0.0)
        for task in TASKS
    }
    return wall, tasks, handoff


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        folder = Path(tmp)
        (folder / "file").mkdir()
        data = load_example_data(load_config(EXAMPLE_CONFIG), MODEL)
        workspace = v1_workspace(folder / "file", data, retries=0)
        config = workspace.config
        # The same data for the MLflow setup, copied before the file run changes anything.
        ml_folder = folder / "mlflow-ws"
        for part in ("registry", "labels", "incoming"):
            shutil.copytree(folder / "file" / part, ml_folder / part)

        port = free_port()
        (folder / "mlflow").mkdir()
        mlflow = MlflowServer(url=f"http://127.0.0.1:{port}", home=folder / "mlflow", port=port)
        mlflow.start()
        try:
            ml_config = write_config(ml_folder, retries=0)
            raw = tomllib.loads(ml_config.read_text(encoding="utf-8"))
            raw["registry"] = mlflow.registry_config(keep_versions=3)
            raw["models"] = raw.pop("models")
            ml_config.write_text(dump_toml(raw), encoding="utf-8")
            migrate(
                ModelRegistry(ml_folder / "registry"),
                open_registry(load_config(ml_config).registry),
            )
            shutil.rmtree(ml_folder / "registry")

            local_wall, local_tasks = local_file_run(folder, config)
            celery_wall, celery_tasks, handoff = celery_mlflow_run(folder, ml_config, mlflow)
        finally:
            mlflow.stop()

    print(f"{'task':<18} {'Local+file s':>12} {'Celery+MLflow s':>15} {'handoff s':>9}")
    for task in TASKS:
        print(
            f"{task:<18} {local_tasks.get(task, 0):12.2f} {celery_tasks.get(task, 0):15.2f} "
            f"{handoff[task]:9.2f}"
        )
    local_sum, celery_sum = sum(local_tasks.values()), sum(celery_tasks.values())
    moved = sum(handoff.values())
    print(f"{'sum of tasks':<18} {local_sum:12.2f} {celery_sum:15.2f} {moved:9.2f}")
    print(f"{'run wall time':<18} {local_wall:12.2f} {celery_wall:15.2f}")
    print(
        f"Celery+MLflow / Local+file wall time: {celery_wall / local_wall:.2f}x; artifact "
        f"round trips {moved:.1f} s = {moved / celery_wall:.0%} of the Celery run's wall time; "
        f"scheduling and queueing (wall minus task time): {local_wall - local_sum:.1f} s "
        f"local, {celery_wall - celery_sum:.1f} s Celery"
    )


if __name__ == "__main__":
    main()
