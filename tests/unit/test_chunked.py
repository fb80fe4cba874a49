"""`watcher.chunked` gives what the single pandas/pyarrow call gives, on columns long enough
to be sliced (more than `chunked.ROWS` rows), with the values that make those calls subtle:
None and NaN, numbers mixed with text, a category that appears in one slice only."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from watcher import chunked

N = 3 * chunked.ROWS + 123


def _mixed() -> pd.Series:
    rng = np.random.default_rng(5)
    values: list[object] = list(rng.choice(["a", "b", "c", "d"], N))
    for i in range(0, N, 7):
        values[i] = None
    for i in range(3, N, 11):
        values[i] = float("nan")
    for i in range(5, N, 13):
        values[i] = 1  # a number among the text
    values[N - 1] = "only-in-the-last-slice"
    return pd.Series(values, dtype=object)


def test_notna_isin_value_counts_match_the_single_call() -> None:
    s = _mixed()
    np.testing.assert_array_equal(chunked.notna(s), s.notna().to_numpy())
    wanted = ["a", "c", 1]
    np.testing.assert_array_equal(chunked.isin(s, wanted), s.isin(wanted).to_numpy())
    got = chunked.value_counts(s)
    want = s.value_counts(dropna=True, sort=False)
    assert got.to_dict() == want.to_dict()
    assert got["only-in-the-last-slice"] == 1


def test_read_parquet_matches_pandas() -> None:
    rng = np.random.default_rng(6)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=N),
            "c": rng.choice(["x", "y", None], N),
            "d": pd.Categorical(rng.choice(["p", "q"], N)),
            "t": pd.date_range("2024-01-01", periods=N, freq="s", tz="UTC"),
        }
    )
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    buf.seek(0)
    want = pd.read_parquet(buf)
    buf.seek(0)
    got = chunked.read_parquet(buf)
    pd.testing.assert_frame_equal(got, want)
    assert isinstance(got.index, pd.RangeIndex)
