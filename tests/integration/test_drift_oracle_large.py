"""The oracle on a large reference: every fast-path test against evidently's own function.

The fast path finds a batch's score from the reference's sorted values, running
integrals, counts and bin edges, without walking the reference (issue 18). These cases
hold it to evidently 0.7.23 on a reference of 150,000 rows, with what makes that hard:
many ties (values rounded to 0.1, integers), a constant column, a float32 and an int64
column (numpy computes bin edges in the column's type), holes and ±inf, and batches of
3 rows, 500 rows and 20,000 rows (above SciPy's 10,000, where KS turns asymptotic).

evidently's test function per column (`StatTest.__call__`, what its Report runs per
column) is called on the cleaned columns, as evidently's Report hands them over
(tests/integration/test_drift_oracle.py compares the full Report on smaller data); watcher's
`engine.score` runs with the test as `num_stattest` / `cat_stattest`. The reference is
built and prepared once for the module.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

from watcher.drift import catalog, engine

pytest.importorskip("evidently", reason="the oracle needs the reports extra (evidently)")

N_REF = 150_000
NUMERIC = ["x_normal", "x_ties", "x_int", "x_few", "x_constant", "x_f32", "x_skew"]
CATEGORICAL = ["c_colour", "c_binary"]
FAST = [name for name, info in catalog.TESTS.items() if info.path == "fast"]


def _frame(n: int, seed: int, drift: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "x_normal": rng.normal(drift, 1, n),
            "x_ties": np.round(rng.normal(drift, 1, n), 1),
            "x_int": rng.integers(0, 500 + int(drift * 100), n).astype(np.int64),
            "x_few": rng.choice([1.0, 2.0, 3.0, 4.0], n),
            "x_constant": np.full(n, 7.0),
            "x_f32": rng.normal(drift, 2, n).astype(np.float32),
            "x_skew": rng.lognormal(drift, 1.5, n),
            "c_colour": rng.choice(["red", "green", "blue", "black", *(["new"] * bool(drift))], n),
            "c_binary": rng.choice(["yes", "no"], n, p=[0.5 - drift / 4, 0.5 + drift / 4]),
        }
    )
    holes = rng.random(n) < 0.05
    df.loc[holes, "x_normal"] = np.nan
    df.loc[rng.random(n) < 0.03, "c_colour"] = None
    if n > 10:
        df.loc[df.index[:2], "x_normal"] = [np.inf, -np.inf]
        df.loc[df.index[2], "x_skew"] = np.nan
    return df


@pytest.fixture(scope="module")
def reference() -> tuple[pd.DataFrame, engine.PreparedReference]:
    ref = _frame(N_REF, seed=1, drift=0.0)
    specs = [engine.ColumnSpec(c, "numeric") for c in NUMERIC]
    specs += [engine.ColumnSpec(c, "categorical") for c in CATEGORICAL]
    return ref, engine.prepare_reference(ref, specs, version="large")


BATCHES = {
    "3_rows": (3, 0.0),
    "500_rows_drifting": (500, 0.3),
    "20k_rows_stable": (20_000, 0.0),
    "20k_rows_drifting": (20_000, 0.2),
}


def _evidently_score(test: str, ref: pd.Series, cur: pd.Series, kind: Any) -> float:
    def clean(s: pd.Series) -> pd.Series:
        return s.replace([-np.inf, np.inf], np.nan).dropna()

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        result = catalog.evidently_stattest(test)(
            clean(ref), clean(cur), catalog.evidently_column_type(kind), None
        )
    return float(result.drift_score)


@pytest.mark.parametrize("batch", list(BATCHES))
def test_every_fast_test_matches_evidently_on_a_large_reference(
    reference: tuple[pd.DataFrame, engine.PreparedReference], batch: str
) -> None:
    ref, prepared = reference
    n, drift = BATCHES[batch]
    cur = _frame(n, seed=10 + n, drift=drift)
    checked = 0
    for test in FAST:
        kinds = catalog.TESTS[test].kinds
        result = engine.score(
            prepared,
            cur,
            num_stattest=test if "numeric" in kinds else None,
            cat_stattest=test if "categorical" in kinds else None,
        )
        assert not result.failures, result.failures
        for name, column in result.columns.items():
            if column.stattest != test:
                continue  # a column of the other kind, on evidently's default choice
            kind = column.kind
            expected = _evidently_score(test, ref[name], cur[name], kind)
            assert column.score == pytest.approx(expected, abs=1e-6, rel=1e-6, nan_ok=True), (
                f"{test} on {name} ({batch}): watcher {column.score}, evidently {expected}"
            )
            checked += 1
    # every fast test on every column of its kinds
    expected_checks = sum(
        len(NUMERIC) * ("numeric" in catalog.TESTS[t].kinds)
        + len(CATEGORICAL) * ("categorical" in catalog.TESTS[t].kinds)
        for t in FAST
    )
    assert checked == expected_checks


def test_default_choice_on_a_large_reference_matches_evidently(
    reference: tuple[pd.DataFrame, engine.PreparedReference],
) -> None:
    """Over 1,000 reference values evidently picks normed Wasserstein or Jensen-Shannon."""
    ref, prepared = reference
    cur = _frame(5_000, seed=5, drift=0.25)
    result = engine.score(prepared, cur)
    chosen = {name: c.stattest for name, c in result.columns.items()}
    assert chosen["x_normal"] == "wasserstein"
    assert chosen["x_few"] == "jensenshannon"
    assert chosen["c_colour"] == "jensenshannon"
    for name, column in result.columns.items():
        expected = _evidently_score(column.stattest, ref[name], cur[name], column.kind)
        assert column.score == pytest.approx(expected, abs=1e-6, rel=1e-6, nan_ok=True), name
