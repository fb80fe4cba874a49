"""Metrics, the time-ordered holdout split, and the champion/challenger gate."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.base import clone

LOWER_IS_BETTER = frozenset({"mae", "rmse"})


def split_holdout(frame: pd.DataFrame, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The oldest rows to train on and the most recent `share` to evaluate on.

    `frame` must already be in time order (validate sorts it). At least one row goes to
    each side.
    """
    n_holdout = min(max(1, round(len(frame) * share)), len(frame) - 1)
    cut = len(frame) - n_holdout
    return frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)


def compared_rows(
    holdout: pd.DataFrame, ts_column: str | None, seen_until: Any
) -> tuple[pd.DataFrame, str | None]:
    """The holdout rows on which challenger and champion are compared, and a problem.

    The champion may have been refit on the start of this run's holdout (its training
    window overlaps this one): scored on those rows it looks better than it is, and the
    gate refused most challengers for that reason. So both models are compared on the rows
    newer than everything the champion was trained on. When there are none, the champion
    cannot be compared fairly (the problem says why) and the gate treats it so.
    """
    if ts_column is None or ts_column not in holdout.columns or seen_until is None:
        return holdout, None
    end = pd.Timestamp(seen_until)
    end = end.tz_localize("UTC") if end.tzinfo is None else end
    ts = pd.to_datetime(holdout[ts_column], utc=True)
    rows = holdout[(ts > end).to_numpy()]
    if rows.empty:
        return holdout, (
            f"it was trained on every holdout row (its training data ends {end.isoformat()}), "
            "so its holdout score would flatter it"
        )
    return rows, None


def as_informed_as_champion(
    challenger: Any,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    compared: pd.DataFrame,
    features: list[str],
    target: str,
) -> tuple[Any, int]:
    """The challenger's recipe refit on its training rows plus the holdout rows the champion
    was also trained on, and how many such rows there were.

    Compared only on the holdout rows newer than the champion's data (`compared_rows`), the
    challenger as fitted would still lack the older holdout rows the champion was refit on:
    with weekly runs on a 12-week window it was 1.4 weeks less informed, and the gate
    refused 6 of 44 weekly Bikeshare challengers that, deployed, were the better models.
    Refit on the same cutoff, both models have seen the same time span and are judged on
    rows neither saw.
    """
    seen = holdout.loc[holdout.index.difference(compared.index)]
    if seen.empty:
        return challenger, 0
    data = pd.concat([train, seen], ignore_index=True)
    return clone(challenger).fit(data[features], data[target]), len(seen)


def sklearn_scoring(metric: str, y: pd.Series | None = None) -> Any:
    """The scikit-learn scorer that ranks models as `metric` does (greater is better).

    For a binary target the positive class is the last label in sorted order, as in
    `classification_metrics`, so string labels work too.
    """
    classes: list[Any] = []
    if y is not None and metric in ("f1", "roc_auc"):
        classes = sorted(y.dropna().unique().tolist())
    if metric == "f1":
        if len(classes) == 2:
            return skm.make_scorer(skm.f1_score, pos_label=classes[-1], zero_division=0)
        return "f1_macro"
    if metric == "roc_auc":
        return "roc_auc" if len(classes) <= 2 else "roc_auc_ovr"
    return {
        "mae": "neg_mean_absolute_error",
        "rmse": "neg_root_mean_squared_error",
        "r2": "r2",
        "accuracy": "accuracy",
    }[metric]


@contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """Cap OpenMP/BLAS threads while fitting: oversubscribed OpenMP spins for seconds."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=threads):
        yield


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    return {
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "rmse": float(math.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "r2": float(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
    }


def classification_metrics(y_true: Any, y_pred: Any, proba: Any | None) -> dict[str, float]:
    labels = np.unique(y_true)
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1": float(
            skm.f1_score(
                y_true,
                y_pred,
                average="binary" if len(labels) == 2 else "macro",
                pos_label=labels[-1] if len(labels) == 2 else 1,
                zero_division=0,
            )
        ),
        "roc_auc": float("nan"),
    }
    if proba is not None and len(labels) >= 2:
        try:
            if proba.shape[1] == 2:
                out["roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
            else:
                out["roc_auc"] = float(skm.roc_auc_score(y_true, proba, multi_class="ovr"))
        except ValueError:  # a class of the model absent from this slice: AUC is undefined
            pass
    return out


def score_auc(y_true: Any, score: Any) -> tuple[float | None, str]:
    """ROC AUC of a binary classifier's positive-class probability (`columns.score`)
    against the labels, with the gate's convention: the positive class is the label that
    sorts last, as predict_proba[:, 1]. None, with why, where AUC is undefined: labels of
    one class only, or of more than two (a score is one class's probability)."""
    y = np.asarray(y_true)
    classes = np.unique(y)
    if len(classes) < 2:
        only = f" (all {classes.tolist()[0]!r})" if len(classes) else ""
        return None, (
            f"its {len(y)} labelled row(s) hold one class only{only}, and ROC AUC needs both"
        )
    if len(classes) > 2:
        return None, (
            f"its labels hold {len(classes)} classes, but columns.score is the positive "
            "class's probability of a binary classifier"
        )
    return float(skm.roc_auc_score(y == classes[-1], np.asarray(score, dtype=float))), ""


def score(estimator: Any, X: pd.DataFrame, y: pd.Series, task: str) -> dict[str, float]:
    """Every metric of the task for one model on one slice."""
    pred = estimator.predict(X)
    if task == "regression":
        return regression_metrics(y, pred)
    proba = estimator.predict_proba(X) if hasattr(estimator, "predict_proba") else None
    return classification_metrics(y, pred, proba)


@dataclass
class Decision:
    """The gate's verdict, recorded in the run folder, the registry and the mail."""

    deploy: bool
    reason: str
    metric: str
    margin: float
    challenger: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(**data)


def gate(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    *,
    metric: str,
    margin: float,
    champion_version: str | None = None,
    champion_problem: str | None = None,
) -> Decision:
    """Deploy only a challenger better than the champion by `margin` (relative), or when
    there is no champion to compare with."""

    def decision(deploy: bool, reason: str) -> Decision:
        return Decision(deploy, reason, metric, margin, challenger, champion, champion_version)

    new = challenger.get(metric, float("nan"))
    if math.isnan(new):
        return decision(False, f"the challenger's {metric} could not be computed on the holdout")
    if champion_version is None:
        return decision(True, "no model in production yet: the challenger is deployed")
    if champion is None or math.isnan(champion.get(metric, float("nan"))):
        why = champion_problem or f"its {metric} could not be computed"
        return decision(
            True, f"the champion (version {champion_version}) cannot be compared: {why}"
        )
    old = champion[metric]
    # A negative margin is a tolerance: the challenger was trained on newer data than the
    # champion (the final model even on the holdout), so on Bikeshare deploying unless it
    # is clearly worse beat demanding that it be better (see README, "Does retraining pay
    # off?"). At 0 a tie keeps the champion.
    if metric in LOWER_IS_BETTER:
        needed = old * (1 - margin)
        better = new <= needed if margin < 0 else new < needed
        relation = "lower"
    else:
        needed = old + margin * abs(old)
        better = new >= needed if margin < 0 else new > needed
        relation = "higher"
    # A registry version is a number ("v3"); a backtest names its champion in words.
    named = f"v{champion_version}" if champion_version.isdigit() else champion_version
    if better:
        return decision(
            True,
            f"challenger {metric} {new:.4g} beats champion {named} {old:.4g} "
            f"(needed {relation} than {needed:.4g}, margin {margin:.1%})",
        )
    return decision(
        False,
        f"challenger {metric} {new:.4g} does not beat champion {named} {old:.4g} "
        f"by the margin of {margin:.1%} (needed {relation} than {needed:.4g}); "
        "the champion stays in production",
    )
