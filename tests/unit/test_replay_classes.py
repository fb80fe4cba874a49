"""String class labels through bootstrap, replay, scoring and the performance signal
(before: `could not convert string to float: 'Up'`); with `columns.score` the signal
follows each period's ROC AUC of the logged probability of "Up" (the class that sorts
last) against the registry's holdout ROC AUC."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from watcher.config import dump_toml, load_config
from watcher.dev.replay import Replay
from watcher.metrics import Metrics
from watcher.model_quality import PerformanceTracker
from watcher.pipeline import ModelRuntime, Pipeline
from watcher.reference import load_reference
from watcher.retrain.bootstrap import bootstrap
from watcher.sources.directory import DirectorySource
from watcher.state import StateStore


def updown(weeks: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 24 * 7 * weeks
    x1, x2 = rng.normal(0, 1, n), rng.normal(0, 1, n)
    return pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=n, freq="h"),
            "x1": x1,
            "x2": x2,
            "c": rng.choice(["a", "b", "c"], n),
            "dir": np.where(x1 + 0.5 * x2 + rng.normal(0, 0.5, n) > 0, "Up", "Down"),
            "id": np.arange(n),
        }
    )


@pytest.mark.parametrize("score", [False, True], ids=["predictions", "with_score"])
def test_up_and_down_from_bootstrap_to_the_performance_signal(tmp_path: Path, score: bool) -> None:
    raw: dict[str, Any] = {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "registry": {"path": str(tmp_path / "registry")},
        "models": {
            "dir": {
                "source": {
                    "kind": "directory",
                    "path": str(tmp_path / "incoming"),
                    "labels_path": str(tmp_path / "labels"),
                    "settle_seconds": 0,
                },
                "columns": {
                    "numeric": ["x1", "x2"],
                    "categorical": ["c"],
                    "prediction": "pred",
                    "target": "dir",
                    "timestamp": "ts",
                    "id": "id",
                },
                "policy": {"triggers": ["drift", "performance"]},
                "retrain": {
                    "task": "classification",
                    "model_families": ["linear"],
                    "n_iter": 1,
                    "cv_splits": 2,
                    "min_rows": 100,
                },
            }
        },
    }
    if score:
        raw["models"]["dir"]["columns"]["score"] = "p_up"
        raw["models"]["dir"]["retrain"]["primary_metric"] = "roc_auc"
    path = tmp_path / "watcher.toml"
    path.write_text(dump_toml(raw), encoding="utf-8")
    settings = load_config(path)
    followed = "roc_auc" if score else "accuracy"
    if not score:
        assert settings.models["dir"].retrain.primary_metric == "accuracy"  # the task's default
    data = updown(7)
    info = bootstrap(settings, "dir", data, weeks=4)
    assert followed in info.metrics

    replay = Replay(settings, "dir", data)
    try:
        results = replay.run(skip=4, wait=False)
    finally:
        replay.close()
    assert len(results) == 3
    assert all(0.0 <= r.mae < 0.5 for r in results)  # the error rate of Up/Down
    served = pd.read_parquet(tmp_path / "incoming" / results[0].batch_file)
    assert set(served["pred"]) == {"Up", "Down"}
    files = [pd.read_parquet(tmp_path / "incoming" / r.batch_file) for r in results]
    if score:  # the probability of "Up", the class predict_proba[:, 1] gives
        assert all(f["p_up"].between(0, 1).all() for f in files)
        assert ((served["p_up"] > 0.5) == (served["pred"] == "Up")).all()
    else:
        assert "p_up" not in served

    # The daemon's steps on those files: scored (not rejected as text in a numeric
    # column), and the labels give the performance signal accuracy-based losses.
    store = StateStore(settings.daemon.state_dir / "state.db")
    try:
        cfg, metrics = settings.models["dir"], Metrics()
        rt = ModelRuntime(
            "dir",
            cfg,
            DirectorySource("dir", cfg.source, store),  # type: ignore[arg-type]
            load_reference("dir", cfg, settings),
            PerformanceTracker("dir", cfg, settings.daemon.state_dir, store, metrics),
        )
        store.set_reference_version("dir", rt.reference.version)
        pipeline = Pipeline(settings, store, metrics)
        asyncio.run(rt.source.poll())
        for ref in asyncio.run(rt.source.poll()):
            assert pipeline.process(rt, ref).status == "scored"
        assert pipeline.on_labels(rt) is None  # label files are read once they look settled
        verdict = pipeline.on_labels(rt)
        assert verdict is not None
        with store.transaction() as conn:
            periods = store.label_periods(conn, "dir", rt.reference.version)
        assert [p.metric for p in periods] == [followed] * 3
        assert all(p.loss == 1.0 - p.value for p in periods)
        if score:
            truth = data.set_index("id")["dir"]
            for period, f in zip(periods, files, strict=True):
                auc = roc_auc_score(truth.loc[f["id"]].to_numpy() == "Up", f["p_up"])
                assert period.value == pytest.approx(auc, abs=1e-12)
        perf = next(r for r in verdict.readings if r.signal == "performance")
        assert perf.numbers is not None
        assert perf.numbers["baseline"] == 1.0 - info.metrics[followed]  # the holdout level
    finally:
        store.close()
