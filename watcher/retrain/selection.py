"""Feature selection over input columns: a correlation filter, then one configured method.

Selection works on input columns (what the daemon scores and the registry records), not
on encoded ones: scores of a categorical column's one-hot outputs are added up (importance)
or the best is taken (univariate).

Methods: `univariate` (F-test), `importance` (random-forest impurity importance),
`forward` / `backward` (greedy, by cross-validated score over a time-ordered split), `none`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.feature_selection import f_classif, f_regression
from sklearn.model_selection import TimeSeriesSplit, cross_val_score

from watcher.config import RetrainConfig
from watcher.retrain.evaluation import sklearn_scoring
from watcher.retrain.features import build_preprocessor, output_to_input

log = logging.getLogger(__name__)

# Without max_features, `importance` keeps features carrying at least this share of the
# total importance, and `univariate` those whose F-test p-value is below `_P_VALUE`.
_MIN_IMPORTANCE_SHARE = 0.01
_P_VALUE = 0.05
# Greedy selection stops when a step changes the cross-validated score by less than this
# (relative to its magnitude).
_TOLERANCE = 0.002


@dataclass
class SelectionResult:
    """The chosen input features, with each one's score and why others were dropped."""

    features: list[str]
    method: str
    scores: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelectionResult:
        return cls(**data)


def correlation_filter(
    X: pd.DataFrame, y: pd.Series, numeric: list[str], threshold: float
) -> dict[str, str]:
    """Numeric features to drop because another one carries the same information.

    Of a pair correlated above `threshold` (absolute Pearson), the one less correlated with
    the target (a numeric target; else the later-listed one) goes.
    """
    if len(numeric) < 2:
        return {}
    num = X[numeric].apply(pd.to_numeric, errors="coerce")
    corr = num.corr().abs()
    target_corr: pd.Series | None = None
    if pd.api.types.is_numeric_dtype(y):
        target_corr = num.corrwith(y.astype(float)).abs().fillna(0.0)
    dropped: dict[str, str] = {}
    for i, a in enumerate(numeric):
        for b in numeric[i + 1 :]:
            if a in dropped or b in dropped:
                continue
            value = corr.loc[a, b]
            if np.isnan(value) or value <= threshold:
                continue
            loser, keeper = (b, a)
            if target_corr is not None and target_corr[b] > target_corr[a]:
                loser, keeper = (a, b)
            dropped[loser] = f"correlated with {keeper} (|r| = {value:.3f} > {threshold})"
    return dropped


def select_features(
    X: pd.DataFrame,
    y: pd.Series,
    numeric: list[str],
    categorical: list[str],
    cfg: RetrainConfig,
) -> SelectionResult:
    """Run the correlation filter and the configured method; at least one feature is kept.

    With `selection = "none"` every usable feature is kept, the correlation filter
    included: it dropped `atemp` (|r| > 0.95 with `temp`) from the Bikeshare model, which
    then lost 0.04 MAE weekly to a plain default model fitted on every feature
    (`benchmarks/pipeline_gap.py`); trees do not need collinear features removed.

    The caller caps BLAS/OpenMP threads (`steps.select` runs under ``retrain.threads``)."""
    method = cfg.selection
    dropped: dict[str, str] = {}
    if method != "none":
        dropped = correlation_filter(X, y, numeric, cfg.correlation_threshold)
    num = [c for c in numeric if c not in dropped]
    cat = list(categorical)
    candidates = [*num, *cat]
    scores: dict[str, float] = {}
    if method == "none" or len(candidates) <= 1:
        chosen = candidates
    elif method in ("univariate", "importance"):
        scores = _ranked_scores(X, y, num, cat, cfg)
        chosen = _keep_by_score(scores, cfg, method)
    else:
        chosen, scores = _greedy(X, y, num, cat, cfg, forward=method == "forward")
    for col in candidates:
        if col not in chosen:
            dropped[col] = f"not selected by {method}" + (
                f" (score {scores[col]:.4g})" if col in scores else ""
            )
    ordered = [c for c in candidates if c in chosen]
    log.info("selected %d of %d features by %s: %s", len(ordered), len(candidates), method, ordered)
    return SelectionResult(ordered, method, {k: float(v) for k, v in scores.items()}, dropped)


def _ranked_scores(
    X: pd.DataFrame, y: pd.Series, num: list[str], cat: list[str], cfg: RetrainConfig
) -> dict[str, float]:
    prep = build_preprocessor(cfg, num, cat)
    Z = prep.fit_transform(X[[*num, *cat]], y)
    inputs = output_to_input(list(prep.get_feature_names_out()), num, cat)
    scores: dict[str, float] = dict.fromkeys([*num, *cat], 0.0)
    if cfg.selection == "importance":
        forest_cls = RandomForestRegressor if cfg.task == "regression" else RandomForestClassifier
        forest = forest_cls(n_estimators=100, random_state=cfg.seed, n_jobs=1, min_samples_leaf=2)
        forest.fit(Z, y)
        for col, imp in zip(inputs, forest.feature_importances_, strict=True):
            scores[col] += float(imp)
    else:
        test = f_regression if cfg.task == "regression" else f_classif
        with np.errstate(divide="ignore", invalid="ignore"):
            _, p_values = test(Z, y)
        for col, p in zip(inputs, p_values, strict=True):
            # Score = 1 - p of the best output column, so higher is better like importance.
            value = 0.0 if np.isnan(p) else 1.0 - float(p)
            scores[col] = max(scores[col], value)
    return scores


def _keep_by_score(scores: dict[str, float], cfg: RetrainConfig, method: str) -> list[str]:
    ranked = sorted(scores, key=lambda c: scores[c], reverse=True)
    if cfg.max_features is not None:
        return ranked[: cfg.max_features]
    if method == "importance":
        total = sum(scores.values()) or 1.0
        kept = [c for c in ranked if scores[c] / total >= _MIN_IMPORTANCE_SHARE]
    else:
        kept = [c for c in ranked if scores[c] >= 1.0 - _P_VALUE]
    return kept or ranked[:1]


def _greedy(
    X: pd.DataFrame,
    y: pd.Series,
    num: list[str],
    cat: list[str],
    cfg: RetrainConfig,
    *,
    forward: bool,
) -> tuple[list[str], dict[str, float]]:
    """Forward: add the feature that helps most while it helps. Backward: remove the one
    whose absence hurts least while it does not hurt."""
    from watcher.retrain.tuning import make_pipeline  # tuning imports this module's users

    scoring = sklearn_scoring(cfg.primary_metric, y)
    cv = TimeSeriesSplit(n_splits=min(cfg.cv_splits, max(2, len(X) // 20)))
    family = cfg.model_families[0]
    limit = cfg.max_features

    def cv_score(cols: list[str]) -> float:
        pipe = make_pipeline(
            cfg, [c for c in num if c in cols], [c for c in cat if c in cols], family
        )
        return float(np.mean(cross_val_score(pipe, X[cols], y, scoring=scoring, cv=cv)))

    candidates = [*num, *cat]
    scores: dict[str, float] = {}
    if forward:
        chosen: list[str] = []
        current = -np.inf
        while len(chosen) < len(candidates) and (limit is None or len(chosen) < limit):
            trials = {c: cv_score([*chosen, c]) for c in candidates if c not in chosen}
            best = max(trials, key=lambda c: trials[c])
            if chosen and trials[best] - current <= _TOLERANCE * abs(current):
                break
            scores[best] = trials[best]
            chosen.append(best)
            current = trials[best]
        return chosen, scores

    chosen = list(candidates)
    current = cv_score(chosen)
    while len(chosen) > 1:
        trials = {c: cv_score([x for x in chosen if x != c]) for c in chosen}
        weakest = max(trials, key=lambda c: trials[c])
        must_shrink = limit is not None and len(chosen) > limit
        if not must_shrink and trials[weakest] < current - _TOLERANCE * abs(current):
            break
        scores[weakest] = trials[weakest]
        chosen.remove(weakest)
        current = trials[weakest]
    return chosen, scores
