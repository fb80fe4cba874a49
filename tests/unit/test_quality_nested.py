"""The nested-value check of the quality pass (a Parquet list/struct/map column arrives as
arrays or dicts): its C fast path for slices of scalars must not let a nested value in
the first 1,000 present values through, wherever it sits among strings and gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from watcher.drift.quality import _refuse_nested
from watcher.errors import BatchRejected

LEVELS = np.array([f"level_{i}" for i in range(8)], dtype=object)


def _strings(n: int) -> list[object]:
    return list(np.random.default_rng(0).choice(LEVELS, n))


def test_a_column_of_strings_and_gaps_passes() -> None:
    values = _strings(10_000)
    values[::7] = [None] * len(values[::7])
    _refuse_nested(pd.Series(values, dtype=object), "c", "b.parquet")
    _refuse_nested(pd.Series([None] * 5_000, dtype=object), "c", "b.parquet")


@pytest.mark.parametrize("nested", [[1, 2], {"k": "v"}, ("a", "b"), np.array([1.0])])
def test_a_nested_value_among_strings_is_refused(nested: object) -> None:
    values = _strings(10_000)
    values[600] = nested
    with pytest.raises(BatchRejected) as caught:
        _refuse_nested(pd.Series(values, dtype=object), "c", "b.parquet")
    assert caught.value.check == "type_change"
    assert "nested values" in str(caught.value)


def test_a_nested_value_after_a_slice_of_gaps_is_refused() -> None:
    # The first 4,096 rows are all missing: the first present values are in the next slice.
    values: list[object] = [None] * 4_096 + _strings(5_000)
    values[4_200] = [1, 2]
    with pytest.raises(BatchRejected):
        _refuse_nested(pd.Series(values, dtype=object), "c", "b.parquet")
