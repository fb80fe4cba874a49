"""`watcher --version` and the `--json` views of `status` and `models`, run as a user would."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path

from harness import watcher_cli
from sklearn.linear_model import LinearRegression
from support import frame, write_config

from watcher.config import load_config
from watcher.registry import ModelRegistry


def watcher(*args: str) -> subprocess.CompletedProcess[str]:
    return watcher_cli(*args, timeout=120)


def test_version_names_the_release_and_the_distribution() -> None:
    done = watcher("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"watcher {version('watcher-drift')} (watcher-drift)\n"


def test_status_json_says_what_the_tables_say(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    assert watcher("trigger", "m", "--reason", "by hand", "--config", str(cfg)).returncode == 0
    done = watcher("status", "--json", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    m = doc["models"]["m"]
    assert m["drift_streak"] == 0
    assert m["batches"] == []
    assert m["last_decision"]["outcome"] == "manual"
    assert m["last_decision"]["reason"] == "by hand"
    [action] = m["pending_actions"]
    assert action["kind"] == "trigger"
    assert action["key"] == m["last_decision"]["run_id"]
    assert doc["pending"] == {"trigger": 1, "alert": 0, "webhook": 0}
    assert doc["dead_letters"] == []


def test_models_json_lists_versions_and_production(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    settings = load_config(cfg)
    empty = json.loads(watcher("models", "--json", "--config", str(cfg)).stdout)
    assert empty == {"models": {"m": {"production": None, "versions": []}}}

    registry = ModelRegistry(settings.registry.path)
    data = frame(100, seed=1)
    for run in ("r1", "r2"):
        info = registry.register(
            "m",
            estimator=LinearRegression().fit(data[["a", "b"]], data["p"]),
            reference=data,
            metrics={"mae": 1.5},
            features=["a", "b"],
            params={},
            run_id=run,
        )
    registry.promote("m", info.version)
    done = watcher("models", "--json", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)["models"]["m"]
    assert doc["production"] == info.version
    assert [v["run_id"] for v in doc["versions"]] == ["r1", "r2"]
    assert doc["versions"][-1]["metrics"] == {"mae": 1.5}
    assert doc["versions"][-1]["features"] == ["a", "b"]
