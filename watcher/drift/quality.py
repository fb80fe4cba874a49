"""Data quality checks of a batch against its reference, before drift scoring.

Two kinds of findings:
- a *rejection* (`BatchRejected`): the batch cannot be scored meaningfully (empty, too few
  rows, a feature missing or holding text where numbers belong, a feature entirely empty,
  a `columns.score` value that is not a probability in [0, 1]).
  The batch is quarantined with the reason and the daemon goes on.
- a *violation*: the batch is scored, but something is off (missing values above the
  limit, values outside the reference range, categories never seen, extra columns,
  infinite values). Violations are counted in `watcher_data_quality_violations_total`.

The reference profile (dtypes, ranges, category sets) is built once per reference version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from watcher import chunked
from watcher.config import ColumnsConfig, QualityConfig
from watcher.drift import stattests
from watcher.drift.stattests import CategoricalSample, NumericSample, Sample
from watcher.errors import BatchRejected
from watcher.safetext import sample_names


@dataclass(frozen=True)
class ReferenceProfile:
    numeric_ranges: dict[str, tuple[float, float]]
    categories: dict[str, frozenset[object]]
    categorical_is_numeric: dict[str, bool]
    columns: frozenset[str]


@dataclass(frozen=True)
class Violation:
    check: str
    column: str | None
    value: float
    message: str


@dataclass
class QualityReport:
    rows: int
    missing_share: dict[str, float] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    # The features' samples (sorted finite values, counts), computed in the checks' own
    # pass over the batch and handed to the drift engine (`engine.score(samples=...)`),
    # which would otherwise go over the same columns again.
    samples: dict[str, Sample] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "missing_share": self.missing_share,
            "violations": [vars(v) for v in self.violations],
        }


def profile_reference(
    reference: pd.DataFrame, columns: ColumnsConfig, samples: Mapping[str, Sample] | None = None
) -> ReferenceProfile:
    """Ranges, category sets and dtypes of the reference. With the drift engine's prepared
    `samples` (sorted finite values, counts) the ranges and sets are read off them rather
    than computed again over the frame."""
    if samples is not None:
        return _from_samples(reference, columns, samples)
    ranges: dict[str, tuple[float, float]] = {}
    for col in columns.numeric:
        values = pd.to_numeric(reference[col], errors="coerce").replace([np.inf, -np.inf], np.nan)
        if values.notna().any():
            ranges[col] = (float(values.min()), float(values.max()))
    categories = {
        col: frozenset(reference[col].dropna().unique().tolist()) for col in columns.categorical
    }
    is_numeric = {
        col: bool(pd.api.types.is_numeric_dtype(reference[col])) for col in columns.categorical
    }
    return ReferenceProfile(ranges, categories, is_numeric, frozenset(map(str, reference.columns)))


def _from_samples(
    reference: pd.DataFrame, columns: ColumnsConfig, samples: Mapping[str, Sample]
) -> ReferenceProfile:
    ranges: dict[str, tuple[float, float]] = {}
    categories: dict[str, frozenset[object]] = {}
    for col in columns.numeric:
        num = samples.get(col)
        if not isinstance(num, NumericSample):
            return profile_reference(reference, columns)
        if num.n:
            ranges[col] = (float(num.values[0]), float(num.values[-1]))
    for col in columns.categorical:
        cat = samples.get(col)
        if not isinstance(cat, CategoricalSample):
            return profile_reference(reference, columns)
        categories[col] = frozenset(cat.counts)
    is_numeric = {
        col: bool(pd.api.types.is_numeric_dtype(reference[col])) for col in columns.categorical
    }
    return ReferenceProfile(ranges, categories, is_numeric, frozenset(map(str, reference.columns)))


def check_batch(
    batch: pd.DataFrame,
    profile: ReferenceProfile,
    columns: ColumnsConfig,
    cfg: QualityConfig,
    name: str = "batch",
    *,
    numeric_prediction: bool = True,
) -> tuple[pd.DataFrame, QualityReport]:
    """Validate and normalise a batch. Returns the frame to score and what was found.

    `numeric_prediction=False` for a classifier: its predictions are class labels
    (strings such as 'Up' included), not numbers."""
    rows = len(batch)
    if rows == 0:
        raise BatchRejected(
            f"{name} has no rows", check="empty_batch", hint="nothing to score; check the writer"
        )
    if rows < cfg.min_rows:
        raise BatchRejected(
            f"{name} has {rows} row(s), fewer than quality.min_rows={cfg.min_rows}",
            check="too_few_rows",
            hint="drift tests on so few rows are noise; send larger batches or lower min_rows",
        )

    roles = [c for c in (columns.prediction, columns.score) if c]
    required = [*columns.features, *roles]
    missing = [c for c in required if c not in batch.columns]
    if missing:
        present = sample_names(list(batch.columns))
        hint = "the batch must have every configured feature and the prediction column"
        if columns.score:
            hint += " (and the score column)"
        if len(batch.columns) == 1:
            hint = (
                "only one column was found: is the file delimited by something other "
                "than , ; tab or | ?"
            )
        raise BatchRejected(
            f"{name} lacks column(s) {missing} (it has: {present})",
            check="missing_columns",
            hint=hint,
        )

    report = QualityReport(rows=rows)
    extra = sorted(set(map(str, batch.columns)) - profile.columns - {c for c in required})
    known_roles = {columns.target, columns.timestamp, columns.id} - {None}
    extra = [c for c in extra if c not in known_roles]
    if extra:
        # Bounded: a batch with 100,000 extra columns must not store all their names.
        report.violations.append(
            Violation(
                "extra_columns",
                None,
                len(extra),
                f"columns not in the reference: {sample_names(list(extra), count=20)}",
            )
        )

    for col in required:
        _refuse_nested(batch[col], col, name)

    out = batch.copy()
    if columns.score:
        out[columns.score] = _probabilities(out[columns.score], columns.score, name)
    numeric_cols = [
        *columns.numeric,
        *([columns.prediction] if columns.prediction and numeric_prediction else []),
    ]
    # One float view per numeric column, reused by every check below (missing share,
    # range): the checks are a few vector passes over the batch, no pandas per check.
    as_float: dict[str, npt.NDArray[np.float64]] = {}
    for col in numeric_cols:
        column = out[col]
        converted = _as_numeric(column, col, name)
        if converted is not column:  # a float column comes back as is: no write
            out[col] = converted
        col_floats = out[col].to_numpy(dtype=float, na_value=np.nan)
        infinite = np.isinf(col_floats)
        n_inf = int(np.count_nonzero(infinite))
        if n_inf:
            # Infinite values break every distance; treat them as missing and say so.
            out[col] = out[col].where(~infinite, np.nan)
            col_floats = np.where(infinite, np.nan, col_floats)
            report.violations.append(
                Violation("non_finite", col, n_inf / rows, f"{n_inf} infinite value(s) in {col}")
            )
        as_float[col] = col_floats
    if columns.prediction and out[columns.prediction].isna().all():
        # Not a rejection: the features can still be scored, only prediction drift cannot.
        report.violations.append(
            Violation(
                "all_missing",
                columns.prediction,
                1.0,
                f"prediction column {columns.prediction!r} has no values: prediction drift "
                "is not scored",
            )
        )
    for col in columns.categorical:
        column = out[col]
        aligned = _align_categorical(column, profile.categorical_is_numeric.get(col, False))
        if aligned is not column:
            out[col] = aligned

    # Categorical: one count of the values per column gives the missing share, the unseen
    # categories and the drift engine's sample.
    counts: dict[str, pd.Series] = {}
    for col in columns.features:
        floats = as_float.get(col)
        if floats is not None:
            share = float(np.count_nonzero(np.isnan(floats))) / rows
            report.samples[col] = stattests.numeric_from_floats(floats, out[col])
        else:
            counts[col] = chunked.value_counts(out[col])
            report.samples[col] = stattests.categorical_from_counts(counts[col])
            share = float(rows - int(counts[col].sum())) / rows
        report.missing_share[col] = share
        if share == 1.0 and cfg.reject_all_missing:
            raise BatchRejected(
                f"{name}: feature {col!r} has no values at all",
                check="all_missing",
                hint="the upstream feature pipeline probably failed for this column",
            )
        if share > cfg.max_missing_share:
            report.violations.append(
                Violation(
                    "missing_values",
                    col,
                    share,
                    f"{share:.1%} of {col} is missing (limit {cfg.max_missing_share:.0%})",
                )
            )

    for col, (lo, hi) in profile.numeric_ranges.items():
        floats = as_float.get(col)
        if floats is None:
            floats = out[col].to_numpy(dtype=float, na_value=np.nan)
        n_present = np.count_nonzero(~np.isnan(floats))
        if not n_present:
            continue
        # NaN compares False on both sides: only present values can be out of range.
        share = float(np.count_nonzero((floats < lo) | (floats > hi))) / n_present
        if share > cfg.max_out_of_range_share:
            report.violations.append(
                Violation(
                    "out_of_range",
                    col,
                    share,
                    f"{share:.1%} of {col} is outside the reference range [{lo:g}, {hi:g}]",
                )
            )

    for col, seen in profile.categories.items():
        tally = counts.get(col)
        if tally is None:
            tally = chunked.value_counts(out[col])
        n_of = tally.to_numpy(dtype=np.int64)
        total = int(n_of.sum())
        if not total:
            continue
        new = np.fromiter((key not in seen for key in tally.index), bool, len(n_of)) & (n_of > 0)
        share = float(n_of[new].sum()) / total
        if share > cfg.max_unseen_category_share:
            # No examples: values are the file's content, which is not echoed anywhere.
            n_new = int(np.count_nonzero(new))
            report.violations.append(
                Violation(
                    "unseen_categories",
                    col,
                    share,
                    f"{share:.1%} of {col} has categories not in the reference "
                    f"({n_new} new value(s))",
                )
            )
    return out, report


def _as_numeric(series: pd.Series, col: str, name: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series):
        # pd.to_numeric would turn them into nanoseconds without a word.
        raise BatchRejected(
            f"{name}: numeric column {col!r} holds timestamps ({series.dtype})",
            check="type_change",
            hint="fix the writer's types, or leave the column out of columns.numeric",
        )
    if pd.api.types.is_bool_dtype(series):
        return series.astype(float)
    if pd.api.types.is_numeric_dtype(series):
        return series
    converted = pd.to_numeric(series, errors="coerce")
    bad = series.notna() & converted.isna()
    if bad.any():
        n_bad = int(bad.sum())
        kind = "text" if n_bad == int(series.notna().sum()) else "a mix of numbers and text"
        raise BatchRejected(
            f"{name}: numeric column {col!r} holds {kind} ({n_bad} value(s) that are not numbers)",
            check="type_change",
            hint="fix the writer's types, or configure the column as categorical if the "
            "change is intended",
        )
    return converted


def _probabilities(series: pd.Series, col: str, name: str) -> pd.Series:
    """The score column as floats, each a probability in [0, 1] or missing. A value
    outside (a logit, a percentage, inf) would make every ROC AUC of the period a
    ranking of the wrong numbers with no error: the batch is refused instead."""
    values = _as_numeric(series, col, name)
    floats = values.to_numpy(dtype=float, na_value=np.nan)
    outside = ~np.isnan(floats) & ~((floats >= 0.0) & (floats <= 1.0))
    n_out = int(np.count_nonzero(outside))
    if n_out:
        # The count only: no value of the file is echoed into reasons, logs or mails.
        raise BatchRejected(
            f"{name}: score column {col!r} has {n_out} value(s) outside [0, 1]; it must "
            "hold the positive class's probability",
            check="score_out_of_range",
            hint="write predict_proba(...)[:, 1] (not a logit or a percentage) to the "
            "score column, or remove columns.score from the config",
        )
    return pd.Series(floats, index=series.index, name=series.name)


_NESTED = (list, tuple, dict, set, np.ndarray)
# What pandas.api.types.infer_dtype answers for slices holding no nested value ("mixed"
# covers lists, dicts and arrays, and goes the slow way).
_SCALAR_KINDS = frozenset({"string", "empty", "integer", "floating", "boolean"})


def _refuse_nested(series: pd.Series, col: str, name: str) -> None:
    """A Parquet list, struct or map column arrives as arrays/dicts: not a feature value."""
    if series.dtype != object:
        return
    # The first 1000 values present, looked for a slice at a time (not a pass over a
    # million rows: that holds the GIL). A slice pandas infers as scalars in C (strings,
    # numbers: the common case) needs no look at each value in Python.
    head: list[Any] = []
    seen = 0
    for start in range(0, len(series), 4096):
        chunk = series.iloc[start : start + 4096]
        if pd.api.types.infer_dtype(chunk.to_numpy(), skipna=True) in _SCALAR_KINDS:
            seen += int(chunk.count())
        else:
            present = chunk.dropna().head(1000 - seen)
            head.extend(present)
            seen += len(present)
        if seen >= 1000:
            break
    if any(isinstance(v, _NESTED) for v in head):
        raise BatchRejected(
            f"{name}: column {col!r} holds nested values (a list, struct or map per row)",
            check="type_change",
            hint="write one scalar per row and column (flatten the nested field upstream)",
        )


def _align_categorical(series: pd.Series, reference_is_numeric: bool) -> pd.Series:
    """Compare like with like: CSV '1' and Parquet 1 are the same category."""
    if reference_is_numeric and not pd.api.types.is_numeric_dtype(series):
        converted = pd.to_numeric(series, errors="coerce")
        if not (series.notna() & converted.isna()).any():
            return converted
        return series.astype("string").astype(object)
    if not reference_is_numeric and pd.api.types.is_numeric_dtype(series):
        return series.map(lambda v: v if pd.isna(v) else str(v))
    return series
