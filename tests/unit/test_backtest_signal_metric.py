"""The backtest feeds the performance signal the metric the daemon follows: for a roc_auc
model that is accuracy (the daemon scores the predictions it was sent, which carry no
class probabilities), not the roc_auc the schedules are judged by; with `columns.score`
(the positive class's probability in the prediction log) it is roc_auc, from predict_proba."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _first_version() -> tuple[pd.DataFrame, History, Any, pd.DataFrame, Training]:
    """Six periods; version 1 fitted on the first two, period 1 its holdout."""
    frame = _history()
    starts = [frame["ts"][frame["_period"] == p].min() for p in range(6)]
    history = History("m", frame, starts, skip=2, label_delay=1)
    old = frame[frame["_period"] < 2]
    model = LogisticRegression().fit(old[["x"]], old["y"])
    holdout = frame[frame["_period"] == 1]
    first = Training(-1, True, challenger=model, final=model, features=["x"], holdout=holdout)
    return frame, history, model, holdout, first


def test_a_roc_auc_model_is_followed_by_accuracy_as_in_the_daemon(tmp_path: Path) -> None:
    cfg = ModelConfig(
        source=DirectorySourceConfig(path=tmp_path / "in", labels_path=tmp_path / "labels"),
        columns=ColumnsConfig(numeric=["x"], target="y", timestamp="ts", id="id"),
        retrain=RetrainConfig(task="classification", primary_metric="roc_auc"),
    )
    assert performance_metric(cfg) == "accuracy"
    frame, history, model, holdout, first = _first_version()
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


class BatchRecorder(Recorder):
    """Also keeps each period's production batch, as the policies see it."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[pd.DataFrame] = []

    def should_retrain(self, ctx: PeriodContext) -> str | None:
        self.batches.append(ctx.batch)
        return super().should_retrain(ctx)


def test_with_a_score_column_the_signal_follows_roc_auc_from_predict_proba(
    tmp_path: Path,
) -> None:
    cfg = ModelConfig(
        source=DirectorySourceConfig(path=tmp_path / "in", labels_path=tmp_path / "labels"),
        columns=ColumnsConfig(
            numeric=["x"], prediction="p", score="s", target="y", timestamp="ts", id="id"
        ),
        retrain=RetrainConfig(task="classification", primary_metric="roc_auc"),
    )
    assert performance_metric(cfg) == "roc_auc"
    frame, history, model, holdout, first = _first_version()
    recorder = BatchRecorder()

    replay_policy(recorder, Settings(models={"m": cfg}), history, {-1: first})

    def on(period: int) -> pd.DataFrame:
        return frame[frame["_period"] == period]

    def auc(rows: pd.DataFrame) -> float:
        # The positive class is the one predict_proba[:, 1] gives: "on_time" sorts last.
        assert list(model.classes_) == ["late", "on_time"]
        return float(roc_auc_score(rows["y"] == "on_time", model.predict_proba(rows[["x"]])[:, 1]))

    # The signal's baseline is the holdout roc_auc, each labelled period's value its roc_auc.
    assert [b for b, _ in recorder.seen] == pytest.approx([auc(holdout)] * 3, abs=1e-12)
    labelled = [seen for _, seen in recorder.seen if seen is not None]
    assert [p for p, _, _ in labelled] == [2, 3]
    for period, value, _ in labelled:
        assert value == pytest.approx(auc(on(period)), abs=1e-12)
        acc = accuracy_score(on(period)["y"], model.predict(on(period)[["x"]]))
        assert abs(value - acc) > 0.01  # not accuracy
    # Each batch carries the score column, as a production log with columns.score does.
    for period, batch in zip(range(2, 5), recorder.batches, strict=True):
        expected = model.predict_proba(on(period)[["x"]])[:, 1]
        np.testing.assert_allclose(batch["s"].to_numpy(), expected)
