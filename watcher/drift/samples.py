"""A column's values as the drift tests use them: a numeric column's finite values sorted
(and, for a reference, what the distances need of it), a categorical column's counts.

Like evidently, a sample keeps only finite values: NaN, None and ±inf are dropped before
any test, and the row counts used by the tests are the counts after that.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from watcher import chunked

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# A reference larger than this is searched through every 16th of its values first (an
# array 1/16 of the values' size). 16 was a few per cent faster than 32 in bench_scale;
# 8 no faster in a micro-benchmark, for twice the memory.
_FENCED_FROM = 1 << 16
_FENCE = 16


@dataclass(frozen=True, eq=False)
class NumericSample:
    """The finite values of a numeric column, sorted, as float64."""

    values: FloatArray
    # The column's own dtype: histogram bin edges are computed in it, as numpy does.
    dtype: np.dtype[Any]

    @property
    def n(self) -> int:
        return int(self.values.size)

    @cached_property
    def uniques(self) -> tuple[FloatArray, IntArray]:
        """Distinct values and their counts, from the sorted values in one pass."""
        v = self.values
        if v.size == 0:
            return v, np.zeros(0, dtype=np.int64)
        new = np.concatenate(([True], v[1:] != v[:-1]))
        if new.all():
            # Every value distinct (the common case for a continuous column): the values
            # themselves and a read-only view of ones, so a reference holds no second copy.
            return v, np.broadcast_to(np.int64(1), v.shape)
        starts = np.flatnonzero(new)
        counts = np.diff(np.append(starts, v.size)).astype(np.int64)
        return v[starts], counts

    def in_dtype(self) -> npt.NDArray[Any]:
        return self.values if self.dtype == np.float64 else self.values.astype(self.dtype)


@dataclass(frozen=True, eq=False)
class NumericReference(NumericSample):
    """A reference numeric column, with what the distances need from it."""

    # max(std, 0.001), as evidently norms the Wasserstein distance.
    wasserstein_norm: float
    # Mean and sample standard deviation (ddof=1), for the t-test.
    mean: float = math.nan
    std: float = math.nan

    def rank(self, x: FloatArray, side: Literal["left", "right"]) -> IntArray:
        """`np.searchsorted(self.values, x, side)`, the same integers, faster on a large
        reference: a binary search per value into 8 MB of floats misses the cache at
        nearly every step. Here each value is first placed among every 16th reference
        value (an array 16 times smaller, that stays in cache), then among the 15 values
        of its block by four branchless halvings, three whole-array numpy steps each."""
        r = self.values
        if r.size <= _FENCED_FROM:
            return np.searchsorted(r, x, side)
        j = np.searchsorted(self._fences, x, side)
        # Fence j - 1 counts and fence j does not, so the answer is (j - 1) * 16 + 1 + c,
        # c the count among the 15 values between them (0 for j == 0: all of them fail).
        pos: IntArray = np.maximum(j * _FENCE - (_FENCE - 1), 0)
        at = np.empty(x.shape, dtype=r.dtype)
        passes = np.empty(x.shape, dtype=bool)
        counts = np.less_equal if side == "right" else np.less
        step = _FENCE >> 1
        while step:
            # r[pos + step - 1], read through a view that starts step - 1 further on (no
            # index array to add). Past the end reads the largest value again: the
            # predicate stays monotone, and the minimum below takes back any count beyond
            # the reference's size.
            np.take(r[step - 1 :], pos, out=at, mode="clip")
            counts(at, x, out=passes)
            np.add(pos, step, out=pos, where=passes)
            step >>= 1
        return np.minimum(pos, r.size, out=pos)

    @cached_property
    def _fences(self) -> FloatArray:
        fences: FloatArray = self.values[::_FENCE].copy()
        return fences

    def cdf_integral(self, power: int) -> FloatArray:
        """Running integral of the reference's count function k(x) = #{r <= x} (power 1)
        or of k(x)^2 (power 2).

        Entry k (1 <= k <= N) holds the integral from the smallest value to the k-th: a
        sum of positive terms, so no cancellation. With it the integral of F (or F^2) up
        to any point costs one binary search, which is what makes Wasserstein and energy
        distances cost O(n log N) for a batch of n rows. Computed on first use (only
        columns scored by these tests pay the memory, and Wasserstein only the first).
        """
        return self._cdf_first if power == 1 else self._cdf_second

    @cached_property
    def _cdf_first(self) -> FloatArray:
        return self._running(1)

    @cached_property
    def _cdf_second(self) -> FloatArray:
        return self._running(2)

    def _running(self, power: int) -> FloatArray:
        v = self.values
        out = np.zeros(v.size + 1)
        if v.size > 1:
            steps = np.arange(1, v.size, dtype=np.float64)
            if power == 2:
                steps *= steps
            np.cumsum(steps * np.diff(v), out=out[2:])
        return out


@dataclass(frozen=True, eq=False)
class CategoricalSample:
    """Counts of the present (not missing, not infinite) values of a categorical column."""

    counts: Mapping[Hashable, int]
    n: int


Sample = NumericSample | CategoricalSample


def _numpy_dtype(series: pd.Series) -> np.dtype[Any]:
    dtype = series.dtype
    if isinstance(dtype, np.dtype):
        return np.dtype(np.float64) if dtype.kind == "b" else dtype
    # pandas extension dtypes (Int64, Float64) carry their numpy equivalent.
    numpy_dtype = getattr(dtype, "numpy_dtype", None)
    return np.dtype(numpy_dtype) if numpy_dtype is not None else np.dtype(np.float64)


def numeric_sample(series: pd.Series) -> NumericSample:
    """Sort the finite values of a numeric series (a batch's side of a test)."""
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.sort(values[np.isfinite(values)])
    return NumericSample(values, _numpy_dtype(series))


def numeric_from_floats(floats: FloatArray, series: pd.Series) -> NumericSample:
    """`numeric_sample(series)`, from the series' float64 view already made (NaN where a
    value is missing or was infinite)."""
    return NumericSample(np.sort(floats[np.isfinite(floats)]), _numpy_dtype(series))


def numeric_reference(series: pd.Series) -> NumericReference:
    """Prepare a reference numeric column once: sorted values and the Wasserstein norm."""
    sample = numeric_sample(series)
    # np.std on a Series runs pandas' std(ddof=0); evidently calls exactly that. On float64
    # numpy's own std gives the same to the last bits, without building a Series.
    if sample.dtype == np.float64:
        spread = float(np.std(sample.values)) if sample.n else 0.0
    else:
        spread = float(np.std(pd.Series(sample.in_dtype()))) if sample.n else 0.0
    norm = max(spread, 0.001)
    mean = float(np.mean(sample.values)) if sample.n else math.nan
    std = float(np.std(sample.values, ddof=1)) if sample.n > 1 else math.nan
    prepared = NumericReference(sample.values, sample.dtype, norm, mean, std)
    _ = prepared.uniques  # computed now, so scoring a batch only touches the batch's side
    return prepared


def _is_infinite(key: Hashable) -> bool:
    return isinstance(key, float | np.floating) and math.isinf(key)


def categorical_sample(series: pd.Series) -> CategoricalSample:
    """Count the values of a categorical series, dropping NaN/None/±inf as evidently does."""
    return categorical_from_counts(chunked.value_counts(series))


def categorical_from_counts(counts: pd.Series) -> CategoricalSample:
    """A categorical sample from `series.value_counts(dropna=True, sort=False)`."""
    # A pandas `category` column lists every category, also those with no rows.
    clean = {k: int(c) for k, c in counts.items() if c > 0 and not _is_infinite(k)}
    return CategoricalSample(clean, sum(clean.values()))


def _categorical_pair(ref: Sample, cur: Sample) -> tuple[CategoricalSample, CategoricalSample]:
    if isinstance(ref, CategoricalSample) and isinstance(cur, CategoricalSample):
        return ref, cur
    raise TypeError("reference and batch samples of one column must be of the same kind")
