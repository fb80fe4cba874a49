"""evidently 0.7.23's drift tests, computed from a reference that is prepared once.

Each function here gives the score evidently's own test gives
(`evidently.legacy.calculations.stattests`) for the same two columns, but takes the
reference already cleaned, sorted and counted, so a batch pays only for its own side.
The arithmetic follows evidently and SciPy step by step; the oracle tests
(tests/test_drift_oracle.py) hold the two equal to 1e-6.

Like evidently, a sample keeps only finite values: NaN, None and ±inf are dropped
before any test, and the row counts used below are the counts after that.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from watcher.drift.catalog import Kind

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# evidently uses its own binned histograms for a numeric column only when the reference
# has more than this many distinct values; otherwise each value is its own bin.
_MAX_VALUES_AS_BINS = 20


# --- samples ------------------------------------------------------------------------


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
        starts = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
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


def numeric_reference(series: pd.Series) -> NumericReference:
    """Prepare a reference numeric column once: sorted values and the Wasserstein norm."""
    sample = numeric_sample(series)
    clean = pd.Series(sample.in_dtype())
    # np.std on a Series runs pandas' std(ddof=0); evidently calls exactly that.
    norm = max(float(np.std(clean)), 0.001) if sample.n else 0.001
    mean = float(np.mean(sample.values)) if sample.n else math.nan
    std = float(np.std(sample.values, ddof=1)) if sample.n > 1 else math.nan
    prepared = NumericReference(sample.values, sample.dtype, norm, mean, std)
    _ = prepared.uniques  # computed now, so scoring a batch only touches the batch's side
    return prepared


def _is_infinite(key: Hashable) -> bool:
    return isinstance(key, float | np.floating) and math.isinf(key)


def categorical_sample(series: pd.Series) -> CategoricalSample:
    """Count the values of a categorical series, dropping NaN/None/±inf as evidently does."""
    counts = series.value_counts(dropna=True, sort=False)
    # A pandas `category` column lists every category, also those with no rows.
    clean = {k: int(c) for k, c in counts.items() if c > 0 and not _is_infinite(k)}
    return CategoricalSample(clean, sum(clean.values()))


def _categorical_pair(ref: Sample, cur: Sample) -> tuple[CategoricalSample, CategoricalSample]:
    if isinstance(ref, CategoricalSample) and isinstance(cur, CategoricalSample):
        return ref, cur
    raise TypeError("reference and batch samples of one column must be of the same kind")


# --- the choice evidently makes -------------------------------------------------------


def n_unique(ref: Sample, cur: Sample, *, at_most: int) -> int:
    """Distinct values over reference and current together (evidently's `n_values`).

    Exact up to `at_most`; any larger count is reported as `at_most + 1`, which is all the
    default choice needs and spares hashing a large numeric batch.
    """
    if isinstance(ref, NumericSample) and isinstance(cur, NumericSample):
        ref_values = ref.uniques[0]
        if ref_values.size > at_most:
            return at_most + 1
        return min(int(np.union1d(ref_values, cur.uniques[0]).size), at_most + 1)
    ref, cur = _categorical_pair(ref, cur)
    return len(ref.counts.keys() | cur.counts.keys())


def default_test(kind: Kind, ref: Sample, cur: Sample) -> str:
    """evidently's `_get_default_stattest`: by kind, reference size and distinct values.

    The reference size is the column's count of finite values, as evidently sees it.
    """
    n_values = n_unique(ref, cur, at_most=5)
    if ref.n <= 1000:
        if kind == "numeric" and n_values > 5:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    if kind == "numeric" and n_values > 5:
        return "wasserstein"
    return "jensenshannon"


# --- aligned counts (chi-square, Z, and binned distances on few values) ---------------


def _aligned_counts(ref: Sample, cur: Sample) -> tuple[list[Any], IntArray, IntArray]:
    """Every value seen on either side, with its count in the reference and the batch."""
    if isinstance(ref, NumericSample) and isinstance(cur, NumericSample):
        ref_values, ref_counts = ref.uniques
        cur_values, cur_counts = cur.uniques
        keys = np.union1d(ref_values, cur_values)
        r = np.zeros(keys.size, dtype=np.int64)
        c = np.zeros(keys.size, dtype=np.int64)
        r[np.searchsorted(keys, ref_values)] = ref_counts
        c[np.searchsorted(keys, cur_values)] = cur_counts
        return keys.tolist(), r, c
    ref, cur = _categorical_pair(ref, cur)
    key_list = list(ref.counts.keys() | cur.counts.keys())
    r = np.fromiter((ref.counts.get(k, 0) for k in key_list), np.int64, len(key_list))
    c = np.fromiter((cur.counts.get(k, 0) for k in key_list), np.int64, len(key_list))
    return key_list, r, c


def _sorted_keys(keys: list[Any]) -> list[Any]:
    try:
        return sorted(keys)
    except TypeError:
        # evidently fails on a column mixing e.g. numbers and text; order by type, then text.
        return sorted(keys, key=lambda k: (type(k).__name__, str(k)))


# --- the tests -------------------------------------------------------------------------


def ks(ref: NumericSample, cur: NumericSample) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (SciPy's `ks_2samp`, as evidently)."""
    return float(stats.ks_2samp(ref.values, cur.values).pvalue)


def _cdf_gaps(ref: NumericSample, cur: NumericSample) -> tuple[FloatArray, FloatArray]:
    """|U - V| between the two empirical CDFs at every merged point, and the gaps between
    those points: SciPy's `_cdf_distance` on presorted inputs.

    Merging two sorted runs is linear (timsort), and the counts of each side up to every
    merged point give both CDFs. Inside a run of equal values the counts differ from
    SciPy's, but those terms are multiplied by a zero gap; at the run's end they agree.
    """
    n, m = ref.n, cur.n
    both = np.concatenate((ref.values, cur.values))
    order = np.argsort(both, kind="stable")
    deltas = np.diff(both[order])
    from_ref = np.cumsum(order[:-1] < n)
    u_cdf = from_ref / n
    v_cdf = np.arange(1, n + m, dtype=np.float64)  # values seen so far, both sides
    v_cdf -= from_ref
    v_cdf /= m
    # |U - V| in place: these arrays are as long as both samples together.
    u_cdf -= v_cdf
    np.abs(u_cdf, out=u_cdf)
    return u_cdf, deltas


def wasserstein_normed(ref: NumericReference, cur: NumericSample) -> float:
    """First Wasserstein distance divided by max(std(reference), 0.001)."""
    gaps, deltas = _cdf_gaps(ref, cur)
    return float(np.dot(gaps, deltas)) / ref.wasserstein_norm


def energy(ref: NumericSample, cur: NumericSample) -> float:
    """SciPy's `energy_distance`: sqrt(2) times the L2 distance between the CDFs."""
    gaps, deltas = _cdf_gaps(ref, cur)
    return float(np.sqrt(2) * np.sqrt(np.dot(gaps * gaps, deltas)))


def t_test(ref: NumericReference, cur: NumericSample) -> float:
    """Student's two-sample t-test p-value (SciPy's `ttest_ind`, equal variances)."""
    std = float(np.std(cur.values, ddof=1)) if cur.n > 1 else math.nan
    mean = float(np.mean(cur.values))
    return float(stats.ttest_ind_from_stats(ref.mean, ref.std, ref.n, mean, std, cur.n).pvalue)


def chisquare(ref: Sample, cur: Sample) -> float:
    """Pearson chi-square p-value of the batch's counts against the reference's, rescaled."""
    _, r, c = _aligned_counts(ref, cur)
    f_exp = r * (cur.n / ref.n)
    # A value the reference never had expects 0 rows: the statistic is infinite and the
    # p-value 0, as in evidently; numpy's division warning says nothing new.
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stats.chisquare(c, f_exp).pvalue)


def z_test(ref: Sample, cur: Sample) -> float:
    """Two-proportion Z-test p-value: the smallest value against all others."""
    keys, r, c = _aligned_counts(ref, cur)
    if len(keys) == 1:  # one and the same value on both sides
        return 1.0
    first = _sorted_keys(keys)[0]
    i = keys.index(first)
    n1, n2 = ref.n, cur.n
    p1 = float(n1 - int(r[i])) / n1
    p2 = float(n2 - int(c[i])) / n2
    pooled = float(p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def _histogram_counts(sorted_values: FloatArray, edges: FloatArray) -> IntArray:
    # np.histogram with explicit edges: [e_i, e_i+1) and the last bin closed.
    idx = np.concatenate(
        (
            sorted_values.searchsorted(edges[:-1], "left"),
            sorted_values.searchsorted(edges[-1:], "right"),
        )
    )
    return np.diff(idx).astype(np.int64)


def binned(
    kind: Kind, ref: Sample, cur: Sample, *, fill_zeroes: bool
) -> tuple[FloatArray, FloatArray]:
    """evidently's `get_binned_data`: shares of each side per bin.

    A numeric column whose reference has more than 20 distinct values is cut into Sturges
    bins over both sides together; any other column uses one bin per value.
    """
    if (
        kind == "numeric"
        and isinstance(ref, NumericSample)
        and isinstance(cur, NumericSample)
        and ref.uniques[0].size > _MAX_VALUES_AS_BINS
    ):
        dtype = np.result_type(ref.dtype, cur.dtype)
        combined = np.concatenate((ref.values, cur.values)).astype(dtype, copy=False)
        edges = np.histogram_bin_edges(combined, bins="sturges").astype(np.float64)
        ref_shares = _histogram_counts(ref.values, edges) / ref.n
        cur_shares = _histogram_counts(cur.values, edges) / cur.n
    else:
        _, r, c = _aligned_counts(ref, cur)
        ref_shares, cur_shares = r / ref.n, c / cur.n
    if fill_zeroes:
        ref_shares, cur_shares = _fill_zeroes(ref_shares), _fill_zeroes(cur_shares)
    return ref_shares, cur_shares


def _fill_zeroes(shares: FloatArray) -> FloatArray:
    smallest = shares[shares != 0].min()
    out = shares.copy()
    out[out == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return out


def jensenshannon(kind: Kind, ref: Sample, cur: Sample) -> float:
    """Jensen-Shannon distance (natural log) between the binned shares."""
    p, q = binned(kind, ref, cur, fill_zeroes=False)
    return float(distance.jensenshannon(p, q))


def psi(kind: Kind, ref: Sample, cur: Sample) -> float:
    """Population stability index between the binned shares."""
    p, q = binned(kind, ref, cur, fill_zeroes=True)
    return float(np.sum((p - q) * np.log(p / q)))


def kl_div(kind: Kind, ref: Sample, cur: Sample) -> float:
    """Kullback-Leibler divergence of the reference shares from the batch's."""
    p, q = binned(kind, ref, cur, fill_zeroes=True)
    return float(stats.entropy(p, q))


def hellinger(kind: Kind, ref: Sample, cur: Sample) -> float:
    """Hellinger distance: per value for categorical columns, on density histograms else.

    evidently bins numeric columns with Sturges edges over the *distinct* values of both
    sides (not over the rows), which this repeats.
    """
    if kind == "categorical" or not (
        isinstance(ref, NumericSample) and isinstance(cur, NumericSample)
    ):
        _, r, c = _aligned_counts(ref, cur)
        overlap = float(np.sum(np.sqrt((r / ref.n) * (c / cur.n))))
    else:
        dtype = np.result_type(ref.dtype, cur.dtype)
        keys = np.union1d(ref.uniques[0], cur.uniques[0]).astype(dtype, copy=False)
        edges = np.histogram_bin_edges(keys, bins="sturges")
        h1 = np.histogram(ref.in_dtype(), bins=edges, density=True)[0]
        h2 = np.histogram(cur.in_dtype(), bins=edges, density=True)[0]
        width = (edges.max() - edges.min()) / (len(edges) - 1)
        overlap = float(np.sum(np.sqrt(h1 * h2) * width))
    return math.sqrt(1 - float(np.clip(overlap, 0, 1)))


def run(test: str, kind: Kind, ref: Sample, cur: Sample) -> float:
    """The score of a fast-path `test` (see `watcher.drift.catalog`) for one column."""
    if test in ("ks", "wasserstein", "ed", "t_test"):
        if not (isinstance(ref, NumericReference) and isinstance(cur, NumericSample)):
            raise TypeError(f"{test} needs numeric samples")
        if test == "ks":
            return ks(ref, cur)
        if test == "ed":
            return energy(ref, cur)
        if test == "t_test":
            return t_test(ref, cur)
        return wasserstein_normed(ref, cur)
    if test == "chisquare":
        return chisquare(ref, cur)
    if test == "z":
        return z_test(ref, cur)
    if test == "jensenshannon":
        return jensenshannon(kind, ref, cur)
    if test == "psi":
        return psi(kind, ref, cur)
    if test == "kl_div":
        return kl_div(kind, ref, cur)
    if test == "hellinger":
        return hellinger(kind, ref, cur)
    raise ValueError(f"{test!r} has no fast path")
