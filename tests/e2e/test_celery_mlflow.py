"""The retraining DAG on Airflow's CeleryExecutor: two real workers on Redis, each in an
empty folder of its own, with MLflow as the registry and the only way files travel between
tasks (tests/fixtures_celery.py starts the stack once per session).

- A drift-triggered run from the daemon's outbox: `watcher run` scores two drifted batches
  and triggers the DAG; worker A runs the first tasks and is killed with SIGKILL in the
  middle of `tune_and_train`; the scheduler notices the missing heartbeats, the task is
  retried on worker B from what A left in MLflow, the run registers a new version with the
  `champion` alias and the daemon switches its reference to it. The task instances'
  hostnames (each worker reports its own name) show where each task ran.
- The MLflow server stopped during a run: the next task fails, is retried, fails again, and
  the failure mail (a real aiosmtpd server) says MLflow is unreachable; the champion stays.

Gate refusal, rollback through the alias and a tampered artifact on the MLflow backend are
in tests/e2e/test_retrain_mlflow.py and tests/integration/test_registry_mlflow.py: they need
no Celery.
"""

from __future__ import annotations

import signal
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fixtures_celery import CeleryAirflow
from fixtures_mlflow import MlflowServer
from fixtures_retrain import MODEL, smtp_connection
from fixtures_smtp import SmtpServer
from harness import DaemonProcess
from mlflow.tracking import MlflowClient
from support import wait_for

from watcher.config import dump_toml
from watcher.dev.localservices import free_port
from watcher.registry_backend import open_registry
from watcher.registry_mlflow import CHAMPION, MlflowRegistry
from watcher.state import StateStore

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


@pytest.fixture(scope="module")
def cluster(celery_airflow: CeleryAirflow) -> Iterator[CeleryAirflow]:
    """The session's Celery stack with no worker left running by another module."""
    for name in list(celery_airflow.workers):
        celery_airflow.stop_worker(name, signal.SIGTERM, 60)
    yield celery_airflow
    for name in list(celery_airflow.workers):
        celery_airflow.stop_worker(name, signal.SIGKILL, 10)


@pytest.fixture(scope="module")
def mail() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def wait_running(cluster: CeleryAirflow, run_id: str, task: str, timeout: float) -> str:
    """Wait until `task` of the run is running; the worker running it."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        ti = task_instances(cluster, run_id).get(task, {})
        state = ti.get("state")
        if state == "running" and ti.get("hostname"):
            return str(ti["hostname"])
        if state in ("success", "failed", "upstream_failed"):
            break
        time.sleep(0.5)
    raise AssertionError(f"{task} never seen running (last {state}) within {timeout}s")


def drifted_batch(processed: Path, k: int) -> pd.DataFrame:
    """Week 12 as the production model served it, with the weather shifted far away and
    new ids and times, so the daemon scores it as a new, drifted batch."""
    frame = pd.read_parquet(processed / "week-12.parquet")
    for column in ("temp", "atemp", "hum", "windspeed"):
        frame[column] = frame[column] + 3.0
    frame["ts"] = pd.to_datetime(frame["ts"]) + pd.Timedelta(days=7 * k)
    if pd.api.types.is_numeric_dtype(frame["id"]):
        frame["id"] = frame["id"] + 10_000_000 * k
    else:
        frame["id"] = f"drift{k}-" + frame["id"].astype(str)
    return frame


def daemon_config(cluster: CeleryAirflow) -> Path:
    """The cluster's watcher config (MLflow registry) with the daemon triggering Airflow."""
    raw = tomllib.loads(cluster.config.read_text(encoding="utf-8"))
    raw["airflow"] = cluster.server.airflow_config(
        poll_interval_seconds=2.0, request_timeout_seconds=30.0
    )
    raw["daemon"]["poll_interval_seconds"] = 1.0
    raw["metrics"] = {"port": free_port()}
    raw["models"] = raw.pop("models")
    path = cluster.folder / "watcher-daemon.toml"
    path.write_text(dump_toml(raw), encoding="utf-8")
    return path


@pytest.mark.timeout(900)  # the Celery stack's start, one run, 60 s to notice the killed worker
def test_a_drift_run_survives_a_killed_worker_deploys_the_champion_and_moves_the_daemon(
    cluster: CeleryAirflow,
) -> None:
    settings = cluster.settings
    registry = open_registry(settings.registry)
    champion = registry.production_version(MODEL)
    assert champion is not None
    known = {r["dag_run_id"] for r in cluster.server.list_runs(DAG)}
    cluster.start_worker("worker-a")
    config = daemon_config(cluster)
    state = settings.daemon.state_dir
    daemon = DaemonProcess(config, cluster.folder / "daemon-kill.log")
    try:
        incoming = settings.models[MODEL].source.path
        for k in (1, 2):  # policy: two drifted batches in a row
            batch = drifted_batch(incoming / "processed", k)
            tmp = incoming / f".drift-{k}.tmp"
            batch.to_parquet(tmp, index=False)
            tmp.rename(incoming / f"drift-{k}.parquet")

        def new_run() -> str | None:
            runs = [r for r in cluster.server.list_runs(DAG) if r["dag_run_id"] not in known]
            return str(runs[0]["dag_run_id"]) if runs else None

        run_id = wait_for(
            new_run, timeout=240, interval=2, what="a DAG run triggered by the daemon"
        )
        status, run = api(cluster, "GET", f"/dags/{DAG}/dagRuns/{run_id}")
        assert status == 200, run
        assert "drift" in run["conf"]["reason"], run["conf"]

        # SIGKILL to the worker's whole process group in the middle of the longest task.
        assert wait_running(cluster, run_id, "tune_and_train", timeout=600) == "worker-a"
        dir_b = cluster.start_worker("worker-b")
        cluster.stop_worker("worker-a", signal.SIGKILL, 10)
        final = wait_for_run(cluster, run_id, timeout=900)

        tis = task_instances(cluster, run_id)
        assert final["state"] == "success", {t: ti["state"] for t, ti in tis.items()}
        killed = tis["tune_and_train"]
        assert killed["try_number"] == 2, killed
        assert killed["hostname"] == "worker-b"
        assert tis["ingest"]["hostname"] == "worker-a"
        assert {ti["hostname"] for ti in tis.values()} == {"worker-a", "worker-b"}

        hosts = {task: ti["hostname"] for task, ti in tis.items()}
        assert hosts["notify"] == "worker-b"

        # A new version carries the champion alias in MLflow.
        assert isinstance(registry, MlflowRegistry)
        new = registry.production_version(MODEL)
        assert new is not None
        assert int(new) > int(champion)
        assert registry.get(MODEL, new).run_id == run_id
        client = MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
        name = f"{settings.registry.model_name_prefix}{MODEL}"
        assert client.get_model_version_by_alias(name, CHAMPION).version == new

        # Worker B's tasks started from files worker A made: they came from MLflow.
        mlrun = registry.retrain_run(MODEL, run_id)
        assert mlrun is not None
        metrics = client.get_run(mlrun).data.metrics
        for task, host in hosts.items():
            if host == "worker-b":
                assert metrics[f"handoff_in_bytes.{task}"] > 0, task
        # Nothing left on the surviving worker's disk (the killed one had no chance to
        # clean up), nor in a run folder.
        assert not list((dir_b / "tmp").glob("watcher-*")), dir_b
        assert not (state / "retrain").exists()
        store = StateStore(state / "state.db")
        try:
            wait_for(
                lambda: store.reference_version(MODEL) == f"v{new}",
                timeout=120,
                interval=1,
                what=f"the daemon's reference switching to v{new}",
            )
        finally:
            store.close()

        # The evidently report the daemon rendered on its own disk for a triggering batch is
        # uploaded to the run in MLflow once the tracker sees the run end (the reference may
        # switch a little earlier: the daemon also follows the alias on its own).
        def reports() -> list[str]:
            listed = client.list_artifacts(mlrun, "drift")
            return [a.path for a in listed if a.path.endswith(".html")]

        html = wait_for(reports, timeout=90, interval=1, what="the drift report on the MLflow run")
        assert len(html) == 1, html
        page = Path(client.download_artifacts(mlrun, html[0], str(cluster.folder / "dl")))
        rendered = state / "reports" / MODEL / Path(html[0]).name  # on the daemon's disk
        assert page.read_bytes() == rendered.read_bytes()
        assert b"<html" in page.read_bytes()
    finally:
        daemon.stop()
        for worker in list(cluster.workers):
            cluster.stop_worker(worker, signal.SIGTERM, 60)


def test_mlflow_down_during_a_run_is_retried_then_failed_and_mailed(
    cluster: CeleryAirflow, mlflow_server: MlflowServer, mail: SmtpServer
) -> None:
    registry = open_registry(cluster.settings.registry)
    champion = registry.production_version(MODEL)
    cluster.start_worker("worker-c", AIRFLOW_CONN_SMTP_DEFAULT=smtp_connection(mail.port))
    mail.clear()
    try:
        status, run = api(
            cluster,
            "POST",
            f"/dags/{DAG}/dagRuns",
            {"logical_date": None, "conf": {"reason": "manual (mlflow outage test)"}},
        )
        assert status == 200, run
        run_id = run["dag_run_id"]
        deadline = time.monotonic() + 600
        while task_instances(cluster, run_id).get("ingest", {}).get("state") != "success":
            assert time.monotonic() < deadline, "ingest did not succeed"
            time.sleep(1)
        mlflow_server.stop()

        final = wait_for_run(cluster, run_id, timeout=300)

        tis = task_instances(cluster, run_id)
        assert final["state"] == "failed"
        assert tis["validate"]["state"] == "failed"
        assert tis["validate"]["try_number"] == 2
        got = mail.wait_for(2, timeout=60)
        subjects = [m.message["Subject"] for m in got]
        # The task mails are watcher's alerts (one renderer), not Airflow's templates.
        assert f"[watcher] WARNING {MODEL}: retrain task validate will be retried" in subjects
        assert f"[watcher] CRITICAL {MODEL}: retrain task validate failed" in subjects, subjects
        failed = next(m for m in got if m.message["Subject"].endswith("validate failed"))
        body = failed.message.get_body(("html",)).get_content()
        assert f"MLflow at {mlflow_server.url}" in body
        assert failed.rcpt_tos == ["oncall@example.org"]
    finally:
        if not _up(mlflow_server):
            mlflow_server.start()
        for worker in list(cluster.workers):
            cluster.stop_worker(worker, signal.SIGKILL, 10)
    assert registry.production_version(MODEL) == champion


def _up(server: MlflowServer) -> bool:
    return server._proc is not None and server._proc.poll() is None
