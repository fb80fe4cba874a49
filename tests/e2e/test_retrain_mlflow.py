"""The retraining DAG with the MLflow registry (`airflow dags test`, a real `mlflow server`).

Each task works in a fresh temporary folder filled from the MLflow run's `handoff/`
artifacts, so nothing passes through a local run folder: the test removes the file
registry and checks that no run folder was ever written under the state directory. What
MLflow holds is read with MLflow's own client.
"""

from __future__ import annotations

import shutil
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures_mlflow import MlflowServer
from fixtures_retrain import MODEL, AirflowHome, Workspace
from mlflow.tracking import MlflowClient

from watcher.config import dump_toml, load_config
from watcher.registry import ModelRegistry
from watcher.registry_backend import open_registry
from watcher.registry_migrate import migrate
from watcher.registry_mlflow import CHAMPION, MlflowRegistry

pytestmark = pytest.mark.slow


def mlflow_workspace(ws: Workspace, server: MlflowServer) -> tuple[Path, MlflowRegistry]:
    """The workspace's config switched to MLflow (its own names on the shared server), with
    version 1 migrated there and the file registry deleted."""
    raw = tomllib.loads(ws.config.read_text(encoding="utf-8"))
    tag = f"t{uuid.uuid4().hex[:8]}"
    raw["registry"] = server.registry_config(
        model_name_prefix=f"{tag}-", experiment_prefix=f"watcher-{tag}", keep_versions=3
    )
    raw["models"] = raw.pop("models")  # tables after values, as write_config keeps them
    config = ws.folder / "watcher-mlflow.toml"
    config.write_text(dump_toml(raw), encoding="utf-8")
    registry = open_registry(load_config(config).registry)
    assert isinstance(registry, MlflowRegistry)
    migrate(ModelRegistry(ws.settings.registry.path), registry)
    shutil.rmtree(ws.settings.registry.path)
    return config, registry


def test_dag_run_on_mlflow_registers_the_champion_and_records_the_run(
    airflow_home: AirflowHome,
    bikeshare_workspace: Callable[..., Workspace],
    mlflow_server: MlflowServer,
) -> None:
    ws = bikeshare_workspace()
    config, registry = mlflow_workspace(ws, mlflow_server)
    assert registry.production_version(MODEL) == "1"
    conf: dict[str, Any] = {
        "reason": "dataset drift in 2 batches",
        "batches": ["week-12.parquet"],
        "drift": {"share": 0.6, "columns": ["temp"]},
    }

    code, log = airflow_home.run(config, conf)

    assert code == 0, log[-4000:]
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    name = f"{registry.cfg.model_name_prefix}{MODEL}"
    assert client.get_model_version_by_alias(name, CHAMPION).version == "2"
    assert registry.production_version(MODEL) == "2"
    v2 = registry.get(MODEL, "2")
    assert v2.run_id is not None
    assert v2.run_id.startswith("manual__")
    assert v2.extra["decision"]["deploy"] is True
    assert {"prediction", "bikers", "ts"} <= set(registry.load_reference(MODEL, "2").columns)

    # The DAG run is one MLflow run: params, holdout metrics, the gate's decision, the
    # drift report, and the files the tasks handed each other.
    mlrun_id = registry.retrain_run(MODEL, v2.run_id)
    assert mlrun_id is not None
    run = client.get_run(mlrun_id)
    assert run.data.params["trigger.reason"] == "dataset drift in 2 batches"
    assert run.data.params["retrain.primary_metric"] == "mae"
    assert run.data.metrics["challenger.mae"] < run.data.metrics["champion.mae"]
    assert run.data.tags["watcher.gate"] == "deploy"
    assert run.data.tags["watcher.deployed"] == "true"
    assert run.info.status == "FINISHED"
    handoff = {a.path.split("/")[-1] for a in client.list_artifacts(mlrun_id, "handoff")}
    assert {"data.parquet", "train.parquet", "challenger.skops", "decision.json"} <= handoff
    assert [a.path for a in client.list_artifacts(mlrun_id, "drift")] == ["drift/drift_report.json"]
    for task in ("ingest", "tune_and_train", "deploy"):
        assert f"handoff_out_seconds.{task}" in run.data.metrics
    record = registry.run_record(MODEL, v2.run_id)
    assert record is not None
    assert record["version"] == "2"

    # No task wrote a run folder on local disk.
    assert not (ws.settings.daemon.state_dir / "retrain").exists()


def test_gate_refusal_on_mlflow_keeps_the_champion_and_says_why(
    airflow_home: AirflowHome,
    bikeshare_workspace: Callable[..., Workspace],
    mlflow_server: MlflowServer,
) -> None:
    ws = bikeshare_workspace()
    config, registry = mlflow_workspace(ws, mlflow_server)

    code, log = airflow_home.run(config, {"margin": 1.0, "reason": "manual"})

    assert code == 0, log[-4000:]
    assert registry.production_version(MODEL) == "1"
    assert [v.version for v in registry.list_versions(MODEL)] == ["1"]
    client = MlflowClient(tracking_uri=mlflow_server.url)
    (run,) = client.search_runs(
        [registry._experiment_id(MODEL)], filter_string="tags.`watcher.gate` = 'keep_champion'"
    )
    assert "does not beat champion v1" in run.data.tags["watcher.gate_reason"]
    assert run.data.tags["watcher.deployed"] == "false"
