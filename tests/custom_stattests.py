"""Custom stat tests for tests/integration/test_drift_custom.py, named as a user names them in
the config (`stattest = "custom_stattests:mean_shift"`; pytest puts tests/, the folder of the
root conftest.py, on the import path; the test's subprocesses get it as PYTHONPATH).

Written the way evidently documents its own custom tests: a function taking (reference,
current, column type, threshold) and returning (score, drifted), or a `StatTest` object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests import StatTest, register_stattest
from evidently.legacy.core import ColumnType

CALLS: list[tuple[int, int, str, float]] = []  # (len ref, len cur, column type, threshold)


def mean_shift(ref: pd.Series, cur: pd.Series, column_type: Any, threshold: float) -> Any:
    """|mean(cur) - mean(ref)| in reference standard deviations; drift above threshold."""
    CALLS.append((len(ref), len(cur), column_type.value, threshold))
    score = abs(float(cur.mean()) - float(ref.mean())) / max(float(ref.std()), 1e-9)
    return score, score > threshold


def share_moved(ref: pd.Series, cur: pd.Series, column_type: Any, threshold: float) -> Any:
    """Total variation between the category shares of both sides."""
    CALLS.append((len(ref), len(cur), column_type.value, threshold))
    p = ref.value_counts(normalize=True)
    q = cur.value_counts(normalize=True)
    keys = p.index.union(q.index)
    score = 0.5 * float(np.abs(p.reindex(keys, fill_value=0) - q.reindex(keys, fill_value=0)).sum())
    return score, score >= threshold


def _median_shift(ref: pd.Series, cur: pd.Series, column_type: Any, threshold: float) -> Any:
    score = abs(float(cur.median()) - float(ref.median())) / max(float(ref.std()), 1e-9)
    return score, score > threshold


# An evidently StatTest object with its own default threshold.
median_shift = StatTest(
    name="watcher_test_median_shift",
    display_name="median shift (sd)",
    allowed_feature_types=[ColumnType.Numerical],
    default_threshold=0.25,
)
register_stattest(median_shift, _median_shift)


# --- broken ones ----------------------------------------------------------------------------


def raises(ref: pd.Series, cur: pd.Series, column_type: Any, threshold: float) -> Any:
    raise RuntimeError("this test is broken on purpose")


def returns_nan(ref: pd.Series, cur: pd.Series, column_type: Any, threshold: float) -> Any:
    return float("nan"), False


def returns_three(ref: pd.Series, cur: pd.Series, column_type: Any, threshold: float) -> Any:
    return 0.5, True, "extra"


def returns_text_flag(ref: pd.Series, cur: pd.Series, column_type: Any, threshold: float) -> Any:
    return 0.5, "yes"


def two_parameters(ref: pd.Series, cur: pd.Series) -> Any:
    return 0.0, False


NOT_A_FUNCTION = 42
