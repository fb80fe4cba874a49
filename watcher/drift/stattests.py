"""evidently 0.7.23's drift tests, computed from a reference that is prepared once.

Each function here gives the score evidently's own test gives
(`evidently.legacy.calculations.stattests`) for the same two columns, but takes the
reference already cleaned, sorted and counted, so a batch pays only for its own side.
The arithmetic follows evidently and SciPy step by step; the oracle tests
(tests/integration/test_drift_oracle.py) hold the two equal to 1e-6.

Like evidently, a sample keeps only finite values: NaN, None and ±inf are dropped
before any test, and the row counts used below are the counts after that.

Size: one function per evidently test, each beside the arithmetic it must match step by
step, with the helpers they share (cleaning, sorted sums); the oracle tests read it as one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial import distance

from watcher.drift.catalog import Kind
from watcher.drift.samples import (
    CategoricalSample,
    FloatArray,
    IntArray,
    NumericReference,
    NumericSample,
    Sample,
    _categorical_pair,
    categorical_from_counts,
    categorical_sample,
    numeric_from_floats,
    numeric_reference,
    numeric_sample,
)

__all__ = [
    "CategoricalSample",
    "NumericReference",
    "NumericSample",
    "Sample",
    "categorical_from_counts",
    "categorical_sample",
    "numeric_from_floats",
    "numeric_reference",
    "numeric_sample",
]


# evidently uses its own binned histograms for a numeric column only when the reference
# has more than this many distinct values; otherwise each value is its own bin.
_MAX_VALUES_AS_BINS = 20


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


# scipy's ks_2samp computes its p-value exactly up to this many rows on either side, and
# with Smirnov's asymptotic distribution above (its `MAX_AUTO_N`).
_KS_EXACT_MAX_N = 10000


def ks(ref: NumericSample, cur: NumericSample) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (SciPy's `ks_2samp`, as evidently).

    Above 10,000 rows SciPy's p-value depends only on the statistic and the two sizes;
    the statistic is found from the batch's side alone (`_ks_statistic`). Below, the
    exact p-value is SciPy's own, on samples that small anyway.
    """
    if max(ref.n, cur.n) <= _KS_EXACT_MAX_N:
        return float(stats.ks_2samp(ref.values, cur.values).pvalue)
    d = _ks_statistic(ref, cur)
    m, n = sorted([float(ref.n), float(cur.n)], reverse=True)
    en = m * n / (m + n)
    return float(np.clip(stats.kstwo.sf(d, np.round(en)), 0, 1))


def _ks_statistic(ref: NumericSample, cur: NumericSample) -> float:
    """SciPy's two-sided KS statistic, evaluated only at the batch's values.

    F - G changes only at data points. Between two batch values G is constant, so over
    the reference values there F - G is largest just before the next batch value and
    smallest at the previous batch value itself: evaluating F - G at each batch value
    and just below it gives SciPy's max and min over all points, divided the same way.
    """
    r, b = ref.values, cur.values
    ub = cur.uniques[0]
    if isinstance(ref, NumericReference):
        at_r, below_r = ref.rank(ub, "right"), ref.rank(ub, "left")
    else:
        at_r, below_r = np.searchsorted(r, ub, "right"), np.searchsorted(r, ub, "left")
    at = at_r / ref.n - np.searchsorted(b, ub, "right") / cur.n
    below = below_r / ref.n - np.searchsorted(b, ub, "left") / cur.n
    highest = max(float(at.max()), float(below.max()))
    lowest = min(float(at.min()), float(below.min()))
    return max(float(np.clip(-lowest, 0, 1)), highest)


def _integral_at(ref: NumericReference, t: FloatArray, k: IntArray, power: int) -> FloatArray:
    """Integral of k(x)^power (power 1 or 2) from -inf to each t, given k = #{r <= t} (or,
    at a reference value, the position just after any of its copies: ties add nothing)."""
    running = ref.cdf_integral(power)
    below = np.where(k > 0, t - ref.values[np.maximum(k - 1, 0)], 0.0)
    kf = k.astype(np.float64)
    out: FloatArray = running[k] + (kf if power == 1 else kf * kf) * below
    return out


def _segments(
    ref: NumericReference, cur: NumericSample, power: int
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """The stretches over which the batch's CDF G is constant, with what both distances
    need over each: its ends a < c, G's value g there, the point m in [a, c] where the
    reference CDF F reaches g, and the integrals of k^power up to a, m and c.

    One binary search per batch value into the reference; the rest is arithmetic on
    arrays of the batch's length.
    """
    r, b = ref.values, cur.values
    n, big_n = cur.n, ref.n
    lo = min(float(r[0]), float(b[0]))
    hi = max(float(r[-1]), float(b[-1]))
    a = np.concatenate(([lo], b))
    c = np.concatenate((b, [hi]))
    k_b = ref.rank(b, "right")
    k_lo = np.searchsorted(r, [lo], "right")
    # Stretch ends are the batch's values, shared by neighbours: integrate once at each.
    at_b = _integral_at(ref, b, k_b, power)
    ia = np.concatenate((_integral_at(ref, np.array([lo]), k_lo, power), at_b))
    ic = np.concatenate((at_b, _integral_at(ref, np.array([hi]), np.array([big_n]), power)))
    j = np.arange(n + 1, dtype=np.int64)
    g = j / n
    # F(x) >= j/n exactly when #{r <= x} >= ceil(j N / n), in integers: no rounding.
    need = -((-j * big_n) // n)
    cross = np.where(need > 0, r[np.maximum(need - 1, 0)], -np.inf)
    m = np.clip(cross, a, c)
    # At m == a (or c) the integral is the one already computed there, the same floats;
    # elsewhere m is the reference value r[need - 1] itself, so nothing lies past it and
    # the integral is the running entry alone: no second read of the reference's values.
    im = np.where(m == a, ia, np.where(m == c, ic, ref.cdf_integral(power)[need]))
    return a, c, g, m, ia, im, ic


def wasserstein_normed(ref: NumericReference, cur: NumericSample) -> float:
    """First Wasserstein distance divided by max(std(reference), 0.001).

    The integral of |F - G| over each stretch where G is constant splits at the point m
    where F reaches G's value: below it F < g, above it F >= g.
    """
    a, c, g, m, ia, im, ic = _segments(ref, cur, 1)
    big_n = ref.n
    under = g * (m - a) - (im - ia) / big_n
    over = (ic - im) / big_n - g * (c - m)
    return float(np.sum(under) + np.sum(over)) / ref.wasserstein_norm


def energy(ref: NumericReference, cur: NumericSample) -> float:
    """SciPy's `energy_distance`: sqrt(2) times the L2 distance between the CDFs."""
    a, c, g, _, ia2, _, ic2 = _segments(ref, cur, 2)
    ia, ic = _segments(ref, cur, 1)[4::2]
    big_n = float(ref.n)
    squares = (ic2 - ia2) / (big_n * big_n) - 2 * g * (ic - ia) / big_n + g * g * (c - a)
    return float(np.sqrt(2) * np.sqrt(max(float(np.sum(squares)), 0.0)))


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


def _unsigned_subtract(a: Any, b: Any) -> Any:
    # numpy's own rule: signed integers subtract into their unsigned type (no overflow).
    dt = np.result_type(a, b)
    if dt.kind == "i":
        unsigned = np.dtype(f"u{dt.itemsize}")
        return np.subtract(
            np.asarray(a, dtype=dt), np.asarray(b, dtype=dt), casting="unsafe", dtype=unsigned
        )
    return np.subtract(a, b, dtype=dt)


def sturges_edges(lowest: float, highest: float, size: int, dtype: np.dtype[Any]) -> FloatArray:
    """`np.histogram_bin_edges(x, bins="sturges")` for an array x of `dtype` with this
    min, max and size, without the array: numpy's steps, in numpy's types."""
    x = np.array([lowest, highest]).astype(dtype)
    first, last = x.min(), x.max()
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = _unsigned_subtract(x.max(), x.min()) / (np.log2(size) + 1.0)
    if width:
        if np.issubdtype(x.dtype, np.integer) and width < 1:
            width = 1
        n_bins = int(np.ceil(_unsigned_subtract(last, first) / width))
    else:
        n_bins = 1
    bin_type = np.result_type(first, last, x)
    if np.issubdtype(bin_type, np.integer):
        bin_type = np.result_type(bin_type, float)
    edges: FloatArray = np.linspace(first, last, n_bins + 1, endpoint=True, dtype=bin_type)
    return edges


def _distinct_union_size(ref: NumericSample, cur: NumericSample) -> int:
    """How many distinct values the two sides have together, from the batch's side."""
    ref_values = ref.uniques[0]
    cur_values = cur.uniques[0]
    at = np.searchsorted(ref_values, cur_values)
    found = at < ref_values.size
    found[found] = ref_values[at[found]] == cur_values[found]
    return int(ref_values.size + np.count_nonzero(~found))


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
        lowest = min(ref.values[0], cur.values[0])
        highest = max(ref.values[-1], cur.values[-1])
        edges = sturges_edges(lowest, highest, ref.n + cur.n, dtype).astype(np.float64)
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


def _density(sorted_values: FloatArray, edges: FloatArray) -> FloatArray:
    # np.histogram(..., density=True): counts / bin width / total, counted by binary search.
    counts = _histogram_counts(sorted_values, edges.astype(np.float64))
    widths = np.array(np.diff(edges), float)
    density: FloatArray = counts / widths / counts.sum()
    return density


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
        lowest = min(ref.values[0], cur.values[0])
        highest = max(ref.values[-1], cur.values[-1])
        edges = sturges_edges(lowest, highest, _distinct_union_size(ref, cur), dtype)
        h1 = _density(ref.values, edges)
        h2 = _density(cur.values, edges)
        width = (edges.max() - edges.min()) / (len(edges) - 1)
        # evidently's own loop, in its types: with float32 edges the width is a float32
        # and so is every term and the running sum (NumPy's promotion rules); a vector sum
        # in float64 differs from it by ~1e-6. A handful of Sturges bins: no cost.
        total: Any = 0.0
        for p1, p2 in zip(h1, h2, strict=True):
            total += math.sqrt(float(p1) * float(p2)) * width
        overlap = float(total)
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
