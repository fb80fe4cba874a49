"""The bundled Bikeshare 2011 example: turn the raw hourly table into production-like rows.

The raw file (examples/bikeshare/data/) has `day` (day of the year) and `hr` but no time
stamp or id. Production batches need both: `ts` is 2011-01-01 + day + hour (UTC) and `id`
is the hour's number in the year, unique and stable, so label files can refer to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

YEAR_START = pd.Timestamp("2011-01-01", tz="UTC")


def prepare_bikeshare(raw: pd.DataFrame) -> pd.DataFrame:
    """Add `ts` and `id` to the raw Bikeshare table, in time order."""
    out = raw.copy()
    out["hr"] = pd.to_numeric(out["hr"]).astype(int)
    out["ts"] = (
        YEAR_START
        + pd.to_timedelta(out["day"] - 1, unit="D")
        + pd.to_timedelta(out["hr"], unit="h")
    )
    out["id"] = ((out["day"] - 1) * 24 + out["hr"]).astype(int)
    return out.sort_values("ts", kind="stable").reset_index(drop=True)


def load_bikeshare(path: Path) -> pd.DataFrame:
    """Read the bundled CSV and prepare it."""
    return prepare_bikeshare(pd.read_csv(path))


def week_number(frame: pd.DataFrame, ts_column: str = "ts") -> pd.Series:
    """1-based week of 2011 of each row (days 1-7 are week 1)."""
    return ((frame[ts_column] - YEAR_START).dt.days // 7 + 1).astype(int)


def weekly_batches(
    frame: pd.DataFrame, *, first_week: int = 1, ts_column: str = "ts"
) -> Iterator[tuple[int, pd.DataFrame]]:
    """(week, rows) for each week from `first_week` on, in order."""
    weeks = week_number(frame, ts_column)
    for week in sorted(int(w) for w in weeks.unique()):
        if week >= first_week:
            yield week, frame[weeks == week].reset_index(drop=True)


LEAKS = ("casual", "registered")  # they add up to the target: never in a production batch


def batch_and_labels(
    rows: pd.DataFrame, prediction: Any, *, target: str = "bikers", id_column: str = "id"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A production batch (features, `prediction`, id, ts: no target, no leaks) and the
    label file that arrives later (id + target)."""
    batch = rows.drop(columns=[target, *LEAKS], errors="ignore").copy()
    batch["prediction"] = prediction
    return batch, rows[[id_column, target]].copy()
