"""All steps together without Airflow: the bundled example, bootstrap, deploy, champion."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_postgres import PredictionLog, day
from fixtures_retrain import (
    EXAMPLE_CONFIG,
    MODEL,
    REPO,
    Workspace,
    v1_workspace,
    write_config,
)

from watcher.config import load_config
from watcher.errors import ChecksumMismatch
from watcher.registry import ModelRegistry
from watcher.retrain import data, steps
from watcher.retrain.bootstrap import EXAMPLE_WEEKS, bootstrap
from watcher.retrain.mails import run_ended_mail

DATA_SHA256 = "ac6950ae6f11efcc69c29d6bb13e8881c001e27d36434660d59444a1414f712c"


def test_the_example_ships_its_data_licence_and_a_leak_free_config() -> None:
    data = REPO / "examples" / "bikeshare" / "data"
    csv = data / "bikeshare_2011_hourly.csv"
    assert hashlib.sha256(csv.read_bytes()).hexdigest() == DATA_SHA256
    licence = (data / "LICENSE.md").read_text()
    assert "CC BY 4.0" in licence
    assert "Fanaee-T" in licence

    settings = load_config(EXAMPLE_CONFIG)
    columns = settings.models[MODEL].columns
    assert columns.target == "bikers"
    for never in ("casual", "registered", "day", "mnth", "season", "bikers"):
        assert never not in columns.features
    assert settings.dag_id(MODEL) == "retrain_bikeshare"


def test_version_1_is_the_first_8_weeks_and_is_deterministic(
    bikeshare_v1: Workspace, tmp_path: Path
) -> None:
    registry = bikeshare_v1.registry
    v1 = registry.get(MODEL, "1")
    assert registry.production_version(MODEL) == "1"
    assert v1.run_id == "bootstrap"
    assert v1.training_window is not None
    assert str(v1.training_window[0]) == "2011-01-01 00:00:00+00:00"
    assert v1.training_window[1] < pd.Timestamp("2011-02-26", tz="UTC")
    assert "casual" not in v1.features
    assert v1.metrics["r2"] > 0.6

    # The module's command line, from scratch in another folder, gives the same model.
    config = write_config(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "watcher.retrain.bootstrap",
            "--config",
            str(config),
            "--model",
            MODEL,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bikeshare version 1 in production" in done.stdout
    again = ModelRegistry(load_config(config).registry.path)
    assert again.get(MODEL, "1").metrics == v1.metrics
    assert again.get(MODEL, "1").params == v1.params
    assert again.get(MODEL, "1").features == v1.features


def test_bootstrap_leaves_an_existing_production_model_alone(
    bikeshare_v1: Workspace, bikeshare_data: pd.DataFrame
) -> None:
    info = bootstrap(bikeshare_v1.settings, MODEL, bikeshare_data, weeks=2)
    assert info.version == "1"
    assert [v.version for v in bikeshare_v1.registry.list_versions(MODEL)] == ["1"]


def test_run_all_deploys_a_better_model_once_per_run(
    bikeshare_workspace: Callable[..., Workspace], bikeshare_data: pd.DataFrame
) -> None:
    ws = bikeshare_workspace()
    ctx = steps.RunContext(ws.settings, MODEL, "manual__week-13")

    outcome = steps.run_all(ctx)

    assert outcome.decision.deploy, outcome.decision.reason
    assert outcome.version is not None
    assert outcome.version.version == "2"
    registry = ws.registry
    assert registry.production_version(MODEL) == "2"
    # Deploy again (a retried task): the same version, promoted, nothing new registered.
    assert steps.deploy(ctx) == registry.get(MODEL, "2")
    assert [v.version for v in registry.list_versions(MODEL)] == ["1", "2"]

    # The new model serves the following week better than version 1 does.
    week13 = bikeshare_data[
        (bikeshare_data.ts >= "2011-03-26") & (bikeshare_data.ts < "2011-04-02")
    ]
    errors = {}
    for version in ("1", "2"):
        info = registry.get(MODEL, version)
        model = registry.load_model(MODEL, version)
        errors[version] = float(np.abs(model.predict(week13[info.features]) - week13.bikers).mean())
    assert errors["2"] < errors["1"]

    subject, html = run_ended_mail(ctx)
    assert subject.startswith(f"[watcher] INFO {MODEL}: version 2 deployed (mae ")
    assert "champion (v1)" in html
    assert "New model version deployed" in html  # the retrain_deployed alert, as every alert


def test_a_tampered_champion_fails_the_evaluation(
    bikeshare_workspace: Callable[..., Workspace],
) -> None:
    ws = bikeshare_workspace()
    ctx = steps.RunContext(ws.settings, MODEL, "manual__tampered")
    for step in (steps.ingest, steps.validate, steps.engineer, steps.select, steps.train):
        step(ctx)
    reference = ws.registry.get(MODEL, "1").path / "model.skops"
    reference.write_bytes(reference.read_bytes()[:-10])

    with pytest.raises(ChecksumMismatch, match="refusing to load it"):
        steps.evaluate(ctx)


def test_the_ingest_snapshot_is_kept_for_the_whole_run(
    bikeshare_workspace: Callable[..., Workspace], tmp_path: Path
) -> None:
    ws = bikeshare_workspace()
    ctx = steps.RunContext(ws.settings, MODEL, "manual__snapshot")
    first = pd.read_parquet(steps.ingest(ctx))
    # A batch that lands after ingest ran does not change this run's data.
    src = ws.settings.models[MODEL].source
    extra = first.iloc[:5].assign(id=lambda f: f.id + 100_000)
    extra.to_parquet(src.path / "processed" / "late.parquet")  # type: ignore[union-attr]

    again = pd.read_parquet(steps.ingest(ctx))

    assert len(again) == len(first)


def test_a_classifier_runs_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "ts": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
            "amount": rng.gamma(2.0, 10.0, size=n),
            "channel": rng.choice(["web", "shop", "phone"], size=n),
        }
    )
    frame["churned"] = np.where(frame.amount + (frame.channel == "web") * 15 > 25, "yes", "no")
    (tmp_path / "in" / "processed").mkdir(parents=True)
    frame.to_parquet(tmp_path / "in" / "processed" / "b1.parquet")
    config = tmp_path / "watcher.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
[registry]
path = "{tmp_path / "registry"}"
[models.churn.source]
kind = "directory"
path = "{tmp_path / "in"}"
[models.churn.columns]
numeric = ["amount"]
categorical = ["channel"]
target = "churned"
timestamp = "ts"
id = "id"
[models.churn.retrain]
task = "classification"
primary_metric = "f1"
model_families = ["hist_gradient_boosting", "random_forest", "linear"]
selection = "univariate"
n_iter = 2
cv_splits = 2
min_rows = 100
"""
    )
    settings = load_config(config)

    outcome = steps.run_all(steps.RunContext(settings, "churn", "run-1"))

    assert outcome.version is not None
    assert set(outcome.version.metrics) == {"accuracy", "f1", "roc_auc"}
    assert outcome.version.metrics["accuracy"] > 0.8
    registry = ModelRegistry(settings.registry.path)
    model = registry.load_model("churn", "1")  # every family's types are on the allowlist
    assert set(model.predict(frame[outcome.version.features])) <= {"yes", "no"}
    searched = outcome.version.extra["decision"]
    assert searched["metric"] == "f1"


@pytest.mark.postgres
def test_training_data_from_a_sql_prediction_log(
    prediction_log: PredictionLog, bikeshare: pd.DataFrame, tmp_path: Path
) -> None:
    six_weeks = bikeshare[bikeshare.ts < day(43)]
    prediction_log.log(six_weeks, batch_size=500)
    labelled = six_weeks[six_weeks.ts < day(36)]  # the last week's labels are not in yet
    prediction_log.label(zip(labelled.id, labelled.bikers, strict=True))
    config = tmp_path / "watcher.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
[registry]
path = "{tmp_path / "registry"}"
[models.rides.source]
kind = "sql"
dsn = "{prediction_log.db.url}"
table = "predictions"
labels_table = "labels"
[models.rides.columns]
numeric = ["temp", "atemp", "hum", "windspeed"]
categorical = ["season", "weathersit", "workingday"]
prediction = "predicted"
target = "bikers"
timestamp = "ts"
id = "id"
[models.rides.retrain]
window = "last_days"
window_size = 21
n_iter = 2
cv_splits = 2
min_rows = 100
"""
    )
    settings = load_config(config)

    frame, summary = data.gather(settings.models["rides"])

    # 21 days of labelled rows, counted back from the newest labelled one (the SQL read
    # is widened for it), plus the week still waiting for its labels.
    window = six_weeks[six_weeks.ts > labelled.ts.max() - pd.Timedelta(days=21)]
    assert summary.production_rows == len(window)
    assert summary.labelled_rows == int((window.ts < day(36)).sum())
    assert summary.window_end == six_weeks.ts.max().isoformat()
    assert set(frame["id"]) == set(window.id)

    outcome = steps.run_all(steps.RunContext(settings, "rides", "sql-run"))

    assert outcome.version is not None
    reference = ModelRegistry(settings.registry.path).load_reference("rides", "1")
    assert len(reference) == summary.labelled_rows  # unlabelled rows do not train
    assert {"predicted", "bikers", "temp", "season"} <= set(reference.columns)


def test_a_retrain_soon_after_the_bootstrap_learns_from_its_history_too(
    tmp_path: Path, bikeshare_data: pd.DataFrame
) -> None:
    """The demo's first `max_age` retrain: 3 weeks after version 1, labels a week late, so
    production has 2 labelled weeks. The 12-week window also holds the 8 weeks version 1
    was trained on (as `watcher backtest` assumes); trained on the 2 weeks alone, the
    challenger was far worse than version 1 and the gate refused it."""
    settings = v1_workspace(tmp_path, bikeshare_data, served_weeks=3).settings
    history = tmp_path / "incoming" / "processed" / data.HISTORY_FILE
    kept = pd.read_parquet(history)
    assert len(kept) == int((bikeshare_data.ts < "2011-02-26").sum())
    assert "casual" not in kept  # only the config's columns: never a leak
    (tmp_path / "labels" / f"labels-week-{EXAMPLE_WEEKS + 3:02d}.csv").unlink()  # a week late
    labelled_weeks = bikeshare_data[
        (bikeshare_data.ts >= "2011-02-26") & (bikeshare_data.ts < "2011-03-12")
    ]

    # Without the history (before this fix): 2 labelled weeks, refused by the gate.
    history.rename(tmp_path / "aside.parquet")
    short = steps.RunContext(settings, MODEL, "max_age-without-history")
    refused = steps.run_all(short)
    assert json.loads(short.path("ingest.json").read_text())["labelled_rows"] == len(labelled_weeks)
    assert not refused.decision.deploy, refused.decision.reason

    (tmp_path / "aside.parquet").rename(history)
    ctx = steps.RunContext(settings, MODEL, "max_age-with-history")
    outcome = steps.run_all(ctx)
    ingest = json.loads(ctx.path("ingest.json").read_text())
    assert str(history) in ingest["files"]
    assert ingest["labelled_rows"] == len(kept) + len(labelled_weeks)
    assert ingest["window_start"] == "2011-01-01T00:00:00+00:00"
    assert outcome.decision.deploy, outcome.decision.reason
    assert outcome.version is not None
    assert outcome.version.version == "2"
