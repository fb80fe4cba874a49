"""The backtest feeds the performance signal the metric the daemon follows: for a roc_auc
model that is accuracy (the daemon scores the predictions it was sent, which carry no
class probabilities), not the roc_auc the schedules are judged by."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score

from watcher.backtest import PeriodContext, Trigger, replay_policy
from watcher.backtest_history import History, Training
from watcher.config import (
    ColumnsConfig,
    DirectorySourceConfig,
    ModelConfig,
    RetrainConfig,
    Settings,
)
from watcher.signals import performance_metric


class Recorder(Trigger):
    """Never retrains; keeps what a policy is shown after each period."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, tuple[int, float, int] | None]] = []

    def should_retrain(self, ctx: PeriodContext) -> str | None:
        self.seen.append((ctx.served.baseline, ctx.labelled))
        return None


def _history(n: int = 6, rows: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=n * rows)
    # The late share moves period to period while the ranking stays: accuracy and
    # roc_auc part ways.
    shift = np.repeat(np.linspace(-1.0, 1.5, n), rows)
    y = np.where(x + shift + rng.normal(scale=1.0, size=x.size) > 0.5, "late", "on_time")
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(x.size), unit="h")
    return pd.DataFrame({"ts": ts, "x": x, "y": y, "_period": np.repeat(np.arange(n), rows)})


def test_a_roc_auc_model_is_followed_by_accuracy_as_in_the_daemon(tmp_path: Path) -> None:
    cfg = ModelConfig(
        source=DirectorySourceConfig(path=tmp_path / "in", labels_path=tmp_path / "labels"),
        columns=ColumnsConfig(numeric=["x"], target="y", timestamp="ts", id="id"),
        retrain=RetrainConfig(task="classification", primary_metric="roc_auc"),
    )
    assert performance_metric(cfg) == "accuracy"
    frame = _history()
    starts = [frame["ts"][frame["_period"] == p].min() for p in range(6)]
    history = History("m", frame, starts, skip=2, label_delay=1)
    old = frame[frame["_period"] < 2]
    model = LogisticRegression().fit(old[["x"]], old["y"])
    holdout = frame[frame["_period"] == 1]
    first = Training(-1, True, challenger=model, final=model, features=["x"], holdout=holdout)
    recorder = Recorder()

    result = replay_policy(recorder, Settings(models={"m": cfg}), history, {-1: first})

    def on(period: int) -> pd.DataFrame:
        return frame[frame["_period"] == period]

    # Judged by roc_auc, period by period ...
    late = list(model.classes_).index("late")
    for period, value in zip(range(2, 6), result.period_errors, strict=True):
        rows = on(period)
        auc = roc_auc_score(rows["y"] == "late", model.predict_proba(rows[["x"]])[:, late])
        assert value == pytest.approx(auc, abs=1e-12)
    # ... but the signal saw accuracy: its baseline on the holdout, then each labelled period.
    acc_holdout = accuracy_score(holdout["y"], model.predict(holdout[["x"]]))
    assert [b for b, _ in recorder.seen] == pytest.approx([acc_holdout] * 3, abs=1e-12)
    labelled = [seen for _, seen in recorder.seen if seen is not None]
    assert [p for p, _, _ in labelled] == [2, 3]  # one period late; none after the last
    for period, value, rows in labelled:
        assert rows == len(on(period))
        acc = accuracy_score(on(period)["y"], model.predict(on(period)[["x"]]))
        assert value == pytest.approx(acc, abs=1e-12)
        # the two metrics differ here, so the check above can tell them apart
        assert (
            abs(
                acc
                - roc_auc_score(
                    on(period)["y"] == "late", model.predict_proba(on(period)[["x"]])[:, late]
                )
            )
            > 0.01
        )
