"""The production model's performance once labels arrive a period later."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from watcher.config import ColumnsConfig, DirectorySourceConfig, ModelConfig
from watcher.metrics import Metrics
from watcher.model_quality import PerformanceTracker
from watcher.state import StateStore


@pytest.fixture
def tracker(tmp_path: Path) -> tuple[PerformanceTracker, Metrics, StateStore, Path]:
    labels = tmp_path / "labels"
    labels.mkdir()
    cfg = ModelConfig(
        source=DirectorySourceConfig(path=tmp_path / "in", labels_path=labels, settle_seconds=0),
        columns=ColumnsConfig(numeric=["x"], prediction="pred", target="y", id="id"),
    )
    store = StateStore(tmp_path / "state.db")
    metrics = Metrics()
    yield PerformanceTracker("m", cfg, tmp_path / "state", store, metrics), metrics, store, labels
    store.close()


def test_labels_joined_with_kept_predictions(
    tracker: tuple[PerformanceTracker, Metrics, StateStore, Path],
) -> None:
    perf, metrics, _, labels = tracker
    batch = pd.DataFrame({"id": [1, 2, 3, 4], "x": [0.0] * 4, "pred": [10.0, 20.0, 30.0, 40.0]})
    perf.keep_predictions("b1.parquet", batch)
    assert perf.check_labels() is None  # no labels yet
    pd.DataFrame({"id": [1, 2, 3, 4, 99], "y": [12.0, 18.0, 30.0, 44.0, 5.0]}).to_csv(
        labels / "week1.csv", index=False
    )
    assert perf.check_labels() is None  # seen once: read when unchanged at the next look
    result = perf.check_labels()
    assert result is not None
    err = np.array([-2.0, 2.0, 0.0, -4.0])  # id 99 has no prediction: not counted
    assert result["mae"] == pytest.approx(2.0)
    assert result["rmse"] == pytest.approx(float(np.sqrt((err**2).mean())))
    assert metrics.registry.get_sample_value(
        "watcher_model_performance", {"model": "m", "metric": "mae"}
    ) == pytest.approx(2.0)
    # A label file is read once.
    assert perf.check_labels() is None


def test_label_file_without_the_target_is_ignored(
    tracker: tuple[PerformanceTracker, Metrics, StateStore, Path],
) -> None:
    perf, metrics, _, labels = tracker
    perf.keep_predictions("b1", pd.DataFrame({"id": [1], "x": [0.0], "pred": [1.0]}))
    pd.DataFrame({"id": [1], "label": [1.0]}).to_csv(labels / "wrong.csv", index=False)
    assert perf.check_labels() is None
    assert perf.check_labels() is None
    assert (
        metrics.registry.get_sample_value(
            "watcher_model_performance", {"model": "m", "metric": "mae"}
        )
        is None
    )
