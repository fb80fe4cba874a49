"""Long pandas calls on big batches, in slices, so other threads get the GIL in between.

On an object (text) column, pandas' ``isna``, ``isin`` and ``value_counts`` and pyarrow's
conversion of a text column to Python strings each hold the GIL for the whole call: on a
1M-row batch 40-200 ms apiece, during which the `/metrics` and health threads cannot
answer (a scrape waited up to 105 ms). Done `ROWS` rows at a time, the scoring thread
gives the GIL up between slices (the interpreter's switch interval is 5 ms), so a scrape
waits for one slice at most. The results are those of the single call; frames and series
of at most `ROWS` rows take the single call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 65_536


def _slices(n: int) -> range:
    return range(0, n, ROWS)


def _is_long(series: pd.Series) -> bool:
    return len(series) > ROWS and series.dtype == object


def notna(series: pd.Series) -> npt.NDArray[np.bool_]:
    """``series.notna().to_numpy()``."""
    if not _is_long(series):
        return np.asarray(series.notna().to_numpy(), dtype=bool)
    values = series.to_numpy()
    return np.concatenate([pd.notna(values[i : i + ROWS]) for i in _slices(len(values))])


def isin(series: pd.Series, values: Iterable[Any]) -> npt.NDArray[np.bool_]:
    """``series.isin(values).to_numpy()``."""
    if not _is_long(series):
        return np.asarray(series.isin(values).to_numpy(), dtype=bool)
    wanted = list(values)
    return np.concatenate(
        [series.iloc[i : i + ROWS].isin(wanted).to_numpy() for i in _slices(len(series))]
    )


def value_counts(series: pd.Series) -> pd.Series:
    """``series.value_counts(dropna=True, sort=False)``: count per value, missing dropped."""
    if not _is_long(series):
        return series.value_counts(dropna=True, sort=False)
    parts = [
        series.iloc[i : i + ROWS].value_counts(dropna=True, sort=False)
        for i in _slices(len(series))
    ]
    # Summing the per-slice counts is a group-by over the distinct values only.
    return pd.concat(parts).groupby(level=0, sort=False, dropna=True).sum()


def read_parquet(source: IO[bytes]) -> pd.DataFrame:
    """``pd.read_parquet(source)`` (pyarrow engine, numpy dtypes). The file is read by
    pyarrow without the GIL; only the conversion to pandas is done in slices."""
    # One file, read as `pq.read_table` reads it, without its dataset layer: ~0.7 ms less
    # CPU on a 10k-row batch of 15 columns (benchmarks/bench_scale.py, Part 1b).
    table = pq.ParquetFile(source).read()
    if table.num_rows <= ROWS or not any(_is_text(f.type) for f in table.schema):
        return pd.DataFrame(table.to_pandas())
    parts: list[pd.DataFrame] = [table.slice(i, ROWS).to_pandas() for i in _slices(table.num_rows)]
    default_index = all(isinstance(p.index, pd.RangeIndex) for p in parts)
    return pd.concat(parts, ignore_index=default_index)


def _is_text(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_dictionary(t)
        or pa.types.is_nested(t)
    )
