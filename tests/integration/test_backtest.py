"""`watcher backtest` end to end on a short slice of the bundled Bikeshare data, and its
answers to bad input: a clear error (exit 2) or a clear table, never a traceback."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from watcher.cli import app
from watcher.config import dump_toml
from watcher.retrain.bootstrap import EXAMPLE_DATA, read_dataset

REPO = Path(__file__).resolve().parents[2]
# 2-day periods: 5 train version 1, 4 are replayed (18 days of hourly rows).
ARGS = ["--every", "2D", "--skip", "5", "--limit", "4", "--jobs", "2"]
# The configured policy never fires (an unreachable performance threshold): the table says
# so, and the signals alone (drift, max_age) still run.
NEVER = {"triggers": ["performance"], "performance": {"threshold": 1e6}}


def _config(tmp_path: Path, **policy: Any) -> Path:
    raw = tomllib.loads((REPO / "examples/bikeshare/watcher.toml").read_text(encoding="utf-8"))
    raw["daemon"] = {"state_dir": str(tmp_path / "state")}
    raw["registry"] = {"path": str(tmp_path / "registry")}
    model = raw["models"]["bikeshare"]
    model["source"] = {
        "kind": "directory",
        "path": str(tmp_path / "in"),
        "labels_path": str(tmp_path / "labels"),
    }
    # A cheap pipeline: the test is about the backtest, not about the model.
    model["retrain"].update(n_iter=1, selection="none", min_rows=100)
    model["policy"] = {"max_age_batches": 2, **policy}
    path = tmp_path / "watcher.toml"
    path.write_text(dump_toml(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    frame = read_dataset(EXAMPLE_DATA, "bikeshare")
    return frame[frame["ts"] < frame["ts"].min() + pd.Timedelta(days=18)].reset_index(drop=True)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False)
    return path


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(app, ["backtest", *args], env={"COLUMNS": "200"})


def test_backtest_end_to_end_json_png_deterministic(tmp_path: Path, history: pd.DataFrame) -> None:
    data = _write(history, tmp_path / "history.parquet")
    config = _config(tmp_path, **NEVER)
    docs = []
    for i in range(2):
        out_json, out_png = tmp_path / f"r{i}.json", tmp_path / f"r{i}.png"
        result = _invoke(
            [str(data), "-c", str(config), *ARGS, "--json", str(out_json), "--plot", str(out_png)]
        )
        assert result.exit_code == 0, result.output
        assert "every 2 periods" in result.output
        assert "policy: performance never fired" in result.output
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert out_png.stat().st_size > 10_000
        docs.append(json.loads(out_json.read_text(encoding="utf-8")))

    doc = docs[0]
    assert doc["metric"] == "mae"
    names = [p["name"] for p in doc["policies"]]
    kinds = {p["name"]: p["kind"] for p in doc["policies"]}
    assert kinds["never"] == "never"
    assert [p["every"] for p in doc["policies"] if p["kind"] == "schedule"] == [1, 2, 3, 4, 6, 8]
    assert {"policy: performance", "drift alone", "max_age alone"} <= set(names)
    for p in doc["policies"]:
        assert set(p) >= {"name", "kind", "every", "runs", "deployed", "failed", "error"}
        assert isinstance(p["runs"], int)
        assert p["deployed"] + p["failed"] <= p["runs"]
        assert p["error"] > 0
        assert p["train_seconds"] >= 0
    by = {p["name"]: p for p in doc["policies"]}
    # 4 periods replayed: a run after each but the last (nothing left to serve).
    assert by["never"]["runs"] == 0
    assert by["every period"]["runs"] == 3
    assert by["every 2 periods"]["runs"] == 1
    assert by["max_age alone"]["runs"] >= 1
    assert by["policy: performance"]["runs"] == 0
    assert by["policy: performance"]["error"] == by["never"]["error"]
    # The distance to the frontier with its 90 % interval over resampled periods: a policy
    # that never fires is never's point, at distance 0 in every resample.
    for p in doc["policies"]:
        lo, hi = p["vs_frontier_90"]
        assert lo <= hi
    assert by["policy: performance"]["vs_frontier_90"] == [0.0, 0.0]
    assert by["policy: performance"]["vs_frontier_single_phase_90"] == [0.0, 0.0]
    # Every schedule at each of its phases (decisions after served periods 1, 2 and 3): its
    # own fields are phase 0's, `phase_mean` the mean over its phases.
    for p in doc["policies"]:
        if p["kind"] != "schedule":
            assert "phases" not in p
            continue
        phases = p["phases"]
        assert [q["phase"] for q in phases] == list(range(p["every"]))
        assert {k: phases[0][k] for k in ("runs", "error")} == {k: p[k] for k in ("runs", "error")}
        mean = p["phase_mean"]
        assert mean["runs"] == pytest.approx(sum(q["runs"] for q in phases) / p["every"])
        assert mean["error"] == pytest.approx(sum(q["error"] for q in phases) / p["every"])
    assert [q["runs"] for q in by["every 2 periods"]["phases"]] == [1, 2]
    assert [q["runs"] for q in by["every 4 periods"]["phases"]] == [0, 1, 1, 1]
    assert by["every 8 periods"]["phase_mean"]["runs"] == pytest.approx(3 / 8)
    assert "phase mean" in result.output
    assert "90 % interval" in result.output

    def stable(d: Any) -> Any:
        """The document without training seconds (wall time), at any depth."""
        if isinstance(d, dict):
            return {k: stable(v) for k, v in d.items() if k != "train_seconds"}
        if isinstance(d, list):
            return [stable(v) for v in d]
        return d

    assert stable(docs[0]) == stable(docs[1])


def test_no_labels_is_a_clear_error(tmp_path: Path, history: pd.DataFrame) -> None:
    data = _write(history.drop(columns=["bikers"]), tmp_path / "h.parquet")
    result = _invoke([str(data), "-c", str(_config(tmp_path)), *ARGS])
    assert result.exit_code == 2
    assert "no labels" in result.output
    assert "bikers" in result.output
    assert "Traceback" not in result.output


def test_no_timestamp_is_a_clear_error(tmp_path: Path, history: pd.DataFrame) -> None:
    data = _write(history.drop(columns=["ts"]), tmp_path / "h.parquet")
    result = _invoke([str(data), "-c", str(_config(tmp_path)), *ARGS])
    assert result.exit_code == 2
    assert "no timestamp column" in result.output
    assert "Traceback" not in result.output


def test_too_few_periods_is_a_clear_error(tmp_path: Path, history: pd.DataFrame) -> None:
    short = history[history["ts"] < history["ts"].min() + pd.Timedelta(days=11)]
    data = _write(short, tmp_path / "h.parquet")
    result = _invoke([str(data), "-c", str(_config(tmp_path)), "--every", "2D", "--skip", "5"])
    assert result.exit_code == 2
    assert "too few periods" in result.output
    assert "leaving 1 to replay" in result.output
    assert "Traceback" not in result.output
