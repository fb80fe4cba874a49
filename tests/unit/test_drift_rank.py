"""The fenced rank search of a large reference gives exactly `np.searchsorted`'s integers:
ties, values equal to the reference's own, the ends and beyond them, on both sides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from watcher.drift import samples


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("rows", [(1 << 16) + 1, 200_003])
def test_fenced_rank_equals_searchsorted(side: str, rows: int) -> None:
    rng = np.random.default_rng(rows)
    # Rounded to two decimals: long runs of ties that cross block boundaries.
    ref = samples.numeric_reference(pd.Series(np.round(rng.normal(0, 1, rows), 2)))
    r = ref.values
    assert r.size > samples._FENCED_FROM
    probes = np.sort(
        np.concatenate(
            (
                rng.normal(0, 1.5, 5_000),
                r[rng.integers(0, r.size, 2_000)],
                r[:40],
                r[-40:],
                r[:: samples._FENCE],
                [-np.inf, np.inf, r[0] - 1, r[-1] + 1, r[0], r[-1]],
            )
        )
    )
    got = ref.rank(probes, side)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, np.searchsorted(r, probes, side))  # type: ignore[call-overload]


def test_fenced_rank_on_a_constant_reference() -> None:
    ref = samples.numeric_reference(pd.Series(np.full(100_000, 5.0)))
    probes = np.array([4.0, 5.0, 6.0, 5.0, -np.inf])  # unsorted: no order is assumed
    np.testing.assert_array_equal(ref.rank(probes, "left"), [0, 0, 100_000, 0, 0])
    np.testing.assert_array_equal(ref.rank(probes, "right"), [0, 100_000, 100_000, 100_000, 0])
