"""Validation: can this data train a model? The usable rows and features, or a clear no."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from watcher.config import ColumnsConfig, RetrainConfig
from watcher.errors import TrainingDataError
from watcher.retrain.data import timestamps


@dataclass
class ValidationReport:
    """Outcome of `validate`: the usable rows and features, and what was dropped and why."""

    rows_in: int
    rows_labelled: int
    label_coverage: float
    numeric: list[str]
    categorical: list[str]
    dropped_features: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        return cls(**data)


def validate(
    frame: pd.DataFrame, columns: ColumnsConfig, cfg: RetrainConfig, *, model: str = "model"
) -> tuple[pd.DataFrame, ValidationReport]:
    """Check the data can train a model; return the labelled rows, sorted by time.

    Raises TrainingDataError naming the problem (no labels, too few rows, missing
    columns, a non-numeric numeric column...). Constant and empty features are dropped
    with a warning rather than failing the run.
    """
    target = columns.target
    if target is None:
        raise TrainingDataError(f"model {model}: no target column configured (columns.target)")
    if frame.empty:
        raise TrainingDataError(
            f"model {model}: no training data was found for the window",
            hint="check the source folder (processed/ batches), the label files and the window",
        )
    missing = [c for c in columns.features if c not in frame.columns]
    if missing:
        raise TrainingDataError(
            f"model {model}: the training data lacks configured feature column(s) {missing}",
            hint="the batches and the base training data must hold every configured feature",
        )
    if target not in frame.columns:
        raise TrainingDataError(
            f"model {model}: no labels: the target column {target!r} is absent",
            hint="deliver label files (id + target) to source.labels_path",
        )

    data = frame.replace([np.inf, -np.inf], np.nan)
    warnings: list[str] = []
    if columns.id and columns.id in data.columns:
        dupes = int(data[columns.id].duplicated(keep="last").sum())
        if dupes:
            warnings.append(f"{dupes} rows repeat an id; the last one of each was kept")
            data = data.drop_duplicates(subset=columns.id, keep="last")

    data[target] = _target_values(data[target], cfg, model, target)
    rows_in = len(data)
    labelled = data[data[target].notna()].copy()
    coverage = len(labelled) / rows_in if rows_in else 0.0
    if not len(labelled):
        raise TrainingDataError(
            f"model {model}: no labels: none of the {rows_in} rows has a value in {target!r}",
            hint="labels arrive as files keyed by id in source.labels_path; wait for them or "
            "add base training data",
        )
    if coverage < cfg.min_label_coverage:
        raise TrainingDataError(
            f"model {model}: only {coverage:.0%} of the {rows_in} rows have a label "
            f"(min_label_coverage is {cfg.min_label_coverage:.0%})",
            hint="wait until more labels have arrived, or lower retrain.min_label_coverage",
        )
    if len(labelled) < cfg.min_rows:
        raise TrainingDataError(
            f"model {model}: too few rows: {len(labelled)} labelled rows, "
            f"retrain.min_rows is {cfg.min_rows}",
            hint="widen retrain.window_size, add base training data, or wait for more batches",
        )
    if cfg.task == "classification" and labelled[target].nunique() < 2:
        raise TrainingDataError(
            f"model {model}: the target {target!r} has a single class "
            f"({labelled[target].iloc[0]!r}); a classifier needs at least two"
        )

    numeric, categorical, dropped = _usable_features(labelled, columns, warnings, model, cfg.impute)
    ts = timestamps(labelled, columns)
    if ts is not None and columns.timestamp:
        labelled[columns.timestamp] = ts
        labelled = labelled.sort_values(columns.timestamp, kind="stable")
    report = ValidationReport(
        rows_in=rows_in,
        rows_labelled=len(labelled),
        label_coverage=round(coverage, 4),
        numeric=numeric,
        categorical=categorical,
        dropped_features=dropped,
        warnings=warnings,
    )
    return labelled.reset_index(drop=True), report


def _target_values(values: pd.Series, cfg: RetrainConfig, model: str, target: str) -> pd.Series:
    if cfg.task == "classification":
        return values
    numeric = pd.to_numeric(values, errors="coerce")
    bad = int((numeric.isna() & values.notna()).sum())
    if bad:
        raise TrainingDataError(
            f"model {model}: the regression target {target!r} has {bad} non-numeric value(s) "
            f"such as {values[numeric.isna() & values.notna()].iloc[0]!r}",
            hint="fix the label files, or set retrain.task = 'classification'",
        )
    return numeric.astype(float)


def _usable_features(
    data: pd.DataFrame, columns: ColumnsConfig, warnings: list[str], model: str, impute: str
) -> tuple[list[str], list[str], dict[str, str]]:
    dropped: dict[str, str] = {}
    for col in columns.numeric:
        values = pd.to_numeric(data[col], errors="coerce")
        bad = int((values.isna() & data[col].notna()).sum())
        if bad > 0.5 * max(1, int(data[col].notna().sum())):
            raise TrainingDataError(
                f"model {model}: numeric feature {col!r} is mostly not numbers "
                f"({bad} of {len(data)} values, e.g. {data[col][values.isna()].iloc[0]!r})",
                hint="list it under columns.categorical, or fix the data",
            )
        if bad:
            warnings.append(f"{col}: {bad} non-numeric values treated as missing")
        data[col] = values
    for col in columns.features:
        values = data[col]
        if values.isna().all():
            dropped[col] = "all values missing"
        elif values.nunique(dropna=True) <= 1:
            dropped[col] = f"constant ({values.dropna().iloc[0]!r})"
        else:
            share = float(values.isna().mean())
            if share > 0.5:
                left = impute == "none" and col in columns.numeric
                how = "left to the estimator" if left else "imputed"
                warnings.append(f"{col}: {share:.0%} of values missing ({how})")
            if col in columns.categorical:
                counts = values.astype(str).value_counts()
                rare = sorted(counts[counts < 2].index.tolist())
                if rare:
                    warnings.append(
                        f"{col}: categories seen only once {rare[:5]} are pooled as 'infrequent'"
                    )
    for col, why in dropped.items():
        warnings.append(f"feature {col} dropped: {why}")
    numeric = [c for c in columns.numeric if c not in dropped]
    categorical = [c for c in columns.categorical if c not in dropped]
    if not numeric and not categorical:
        raise TrainingDataError(
            f"model {model}: no usable feature left ({dropped})",
            hint="every configured feature is empty or constant in the training window",
        )
    return numeric, categorical, dropped
