"""`columns.score`: the positive class's probability in the prediction log, so the
performance signal of a roc_auc model follows roc_auc rather than accuracy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from performance_support import Loop, config, make_loop
from sklearn.metrics import roc_auc_score
from support import drop, frame

from watcher.config import (
    ColumnsConfig,
    DirectorySourceConfig,
    ModelConfig,
    QualityConfig,
    RetrainConfig,
    load_config,
)
from watcher.drift.quality import check_batch, profile_reference
from watcher.errors import BatchRejected, ConfigError
from watcher.metrics import Metrics
from watcher.model_quality import PerformanceTracker
from watcher.retrain.evaluation import score_auc
from watcher.signals import loss_of, performance_metric
from watcher.state import StateStore


def _model(tmp: Path, *, score: str | None = "s", **retrain: Any) -> ModelConfig:
    return ModelConfig(
        source=DirectorySourceConfig(path=tmp / "in", labels_path=tmp / "labels", settle_seconds=0),
        columns=ColumnsConfig(numeric=["x"], prediction="pred", score=score, target="y", id="id"),
        retrain=RetrainConfig(
            **({"task": "classification", "primary_metric": "roc_auc"} | retrain)
        ),
    )


# ---- which metric is followed -------------------------------------------------------------


def test_a_roc_auc_model_is_followed_by_roc_auc_only_with_a_score_column(tmp_path: Path) -> None:
    assert performance_metric(_model(tmp_path)) == "roc_auc"
    assert performance_metric(_model(tmp_path, score=None)) == "accuracy"
    assert performance_metric(_model(tmp_path, score=None, primary_metric="f1")) == "f1"


# ---- the configuration refuses a score that would not be read --------------------------------

MODEL = """
[models.m]
source = {{ kind = "directory", path = "in" }}
columns = {{ numeric = ["x"], prediction = "p", score = "{score}" }}
retrain = {{ {retrain} }}
"""


@pytest.mark.parametrize(
    ("retrain", "score", "message"),
    [
        (
            'task = "regression"',
            "s",
            "columns.score ('s') is a predicted probability of the positive class, for a "
            "binary classifier, but retrain.task is 'regression': remove columns.score, or "
            "set task = 'classification'",
        ),
        (
            'task = "classification", primary_metric = "accuracy"',
            "s",
            "columns.score ('s') is only read when retrain.primary_metric is 'roc_auc' (it is "
            "'accuracy'): remove columns.score, or set primary_metric = 'roc_auc'",
        ),
        (
            'task = "classification", primary_metric = "roc_auc"',
            "p",
            "column 'p' is both the prediction and the score",
        ),
    ],
)
def test_config_refuses_a_score_that_would_not_be_read(
    tmp_path: Path, retrain: str, score: str, message: str
) -> None:
    path = tmp_path / "watcher.toml"
    path.write_text(MODEL.format(retrain=retrain, score=score), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "models.m" in str(caught.value)
    assert message in str(caught.value)


def test_config_accepts_a_score_for_a_roc_auc_classifier(tmp_path: Path) -> None:
    path = tmp_path / "watcher.toml"
    retrain = 'task = "classification", primary_metric = "roc_auc"'
    path.write_text(MODEL.format(retrain=retrain, score="s"), encoding="utf-8")
    assert load_config(path).models["m"].columns.score == "s"


# ---- ROC AUC of a period ------------------------------------------------------------------


def test_score_auc_on_fixed_arrays() -> None:
    # By hand: the positives (0.35, 0.8) against the negatives (0.1, 0.4) win 3 of 4 pairs.
    assert score_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == (0.75, "")
    # The positive class is the label that sorts last, as predict_proba[:, 1]: "yes".
    y = np.array(["no", "yes", "no", "yes", "yes", "no", "no"])
    s = np.array([0.2, 0.9, 0.6, 0.4, 0.7, 0.1, 0.65])
    value, _ = score_auc(y, s)
    assert value == pytest.approx(roc_auc_score(y == "yes", s), abs=1e-12)
    # 3 positives x 4 negatives: 0.9 and 0.7 win all 4 pairs, 0.4 wins 2 (0.2, 0.1).
    assert value == pytest.approx(10 / 12)


def test_score_auc_is_undefined_for_one_class_or_more_than_two() -> None:
    value, why = score_auc(["yes"] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert value is None
    assert why == "its 5 labelled row(s) hold one class only (all 'yes'), and ROC AUC needs both"
    value, why = score_auc([0, 1, 2], [0.1, 0.5, 0.9])
    assert value is None
    assert "3 classes" in why


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[tuple[PerformanceTracker, StateStore, Path]]:
    cfg = _model(tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    store = StateStore(tmp_path / "state.db")
    yield PerformanceTracker("m", cfg, tmp_path / "state", store, Metrics()), store, labels
    store.close()


def test_a_labelled_period_is_scored_by_roc_auc_from_the_kept_scores(
    tracker: tuple[PerformanceTracker, StateStore, Path],
) -> None:
    perf, _, labels = tracker
    batch = pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "x": [0.0] * 4,
            "pred": [0, 0, 0, 1],  # accuracy would be 3/4 too: the rows below differ
            "s": [0.1, 0.4, 0.35, 0.8],
        }
    )
    perf.keep_predictions("b1", batch, "v1")
    pd.DataFrame({"id": [1, 2, 3, 4], "y": [0, 1, 1, 1]}).to_csv(labels / "week1.csv", index=False)
    assert perf.read_labels() is None  # seen once: read when unchanged at the next look
    read = perf.read_labels()
    assert read is not None
    [period] = read.periods
    # Positives 0.4, 0.35, 0.8 against the negative 0.1: every pair won. Accuracy: 2/4.
    assert (period.metric, period.value, period.rows) == ("roc_auc", 1.0, 4)
    assert period.loss == loss_of("roc_auc", 1.0) == 0.0
    assert read.metrics["accuracy"] == 0.5
    assert read.metrics["roc_auc"] == 1.0
    assert read.skipped == {}


def test_a_one_class_period_is_skipped_with_the_reason(
    tracker: tuple[PerformanceTracker, StateStore, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    perf, store, labels = tracker
    perf.keep_predictions(
        "b1", pd.DataFrame({"id": [1, 2, 3], "x": [0.0] * 3, "pred": [1] * 3, "s": [0.6] * 3})
    )
    pd.DataFrame({"id": [1, 2, 3], "y": [1, 1, 1]}).to_csv(labels / "all-ones.csv", index=False)
    perf.read_labels()
    with caplog.at_level("WARNING"):
        read = perf.read_labels()
    assert read is not None
    assert read.periods == []  # nothing for the signal ...
    assert read.skipped == {
        "all-ones.csv": "period all-ones.csv is left out of the performance signal: its 3 "
        "labelled row(s) hold one class only (all 1), and ROC AUC needs both"
    }
    assert read.skipped["all-ones.csv"] in caplog.text  # ... and the log says why
    with store.transaction() as conn:
        perf.record(conn, read)  # the file is read (marked), not retried every round
    assert perf.read_labels() is None


def test_predictions_kept_without_a_score_are_skipped_not_scored_as_accuracy(
    tracker: tuple[PerformanceTracker, StateStore, Path],
) -> None:
    perf, _, labels = tracker
    perf.keep_predictions("b1", pd.DataFrame({"id": [1, 2], "x": [0.0] * 2, "pred": [0, 1]}))
    pd.DataFrame({"id": [1, 2], "y": [0, 1]}).to_csv(labels / "old.csv", index=False)
    perf.read_labels()
    read = perf.read_labels()
    assert read is not None
    assert read.periods == []
    assert "kept without a score" in read.skipped["old.csv"]


# ---- a batch whose score is not a probability is set aside ---------------------------------


def _check(batch: pd.DataFrame) -> pd.DataFrame:
    cols = ColumnsConfig(numeric=["x"], prediction="pred", score="s")
    reference = pd.DataFrame({"x": [0.0, 1.0], "pred": ["no", "yes"], "s": [0.2, 0.7]})
    out, _ = check_batch(
        batch,
        profile_reference(reference, cols),
        cols,
        QualityConfig(min_rows=1),
        "b1",
        numeric_prediction=False,
    )
    return out


@pytest.mark.parametrize(
    ("scores", "check", "says"),
    [
        ([0.2, 1.5, -0.1], "score_out_of_range", "2 value(s) outside [0, 1]; it must"),
        ([0.2, float("inf"), 0.3], "score_out_of_range", "1 value(s) outside [0, 1]"),
        (["0.2", "high", "0.1"], "type_change", "holds a mix of numbers and text"),
    ],
)
def test_a_batch_with_a_score_that_is_not_a_probability_is_rejected(
    scores: list[Any], check: str, says: str
) -> None:
    batch = pd.DataFrame({"x": [0.1, 0.2, 0.3], "pred": ["no", "yes", "no"], "s": scores})
    with pytest.raises(BatchRejected) as caught:
        _check(batch)
    assert caught.value.check == check
    assert says in caught.value.message
    assert "'s'" in caught.value.message


def test_a_batch_without_its_score_column_is_rejected_and_a_good_one_passes() -> None:
    batch = pd.DataFrame({"x": [0.1, 0.2], "pred": ["no", "yes"]})
    with pytest.raises(BatchRejected) as caught:
        _check(batch)
    assert caught.value.check == "missing_columns"
    assert "['s']" in caught.value.message
    good = _check(batch.assign(s=["0.25", None]))  # text numbers and a missing score are fine
    assert good["s"].tolist()[0] == 0.25
    assert np.isnan(good["s"].tolist()[1])


# ---- the daemon's performance signal on ROC AUC ---------------------------------------------


def _served(n: int, seed: int, *, informative: bool, start_id: int) -> pd.DataFrame:
    """A classifier's batch: its score is the probability sigmoid(z) of "yes"; the label
    follows z (ROC AUC about 0.80) or, after the concept changed, ignores it (about 0.5)."""
    df = frame(n, seed=seed).drop(columns=["p"])
    rng = np.random.default_rng(seed + 1000)
    z = df["a"] + (df["b"] - 10) / 3
    df["s"] = 1 / (1 + np.exp(-z))
    df["p"] = np.where(df["s"] > 0.5, "yes", "no")
    truth = 1 / (1 + np.exp(-z)) if informative else np.full(n, 0.5)
    df["y"] = np.where(rng.uniform(size=n) < truth, "yes", "no")
    df["id"] = np.arange(start_id, start_id + n)
    return df


HOLDOUT_AUC = 0.80  # roc_auc of _served(informative=True) on 20,000 rows: 0.8018


def _classifier(tmp: Path) -> Path:
    reference = _served(800, 1, informative=True, start_id=0).drop(columns=["id", "y"])
    columns = {
        "numeric": ["a", "b", "température", "wind speed"],
        "categorical": ["c"],
        "prediction": "p",
        "score": "s",
        "target": "y",
        "id": "id",
    }
    # A loss of 1 - AUC = 0.20 moves by about 15 % of itself from one period of 400 rows
    # to the next: 25 % tolerated keeps a steady model quiet.
    return config(
        tmp,
        reference_frame=reference,
        model={
            "columns": columns,
            "retrain": {"task": "classification", "primary_metric": "roc_auc"},
        },
        triggers=["performance"],
        performance={"tolerance": 0.25},
    )


@pytest.fixture
def classifier(tmp_path: Path) -> Iterator[Loop]:
    loop = make_loop(_classifier(tmp_path))
    # The gate's holdout figure, as a registered version records it.
    loop.rt.reference = replace(loop.rt.reference, metrics={"roc_auc": HOLDOUT_AUC})
    yield loop
    loop.store.close()


def _period(loop: Loop, i: int, *, informative: bool = True, rows: int = 400) -> pd.DataFrame:
    data = _served(rows, 100 + i, informative=informative, start_id=i * 10_000)
    drop(loop.tmp / "incoming", f"b{i:02d}.parquet", data.drop(columns=["y"]))
    asyncio.run(loop.rt.source.poll())
    [ref] = asyncio.run(loop.rt.source.poll())
    outcome = loop.pipeline.process(loop.rt, ref)
    assert outcome.status == "scored", outcome.reason
    drop(loop.tmp / "labels", f"labels-{i:02d}.csv", data[["id", "y"]])
    assert loop.pipeline.on_labels(loop.rt) is None
    loop.pipeline.on_labels(loop.rt)
    return data


def test_a_step_drop_in_roc_auc_fires_the_performance_signal_and_a_steady_one_does_not(
    classifier: Loop,
) -> None:
    served = [_period(classifier, i) for i in range(6)]
    assert [o for _, o, _ in classifier.decisions()] == ["no_trigger"] * 6
    with classifier.store.transaction() as conn:
        periods = classifier.store.label_periods(conn, "m", classifier.rt.reference.version)
        steady = classifier.pipeline.performance_reading(conn, classifier.rt)
    # Each period's value is the ROC AUC of its labels and scores, as sklearn has it.
    for period, data in zip(periods, served, strict=True):
        assert period.metric == "roc_auc"
        assert period.value == pytest.approx(roc_auc_score(data["y"] == "yes", data["s"]))
    assert steady is not None
    assert not steady.fired
    # The baseline is the gate's holdout roc_auc, as a loss.
    assert steady.numbers is not None
    assert steady.numbers["baseline"] == pytest.approx(1 - HOLDOUT_AUC)

    _period(classifier, 6, informative=False)  # the labels stop following the score
    point, outcome, signal = classifier.decisions()[-1]
    assert (point, outcome, signal) == ("labels:labels-06.csv", "triggered", "performance")
    [trigger] = classifier.triggers()
    reading = trigger["payload"]["conf"]["signal"]
    assert reading["numbers"]["latest"] > 0.35  # 1 - AUC: 0.44 here, 0.5 in the long run


def test_a_batch_with_a_score_outside_0_1_is_set_aside_and_counted(classifier: Loop) -> None:
    data = _served(400, 7, informative=True, start_id=0)
    data.loc[:4, "s"] = 7.5  # a logit written where the probability belongs
    drop(classifier.tmp / "incoming", "bad.parquet", data.drop(columns=["y"]))
    asyncio.run(classifier.rt.source.poll())
    [ref] = asyncio.run(classifier.rt.source.poll())
    outcome = classifier.pipeline.process(classifier.rt, ref)
    assert outcome.status == "rejected"
    assert outcome.reason is not None
    assert "score column 's' has 5 value(s) outside [0, 1]" in outcome.reason
    assert "7.5" not in outcome.reason  # no value of the file is echoed
    assert (classifier.tmp / "incoming" / "quarantine" / "bad.parquet").exists()
    assert (
        classifier.metrics.registry.get_sample_value(
            "watcher_batches_rejected_total", {"model": "m", "reason": "score_out_of_range"}
        )
        == 1.0
    )
    _period(classifier, 1)  # the next batch is scored as usual
