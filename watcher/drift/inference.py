"""The columns to score: their spec, and which columns of a frame evidently would score,
and as what kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from watcher.drift import samples
from watcher.drift.catalog import Kind


@dataclass(frozen=True)
class ColumnSpec:
    """A column to score: its kind and, optionally, its own test and threshold."""

    name: str
    kind: Kind
    stattest: str | None = None  # a catalog name or "package.module:function"
    threshold: float | None = None


# evidently infers an integer column with at most this many distinct values as categorical.
_INTEGER_CARDINALITY_LIMIT = 10


def _inferred_kind(column: pd.Series) -> Kind | None:
    """evidently's `infer_column_type`, reduced to the kinds watcher scores.

    Text (a string column with more distinct values than half its rows), dates, lists and
    anything unrecognised give None: evidently would not score them as numeric or
    categorical either.
    """
    name = column.dtype.name
    if name.startswith("float"):
        return "numeric"
    if name.startswith("int"):
        return "categorical" if column.nunique() <= _INTEGER_CARDINALITY_LIMIT else "numeric"
    if name in ("string", "str"):
        return None if column.nunique() > column.count() * 0.5 else "categorical"
    if name == "object":
        present = column.dropna()
        if present.empty or not (
            isinstance(present.iloc[0], str) and isinstance(present.iloc[-1], str)
        ):
            return None
        return None if column.nunique() > column.count() * 0.5 else "categorical"
    if name in ("bool", "category"):
        return "categorical"
    return None


def infer_columns(df: pd.DataFrame, exclude: Sequence[str] = ()) -> list[ColumnSpec]:
    """Numeric and categorical columns of `df`, inferred the way evidently infers them.

    Float columns are numeric; integer columns with at most 10 distinct values, booleans,
    pandas categories and low-cardinality strings are categorical. Text, dates and other
    columns are left out, and so is a column with no value at all (evidently would fail
    on it). evidently's `Report` infers from the *current* data; pass the reference here
    so the kinds stay fixed for a reference version.
    """
    skip = set(exclude)
    specs: list[ColumnSpec] = []
    for name in df.columns:
        if name in skip:
            continue
        column = df[name]
        if isinstance(column, pd.DataFrame):
            continue  # a repeated name: no single column to score
        kind = _inferred_kind(column)
        if kind is None:
            continue
        if kind == "numeric":
            empty = samples.numeric_sample(column).n == 0
        else:
            empty = samples.categorical_sample(column).n == 0
        if not empty:
            specs.append(ColumnSpec(str(name), kind))
    return specs
