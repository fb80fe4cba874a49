"""The command line as a user runs it: real files, a real process, exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from harness import watcher_cli
from support import frame, write_config

from watcher.config import load_config
from watcher.state import StateStore


def watcher(*args: str) -> subprocess.CompletedProcess[str]:
    return watcher_cli(*args, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("score")
    paths = {
        "ref": tmp / "ref.parquet",
        "same": tmp / "same.csv",
        "drifted": tmp / "drifted.parquet",
    }
    frame(800, seed=1).to_parquet(paths["ref"])
    frame(400, seed=2).to_csv(paths["same"], index=False)
    frame(400, seed=3, shift=1.5).to_parquet(paths["drifted"])
    return paths


def test_score_json_no_drift_exits_0(files: dict[str, Path]) -> None:
    res = watcher("score", str(files["ref"]), str(files["same"]), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["dataset_drift"] is False
    assert set(out) >= {"dataset_drift", "drift_share", "columns"}
    # Without a config the column types are inferred: 5 numeric + 1 categorical.
    assert set(out["columns"]) == {"a", "b", "température", "wind speed", "c", "p"}
    for col in out["columns"].values():
        assert set(col) == {"stattest", "score", "threshold", "drifted"}
    assert out["columns"]["c"]["stattest"] == "chisquare"  # reference ≤ 1000 rows, categorical
    assert out["columns"]["a"]["stattest"] == "ks"


def test_score_drift_exits_1_with_a_table(files: dict[str, Path]) -> None:
    res = watcher("score", str(files["ref"]), str(files["drifted"]))
    assert res.returncode == 1, res.stderr
    assert "DATASET DRIFT" in res.stdout
    assert "température" in res.stdout


def test_score_with_config_uses_its_columns(files: dict[str, Path], tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = watcher(
        "score",
        str(files["ref"]),
        str(files["drifted"]),
        "--config",
        str(cfg),
        "--model",
        "m",
        "--json",
    )
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert "p" not in out["columns"]  # the prediction is scored apart, not as a feature
    assert out["prediction"]["stattest"] == "ks"


def test_score_errors_exit_2(files: dict[str, Path], tmp_path: Path) -> None:
    res = watcher("score", str(files["ref"]), str(tmp_path / "missing.csv"))
    assert res.returncode == 2
    assert "missing.csv" in res.stderr
    lacking = tmp_path / "lacking.csv"
    frame(100, seed=4).drop(columns=["a"]).to_csv(lacking, index=False)
    res = watcher("score", str(files["ref"]), str(lacking))
    assert res.returncode == 2
    assert "'a'" in res.stderr


def test_trigger_queues_through_the_outbox_and_status_shows_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = watcher("trigger", "m", "--reason", "new labels", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    settings = load_config(cfg)
    store = StateStore(settings.daemon.state_dir / "state.db")
    try:
        items = store.outbox_items("m", status="pending")
        assert [i["kind"] for i in items] == ["trigger"]
        assert items[0]["payload"]["dag_id"] == "retrain_m"
        assert items[0]["payload"]["conf"]["reason"] == "new labels"
        assert store.decisions("m", 1)[0].outcome == "manual"
    finally:
        store.close()
    status = watcher("status", "--config", str(cfg))
    assert status.returncode == 0, status.stderr
    assert "pending actions: 1" in status.stdout
    assert "manual" in status.stdout
    unknown = watcher("trigger", "nope", "--config", str(cfg))
    assert unknown.returncode == 2
    assert "unknown model" in unknown.stderr
