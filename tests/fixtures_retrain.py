"""Fixtures for the registry, the retraining steps and the retraining DAG.

`bikeshare_v1` trains version 1 of the bundled example once per session (the example's
own config, with a smaller search so it stays quick) and keeps its registry as a template;
`bikeshare_workspace(...)` copies it into a fresh folder with weeks 9-12 served by v1 as
production batches and their label files, and writes a config pointing there.
`airflow_home` is a migrated SQLite Airflow home for `airflow dags test` runs, which run
in a subprocess so Airflow's global configuration never leaks into the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from watcher.config import Settings, dump_toml, load_config
from watcher.registry import ModelRegistry
from watcher.retrain.bootstrap import EXAMPLE_WEEKS, bootstrap, load_example_data
from watcher.retrain.example_data import batch_and_labels, weekly_batches

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "examples" / "bikeshare" / "watcher.toml"
DAGS = REPO / "retrain_dags"
MODEL = "bikeshare"
# Smaller than the example's search: the tests check behaviour, not model quality.
FAST_RETRAIN = {"n_iter": 2, "cv_splits": 2, "time_budget_seconds": 60}


def example_raw(**retrain: Any) -> dict[str, Any]:
    raw = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    raw["models"][MODEL]["retrain"].update(FAST_RETRAIN | retrain)
    # The tests built on this config drive the daemon with drifted batches: they test the
    # drift trigger path (the global default), not the example's performance + max_age
    # policy (the demo's end-to-end test and `watcher backtest` cover that one).
    raw["models"][MODEL]["policy"] = {"triggers": ["drift"], "consecutive": 2}
    return raw


def write_config(
    folder: Path,
    *,
    source: Path | None = None,
    smtp_sender: str = "watcher@example.org",
    recipients: list[str] | None = None,
    **retrain: Any,
) -> Path:
    """The example config with state, registry, source and labels inside `folder`."""
    raw = example_raw(**retrain)
    model = raw["models"][MODEL]
    model["source"] = {
        "kind": "directory",
        "path": str(source or folder / "incoming"),
        "labels_path": str(folder / "labels"),
    }
    model["recipients"] = recipients if recipients is not None else ["oncall@example.org"]
    raw["daemon"] = {"state_dir": str(folder / "state")}
    raw["registry"] = {"path": str(folder / "registry"), "keep_versions": 3}
    raw["smtp"] = {"sender": smtp_sender}
    # Models last: tests append a copy of the models section to add a second model.
    raw["models"] = raw.pop("models")
    path = folder / "watcher.toml"
    path.write_text(dump_toml(raw), encoding="utf-8")
    return path


@dataclass
class Workspace:
    folder: Path
    config: Path
    settings: Settings

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.settings.registry.path)


def serve_weeks(
    data: pd.DataFrame, registry: ModelRegistry, incoming: Path, labels: Path, weeks: range
) -> None:
    """Weeks served by the production model, as the daemon leaves them: batch files in
    `incoming/processed/`, label files in `labels/`."""
    version = registry.production_version(MODEL)
    assert version is not None
    info = registry.get(MODEL, version)
    model = registry.load_model(MODEL, version)
    (incoming / "processed").mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for week, rows in weekly_batches(data, first_week=weeks.start):
        if week not in weeks:
            break
        batch, label = batch_and_labels(rows, np.asarray(model.predict(rows[info.features])))
        batch.to_parquet(incoming / "processed" / f"week-{week:02d}.parquet", index=False)
        label.to_csv(labels / f"labels-week-{week:02d}.csv", index=False)


@pytest.fixture(scope="session")
def bikeshare_data() -> pd.DataFrame:
    return load_example_data(load_config(EXAMPLE_CONFIG), MODEL)


@pytest.fixture(scope="session")
def bikeshare_v1(
    tmp_path_factory: pytest.TempPathFactory, bikeshare_data: pd.DataFrame
) -> Workspace:
    """Version 1 bootstrapped from the first 8 weeks, plus weeks 9-12 as production data."""
    return v1_workspace(tmp_path_factory.mktemp("bikeshare-v1"), bikeshare_data)


def v1_workspace(
    folder: Path, data: pd.DataFrame, *, served_weeks: int = 4, **config: Any
) -> Workspace:
    """Version 1 bootstrapped from the first 8 weeks, the next `served_weeks` (weeks 9-12)
    served as production data, in `folder` (also the benchmarks' starting point).
    `config`: `write_config`'s options."""
    path = write_config(folder, **config)
    settings = load_config(path)
    bootstrap(settings, MODEL, data, weeks=EXAMPLE_WEEKS)
    serve_weeks(
        data,
        ModelRegistry(settings.registry.path),
        folder / "incoming",
        folder / "labels",
        range(EXAMPLE_WEEKS + 1, EXAMPLE_WEEKS + 1 + served_weeks),
    )
    return Workspace(folder, path, settings)


@pytest.fixture
def bikeshare_workspace(tmp_path: Path, bikeshare_v1: Workspace) -> Callable[..., Workspace]:
    """A private copy of `bikeshare_v1` (registry, batches, labels) with its own config.

    `source_missing=True` leaves the batch folder out (it is at `folder/"late"` once the
    test copies it there); other keywords override `[models.bikeshare.retrain]`.
    """

    def make(*, source_missing: bool = False, **retrain: Any) -> Workspace:
        folder = tmp_path / "ws"
        shutil.copytree(bikeshare_v1.folder / "registry", folder / "registry")
        shutil.copytree(bikeshare_v1.folder / "labels", folder / "labels")
        source = folder / "incoming"
        if source_missing:
            source = folder / "late"
            shutil.copytree(bikeshare_v1.folder / "incoming", folder / "staged")
        else:
            shutil.copytree(bikeshare_v1.folder / "incoming", source)
        config = write_config(folder, source=source, **retrain)
        return Workspace(folder, config, load_config(config))

    return make


# ---- Airflow --------------------------------------------------------------------------


@dataclass
class AirflowHome:
    home: Path

    def env(self, config: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "WATCHER_"))}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "WATCHER_CONFIG": str(config),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(extra)
        return env

    def dags_test(
        self, config: Path, conf: dict[str, Any] | None = None, **env: str
    ) -> subprocess.Popen[str]:
        """Start `airflow dags test retrain_bikeshare` (= dag.test()) in a subprocess."""
        airflow = Path(sys.executable).parent / "airflow"
        # The child keeps its own copy of the log's file descriptor.
        with open(config.parent / "dags-test.log", "w") as log:
            return subprocess.Popen(
                [str(airflow), "dags", "test", f"retrain_{MODEL}", "-c", json.dumps(conf or {})],
                env=self.env(config, **env),
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def run(
        self, config: Path, conf: dict[str, Any] | None = None, timeout: float = 300, **env: str
    ) -> tuple[int, str]:
        proc = self.dags_test(config, conf, **env)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return code, (config.parent / "dags-test.log").read_text()


def smtp_connection(port: int) -> str:
    """AIRFLOW_CONN_SMTP_DEFAULT for a plaintext local server (the hook defaults to TLS)."""
    return json.dumps(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10},
        }
    )


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    """A migrated SQLite AIRFLOW_HOME, shared by the session's `airflow dags test` runs."""
    home = AirflowHome(tmp_path_factory.mktemp("airflow-dagtest"))
    airflow = Path(sys.executable).parent / "airflow"
    done = subprocess.run(
        [str(airflow), "db", "migrate"],
        env=home.env(EXAMPLE_CONFIG),
        cwd=home.home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return home
