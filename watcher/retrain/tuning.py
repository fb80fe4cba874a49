"""Hyperparameter search over the configured model families, time-ordered and time-boxed.

Each family is searched with GridSearchCV or RandomizedSearchCV over a `TimeSeriesSplit`
(rows must be in time order), scored by the primary metric, seeded. scikit-learn's searches
have no time limit, so the budget is enforced before each search: one fit is timed, and
the number of candidates is cut so that the search fits in the family's share of the
remaining budget. The best family's refitted pipeline is the challenger.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import (
    GridSearchCV,
    ParameterGrid,
    ParameterSampler,
    TimeSeriesSplit,
)
from sklearn.pipeline import Pipeline

from watcher.config import RetrainConfig
from watcher.retrain.evaluation import sklearn_scoring
from watcher.retrain.features import build_preprocessor

log = logging.getLogger(__name__)

# Random search draws from these lists; grid search uses the smaller `_GRIDS`.
_SPACES: dict[str, dict[str, list[Any]]] = {
    "hist_gradient_boosting": {
        "learning_rate": [0.03, 0.05, 0.1, 0.2],
        "max_iter": [100, 200, 400],
        "max_leaf_nodes": [15, 31, 63],
        "min_samples_leaf": [5, 10, 20, 40],
        "l2_regularization": [0.0, 0.1, 1.0],
    },
    "random_forest": {
        "n_estimators": [100, 200],
        "max_depth": [None, 8, 16],
        "min_samples_leaf": [1, 3, 5],
        "max_features": [1.0, 0.5, "sqrt"],
    },
    "linear": {"alpha": [0.01, 0.1, 1.0, 10.0, 100.0]},
    "linear_classification": {"C": [0.01, 0.1, 1.0, 10.0, 100.0]},
}
_GRIDS: dict[str, dict[str, list[Any]]] = {
    "hist_gradient_boosting": {"learning_rate": [0.05, 0.1], "max_leaf_nodes": [15, 31]},
    "random_forest": {"max_depth": [None, 12], "min_samples_leaf": [1, 5]},
    "linear": {"alpha": [0.1, 1.0, 10.0]},
    "linear_classification": {"C": [0.1, 1.0, 10.0]},
}


def estimator_for(family: str, task: str, seed: int) -> Any:
    """The unfitted estimator of a family, with defaults that keep it deterministic."""
    regression = task == "regression"
    if family == "hist_gradient_boosting":
        cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        # The estimator's own defaults, early stopping included ("auto": on above 10,000
        # rows, on a validation slice drawn with `seed`, so a run is still reproducible).
        # Switched off, the weekly flights model (up to 16,000 rows) lost 0.0015 ROC AUC
        # to a plain default HistGradientBoosting (`benchmarks/pipeline_gap.py`).
        return cls(random_state=seed)
    if family == "random_forest":
        cls_rf = RandomForestRegressor if regression else RandomForestClassifier
        return cls_rf(n_estimators=100, random_state=seed, n_jobs=1)
    if family == "linear":
        return Ridge() if regression else LogisticRegression(max_iter=2000)
    raise ValueError(f"unknown model family {family!r}")


def _space_key(family: str, task: str) -> str:
    return "linear_classification" if family == "linear" and task != "regression" else family


def make_pipeline(
    cfg: RetrainConfig,
    numeric: list[str],
    categorical: list[str],
    family: str,
    params: dict[str, Any] | None = None,
) -> Pipeline:
    """Preprocessing + estimator for these input columns; `params` without the prefix."""
    est = estimator_for(family, cfg.task, cfg.seed)
    if params:
        est.set_params(**params)
    return Pipeline([("prep", build_preprocessor(cfg, numeric, categorical)), ("model", est)])


@dataclass
class SearchLog:
    family: str
    candidates: int
    cv_score: float
    best_params: dict[str, Any]
    seconds: float
    note: str = ""


@dataclass
class TuneResult:
    """The refitted best pipeline and how it was found."""

    estimator: Pipeline
    family: str
    params: dict[str, Any]
    cv_score: float  # in scikit-learn's orientation: greater is better
    scoring: str
    searches: list[SearchLog] = field(default_factory=list)
    seconds: float = 0.0


def tune(
    X: pd.DataFrame,
    y: pd.Series,
    numeric: list[str],
    categorical: list[str],
    cfg: RetrainConfig,
) -> TuneResult:
    """Search every configured family within the time budget; return the best, refitted.

    The caller caps BLAS/OpenMP threads (`steps.train` runs under ``retrain.threads``)."""
    started = time.monotonic()
    scoring = sklearn_scoring(cfg.primary_metric, y)
    splits = min(cfg.cv_splits, max(2, len(X) // 20))
    cv = TimeSeriesSplit(n_splits=splits)
    searches: list[SearchLog] = []
    best: tuple[float, Any, str, dict[str, Any]] | None = None
    families = list(dict.fromkeys(cfg.model_families))

    for i, family in enumerate(families):
        remaining = cfg.time_budget_seconds - (time.monotonic() - started)
        if remaining <= 0 and best is not None:
            searches.append(SearchLog(family, 0, float("nan"), {}, 0.0, "skipped: time budget"))
            continue
        share = max(remaining, 0.0) / (len(families) - i)
        t0 = time.monotonic()
        pipe = make_pipeline(cfg, numeric, categorical, family)
        if len(families) == 1 and len(_candidates(pipe, family, cfg)) == 1:
            # Nothing to choose between (n_iter = 1: the defaults): cross-validation would
            # only cost fits, so the one candidate is fitted directly.
            pipe.fit(X, y)
            elapsed = round(time.monotonic() - t0, 2)
            searches.append(SearchLog(family, 1, float("nan"), {}, elapsed, "defaults, no search"))
            best = (float("nan"), pipe, family, {})
            continue
        search, note = _search(pipe, family, cfg, scoring, cv, share, X, y)
        search.fit(X, y)
        score_ = float(search.best_score_)
        params = {k.removeprefix("model__"): v for k, v in search.best_params_.items()}
        elapsed = time.monotonic() - t0
        n = len(search.cv_results_["params"])
        searches.append(SearchLog(family, n, score_, params, round(elapsed, 2), note))
        log.info(
            "searched %s: %d candidates, cv %s = %.4g in %.1fs", family, n, scoring, score_, elapsed
        )
        if best is None or (not np.isnan(score_) and (np.isnan(best[0]) or score_ > best[0])):
            best = (score_, search.best_estimator_, family, params)

    assert best is not None  # at least one family is always searched
    return TuneResult(
        estimator=best[1],
        family=best[2],
        params=best[3],
        cv_score=best[0],
        scoring=scoring if isinstance(scoring, str) else cfg.primary_metric,
        searches=searches,
        seconds=round(time.monotonic() - started, 2),
    )


def _search(
    pipe: Pipeline,
    family: str,
    cfg: RetrainConfig,
    scoring: Any,
    cv: TimeSeriesSplit,
    budget: float,
    X: pd.DataFrame,
    y: pd.Series,
) -> tuple[GridSearchCV, str]:
    candidates = _candidates(pipe, family, cfg)
    wanted = len(candidates)
    # Time one fit on the largest training fold to size the search to the budget.
    train_idx, _ = list(cv.split(X))[-1]
    t0 = time.monotonic()
    clone(pipe).fit(X.iloc[train_idx], y.iloc[train_idx])
    per_candidate = (time.monotonic() - t0) * cv.get_n_splits() * 1.1
    affordable = max(1, int(budget / per_candidate)) if per_candidate > 0 else wanted
    note = ""
    if affordable < wanted:
        note = f"time budget allowed {affordable} of {wanted} candidates"
        log.info("%s: %s", family, note)
    # Explicit candidates, the estimator's defaults first: a budget cut keeps them, and
    # the search can only pick something else when it scores better in cross-validation.
    grid = [{f"model__{k}": [v] for k, v in c.items()} for c in candidates[:affordable]]
    return GridSearchCV(pipe, grid, scoring=scoring, cv=cv, n_jobs=1, refit=True), note


def _candidates(pipe: Pipeline, family: str, cfg: RetrainConfig) -> list[dict[str, Any]]:
    """The estimator's defaults, then the grid or `n_iter - 1` seeded draws from the space.

    Tuned on a few hundred rows a random draw can lose to the defaults on the next period
    (measured on Bikeshare: a default HistGradientBoostingRegressor retrained weekly beat
    the tuned pipeline), so the defaults are always one of the candidates.
    """
    key = _space_key(family, cfg.task)
    space = (_GRIDS if cfg.search == "grid" else _SPACES)[key]
    defaults = pipe.named_steps["model"].get_params()

    def is_default(c: dict[str, Any]) -> bool:
        return all(defaults.get(k) == v for k, v in c.items())

    if cfg.search == "grid":
        drawn = list(ParameterGrid(space))
    else:
        size = len(ParameterGrid(space))
        drawn = list(ParameterSampler(space, n_iter=min(cfg.n_iter, size), random_state=cfg.seed))
    rest = [c for c in drawn if not is_default(c)]
    if cfg.search == "random":
        rest = rest[: max(cfg.n_iter - 1, 0)]
    return [{}, *rest]
