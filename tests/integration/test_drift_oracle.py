"""The correctness oracle: watcher's drift engine against evidently's own Report.

Every test of `watcher.drift.catalog` (evidently's 18 tabular tests) is named as
`num_method` / `cat_method` of a `DataDriftPreset` on numeric, binary and categorical
columns, with fewer than 1,000 and more than 1,000 reference rows (PAIRS below); the
kind-level thresholds (`threshold`, `num_threshold`, `cat_threshold`) are compared the same
way (THRESHOLD_CASES). evidently's `empirical_mmd` permutes with NumPy's global random
state, unseeded: its cases use a drifting column (p = 0) and a batch that is the
reference reshuffled (p = 1), where every permutation gives the same answer.

For each case, `Report([DataDriftPreset(...)], include_tests=True)` runs once (module
scope, ~0.5 s each after evidently's first import) and watcher's engine scores the same
frames. Per-column scores must agree to 1e-6; the chosen test, the threshold, each drift
flag, the drifted count/share and the dataset verdict must be identical.

Where the numbers come from in evidently's snapshot (`snapshot.dict()`):
- `metrics[]` with config type `...ValueDrift`: `config.column`, `config.method` (the
  test's display name when evidently chose it, its name when the preset was told),
  `config.threshold`, and `value` = the score;
- `metrics[]` with type `...DriftedColumnsCount`: `value.count` / `value.share`;
- `tests[]`: the ValueDrift test per column (status FAIL = drifted) and the
  DriftedColumnsCount test "share < drift_share" (FAIL = dataset drift).

evidently's dataset count runs a second, legacy code path that keeps ±inf in a column
that has no NaN (its per-column ValueDrift drops them). watcher always drops them, and
the quality checks turn ±inf into NaN before scoring anyway, so the cases below put ±inf
only into columns that also hold NaN, where both of evidently's paths agree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from watcher.drift import catalog, engine

REPO = Path(__file__).resolve().parents[2]
BIKESHARE = REPO / "examples" / "bikeshare" / "data" / "bikeshare_2011_hourly.csv"

# evidently reports the test it chose by display name.
EVIDENTLY_NAMES = catalog.BY_DISPLAY_NAME


@dataclass
class Case:
    name: str
    build: Callable[[], tuple[pd.DataFrame, pd.DataFrame]]
    numeric: list[str]
    categorical: list[str]
    prediction: engine.ColumnSpec | None = None
    per_column: dict[str, tuple[str | None, float | None]] = field(default_factory=dict)
    num_stattest: str | None = None
    cat_stattest: str | None = None
    threshold: float | None = None
    num_threshold: float | None = None
    cat_threshold: float | None = None
    drift_share: float = 0.5
    # Tests this case must exercise, so a change in data cannot quietly lose coverage.
    expect_tests: set[str] = field(default_factory=set)


def _evidently(case: Case, ref: pd.DataFrame, cur: pd.DataFrame) -> dict[str, Any]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    numeric = list(case.numeric)
    categorical = list(case.categorical)
    items: list[Any] = [
        DataDriftPreset(
            columns=numeric + categorical,
            drift_share=case.drift_share,
            num_method=case.num_stattest,
            cat_method=case.cat_stattest,
            per_column_method={c: t for c, (t, _) in case.per_column.items() if t} or None,
            per_column_threshold={c: th for c, (_, th) in case.per_column.items() if th} or None,
            threshold=case.threshold,
            num_threshold=case.num_threshold,
            cat_threshold=case.cat_threshold,
        )
    ]
    if case.prediction is not None:
        (numeric if case.prediction.kind == "numeric" else categorical).append(case.prediction.name)
        items.append(ValueDrift(column=case.prediction.name))
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    # evidently's own deprecation warnings and numpy's division-by-zero warning for a
    # category the reference never had are not what these tests are about.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        snapshot = Report(items, include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
    out = snapshot.dict()
    columns: dict[str, dict[str, Any]] = {}
    by_metric: dict[str, str] = {}
    count: dict[str, float] = {}
    for metric in out["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            by_metric[metric["id"]] = config["column"]
            columns[config["column"]] = {
                "stattest": EVIDENTLY_NAMES.get(config["method"], config["method"]),
                "score": float(metric["value"]),
                "threshold": float(config["threshold"]),
            }
        elif config["type"].endswith("DriftedColumnsCount"):
            count = metric["value"]
    dataset_drift = None
    for test in out["tests"]:
        column = by_metric.get(test["metric_config"]["metric_id"])
        if column is None:
            dataset_drift = test["status"] == "FAIL"
        else:
            columns[column]["drifted"] = test["status"] == "FAIL"
    return {
        "columns": columns,
        "dataset_drift": dataset_drift,
        "n_drifted": int(count["count"]),
        "drift_share": float(count["share"]),
    }


def _watcher(case: Case, ref: pd.DataFrame, cur: pd.DataFrame) -> engine.DriftResult:
    specs = [
        engine.ColumnSpec(c, kind, *case.per_column.get(c, (None, None)))
        for kind, names in (("numeric", case.numeric), ("categorical", case.categorical))
        for c in names
    ]
    prepared = engine.prepare_reference(ref, specs, version="oracle", prediction=case.prediction)
    return engine.score(
        prepared,
        cur,
        drift_share=case.drift_share,
        num_stattest=case.num_stattest,
        cat_stattest=case.cat_stattest,
        threshold=case.threshold,
        num_threshold=case.num_threshold,
        cat_threshold=case.cat_threshold,
    )


# --- data ------------------------------------------------------------------------------


def _mixed(n_ref: int, n_cur: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every kind of column evidently distinguishes, with holes, ±inf and new categories."""
    rng = np.random.default_rng(seed)

    def frame(n: int, drifted: bool) -> pd.DataFrame:
        shift = 0.4 if drifted else 0.0
        few_p = [0.1, 0.2, 0.3, 0.4] if drifted else [0.4, 0.3, 0.2, 0.1]
        df = pd.DataFrame(
            {
                "x_normal": rng.normal(shift, 1, n),
                "x_stable": rng.lognormal(0, 0.7, n),
                "x_int": rng.integers(0, 40, n),
                "x_few": rng.choice([1.0, 2.0, 3.0, 4.0], n, p=few_p),
                "x_binary": (rng.random(n) < (0.6 if drifted else 0.45)).astype(float),
                "x_constant": np.full(n, 7.0),
                "c_colour": rng.choice(["red", "green", "blue", "black", "white"], n),
                "c_binary": rng.choice(["yes", "no"], n, p=[0.3, 0.7] if drifted else [0.5, 0.5]),
                "c_new": rng.choice(["a", "b", "c", *(["unseen"] if drifted else [])], n),
                "c_constant": np.full(n, "same", dtype=object),
                "c_int": rng.integers(0, 6, n),
            }
        )
        df.loc[df.sample(frac=0.1, random_state=seed).index, "x_normal"] = np.nan
        df.loc[df.sample(frac=0.05, random_state=seed + 1).index, "c_colour"] = None
        if drifted:
            df.loc[df.index[:3], "x_normal"] = [np.inf, -np.inf, np.inf]
        return df

    return frame(n_ref, False), frame(n_cur, True)


def _large_with_boundary(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """1,100 reference rows: above evidently's 1,000 for most columns, but not for one
    whose 150 holes leave 950 values (evidently counts values, not rows, and picks KS)."""
    ref, cur = _mixed(1100, 900, seed)
    rng = np.random.default_rng(seed + 7)
    ref["x_holes"] = rng.normal(0, 1, len(ref))
    ref.loc[ref.index[:150], "x_holes"] = np.nan
    cur["x_holes"] = rng.normal(0.3, 1, len(cur))
    # A constant reference against a spread-out batch: std 0, normed by evidently's 0.001.
    ref["x_ref_constant"] = 1.0
    cur["x_ref_constant"] = rng.normal(1, 0.01, len(cur))
    return ref, cur


def _bikeshare(ref_days: tuple[int, int], cur_days: tuple[int, int]) -> Callable[[], Any]:
    def build() -> tuple[pd.DataFrame, pd.DataFrame]:
        data = pd.read_csv(BIKESHARE)
        # A stand-in model's output, so prediction drift has something real to follow.
        data["prediction"] = 20 + 250 * data["temp"] + 4 * data["hr"] - 30 * data["hum"]
        ref = data[data["day"].between(*ref_days)].reset_index(drop=True)
        cur = data[data["day"].between(*cur_days)].reset_index(drop=True)
        return ref, cur

    return build


BIKESHARE_EXCLUDE = ["mnth", "day", "casual", "registered", "bikers", "prediction"]
_NUM = ["x_normal", "x_stable", "x_int", "x_few", "x_binary", "x_constant"]
_CAT = ["c_colour", "c_binary", "c_new", "c_constant", "c_int"]

CASES = [
    Case(
        "small_mixed",
        lambda: _mixed(400, 300, seed=1),
        _NUM,
        _CAT,
        expect_tests={"ks", "chisquare", "z"},
    ),
    Case(
        "large_mixed_boundary",
        lambda: _large_with_boundary(seed=2),
        [*_NUM, "x_holes", "x_ref_constant"],
        _CAT,
        drift_share=0.3,
        expect_tests={"wasserstein", "jensenshannon", "ks"},
    ),
    Case(
        "small_overrides",
        lambda: _mixed(500, 350, seed=3),
        _NUM,
        _CAT,
        per_column={
            "x_normal": ("psi", None),
            "x_stable": ("hellinger", 0.2),
            "x_int": ("kl_div", None),
            "x_few": ("jensenshannon", None),
            "x_binary": ("wasserstein", 0.3),
            "c_colour": ("hellinger", None),
            "c_binary": ("psi", 0.05),
            "c_new": ("kl_div", None),
            "c_int": (None, 0.5),  # evidently's choice, with its own threshold
        },
        drift_share=0.3,  # 4 of 11 drift: a dataset drift here, none at evidently's 0.5
        expect_tests={"psi", "hellinger", "kl_div", "jensenshannon", "wasserstein", "chisquare"},
    ),
    Case(
        "large_kind_defaults",
        lambda: _mixed(2500, 1500, seed=4),
        _NUM,
        _CAT,
        num_stattest="psi",
        cat_stattest="hellinger",
        per_column={"x_stable": ("ks", 0.01), "c_binary": ("z", None), "x_few": (None, 0.05)},
        expect_tests={"psi", "hellinger", "ks", "z"},
    ),
    Case(
        "bikeshare_small",
        _bikeshare((1, 14), (121, 127)),
        [],
        [],
        prediction=engine.ColumnSpec("prediction", "numeric"),
        expect_tests={"ks", "chisquare", "z"},
    ),
    Case(
        "bikeshare_large",
        _bikeshare((1, 59), (60, 120)),
        [],
        [],
        prediction=engine.ColumnSpec("prediction", "numeric"),
        expect_tests={"wasserstein", "jensenshannon"},
    ),
]


def _every_test_frames(n_ref: int, n_cur: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Columns on which every test has a defined answer: one that drifts, one whose batch
    is the reference reshuffled (no drift, whatever the test), binary and few-valued ones.
    No holes in the categorical columns: evidently's Fisher and G tests need both sides
    equally long (they fail otherwise, in evidently and in watcher alike)."""
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame(
        {
            "n_shift": rng.normal(0, 1, n_ref),
            "n_binary": (rng.random(n_ref) < 0.45).astype(float),
            "n_few": rng.choice([1.0, 2.0, 3.0, 4.0], n_ref, p=[0.4, 0.3, 0.2, 0.1]),
            "c_shift": rng.choice(["red", "green", "blue", "black"], n_ref),
            "c_binary": rng.choice(["yes", "no"], n_ref, p=[0.5, 0.5]),
        }
    )
    cur = pd.DataFrame(
        {
            "n_shift": rng.normal(0.6, 1, n_cur),
            "n_binary": (rng.random(n_cur) < 0.6).astype(float),
            "n_few": rng.choice([1.0, 2.0, 3.0, 4.0], n_cur, p=[0.1, 0.2, 0.3, 0.4]),
            "c_shift": rng.choice(["red", "green", "blue", "black", "new"], n_cur),
            "c_binary": rng.choice(["yes", "no"], n_cur, p=[0.3, 0.7]),
        }
    )
    ref.loc[ref.sample(frac=0.05, random_state=seed).index, "n_shift"] = np.nan
    # Same values as the reference in another order (and as many: the permutation tests
    # then find no drift deterministically).
    n = min(n_ref, n_cur)
    base = rng.normal(5, 2, n_ref)
    ref["n_same"] = base
    cur["n_same"] = rng.permutation(np.resize(base[:n], n_cur))
    # Categories in (nearly) the same shares on both sides, however many rows.
    for name, values in (("c_same", ["a", "b", "c"]), ("c_binary_same", ["p", "q"])):
        ref[name] = rng.permutation(np.resize(values, n_ref))
        cur[name] = rng.permutation(np.resize(values, n_cur))
    return ref, cur


# Each Report names one numeric and one categorical test (evidently's Report costs about
# a second whatever it holds): every test, on numeric or categorical columns or both.
PAIRS: list[tuple[str | None, str | None]] = [
    ("ks", "chisquare"),
    ("wasserstein", "z"),
    ("ed", "g_test"),
    ("t_test", "fisher_exact"),
    ("anderson", "TVD"),
    ("cramer_von_mises", "jensenshannon"),
    ("es", "psi"),
    ("mannw", "kl_div"),
    ("empirical_mmd", "hellinger"),
    ("jensenshannon", None),
    ("psi", None),
    ("kl_div", None),
    ("hellinger", None),
]


def _every_test_case(num_test: str | None, cat_test: str | None, size: str) -> Case:
    n_ref, n_cur = (400, 400) if size == "small" else (1200, 1200)
    numeric = ["n_shift", "n_same", "n_binary", "n_few"]
    categorical = ["c_shift", "c_same", "c_binary"]
    if cat_test is None:
        categorical = []
    if cat_test == "fisher_exact":  # binary columns only: evidently refuses any other
        categorical = ["c_binary", "c_binary_same"]
    # The permutation tests run in evidently's Report twice (a column's drift and the
    # dataset's count) and once in watcher: few rows and columns keep them to seconds.
    if num_test == "empirical_mmd":  # 100 permutations of an (n + m)^2 kernel matrix
        n_ref, n_cur = (150, 150) if size == "small" else (1001, 60)
        numeric = ["n_shift", "n_same"] if size == "small" else ["n_shift"]
    if cat_test == "TVD":  # 1,000 permutations in pandas: about 3 s per column and call
        n_ref, n_cur = (150, 150) if size == "small" else (1001, 60)
        categorical = ["c_shift"]
    seed = 100 + PAIRS.index((num_test, cat_test)) * 2 + (size == "large")
    return Case(
        f"{num_test}+{cat_test}_{size}",
        lambda: _every_test_frames(n_ref, n_cur, seed),
        numeric,
        categorical,
        num_stattest=num_test,
        cat_stattest=cat_test,
        drift_share=0.4,
        expect_tests={t for t in (num_test, cat_test) if t},
    )


EVERY_TEST_CASES = [_every_test_case(n, c, size) for n, c in PAIRS for size in ("small", "large")]


def test_every_test_is_in_the_oracle() -> None:
    named = {t for pair in PAIRS for t in pair if t}
    assert named == set(catalog.TESTS)
    numeric = {n for n, _ in PAIRS if n}
    categorical = {c for _, c in PAIRS if c}
    for name, info in catalog.TESTS.items():
        assert ("numeric" in info.kinds) == (name in numeric), name
        assert ("categorical" in info.kinds) == (name in categorical), name


THRESHOLD_CASES = [
    # evidently's precedence: per column, then the kind's, then `threshold`, then the
    # test's default; on evidently's automatic choice of test and on a named one.
    Case(
        "thresholds_small_auto",
        lambda: _mixed(400, 300, seed=11),
        _NUM,
        _CAT,
        threshold=0.2,
        num_threshold=0.01,
        per_column={"x_stable": (None, 0.5)},
        expect_tests={"ks", "chisquare", "z"},
    ),
    Case(
        "thresholds_large_named",
        lambda: _mixed(1500, 1200, seed=12),
        _NUM,
        _CAT,
        num_stattest="ed",
        threshold=0.05,
        cat_threshold=0.02,
        per_column={"c_colour": ("hellinger", None), "x_int": ("anderson", 0.3)},
        expect_tests={"ed", "jensenshannon", "hellinger", "anderson"},
    ),
]


@dataclass
class Outcome:
    case: Case
    evidently: dict[str, Any]
    watcher: engine.DriftResult


@pytest.fixture(
    scope="module", params=CASES + EVERY_TEST_CASES + THRESHOLD_CASES, ids=lambda c: c.name
)
def outcome(request: pytest.FixtureRequest) -> Outcome:
    case: Case = request.param
    ref, cur = case.build()
    if case.name.startswith("bikeshare"):
        # Kinds as evidently infers them; the inference itself is checked below.
        specs = engine.infer_columns(ref, exclude=BIKESHARE_EXCLUDE)
        case.numeric = [s.name for s in specs if s.kind == "numeric"]
        case.categorical = [s.name for s in specs if s.kind == "categorical"]
    return Outcome(case, _evidently(case, ref, cur), _watcher(case, ref, cur))


# --- the oracle --------------------------------------------------------------------------


def test_per_column_scores_equal_evidentlys(outcome: Outcome) -> None:
    ours = dict(outcome.watcher.columns)
    if outcome.watcher.prediction is not None:
        ours[outcome.watcher.prediction.column] = outcome.watcher.prediction
    theirs = outcome.evidently["columns"]
    assert set(ours) == set(theirs)
    for name, col in ours.items():
        expected = theirs[name]
        assert col.stattest == expected["stattest"], name
        assert col.threshold == expected["threshold"], name
        assert col.score == pytest.approx(expected["score"], abs=1e-6, rel=0), name
        assert col.drifted == expected["drifted"], name


def test_dataset_verdict_equals_evidentlys(outcome: Outcome) -> None:
    result, theirs = outcome.watcher, outcome.evidently
    assert result.n_columns == len(outcome.case.numeric) + len(outcome.case.categorical)
    assert result.n_drifted == theirs["n_drifted"]
    assert result.drift_share == pytest.approx(theirs["drift_share"], abs=1e-12)
    assert result.dataset_drift == theirs["dataset_drift"]


def test_case_exercises_its_tests(outcome: Outcome) -> None:
    used = {c.stattest for c in outcome.watcher.columns.values()}
    assert outcome.case.expect_tests <= used
    # Both outcomes appear somewhere, so the flags are really compared on both sides.
    flags = {c.drifted for c in outcome.watcher.columns.values()}
    assert flags == {True, False}


def test_prediction_drift_is_scored_apart_from_features(outcome: Outcome) -> None:
    if outcome.case.prediction is None:
        assert outcome.watcher.prediction is None
        return
    prediction = outcome.watcher.prediction
    assert prediction is not None
    assert prediction.column == "prediction"
    assert "prediction" not in outcome.watcher.columns
    # Summer is warmer than January: the stand-in model's output moves.
    assert prediction.drifted


def test_infer_columns_matches_evidentlys_inference() -> None:
    from evidently import Dataset

    rng = np.random.default_rng(5)
    n = 200
    frame = pd.DataFrame(
        {
            "f_float": rng.normal(size=n),
            "f_float32": rng.normal(size=n).astype("float32"),
            "i_low": rng.integers(0, 10, n),
            "i_high": rng.integers(0, 500, n),
            "s_low": rng.choice(["a", "b", "c"], n),
            "s_text": [f"free text number {i}" for i in range(n)],
            "s_string_dtype": pd.Series(rng.choice(["x", "y"], n), dtype="string"),
            "b_bool": rng.random(n) < 0.5,
            "k_category": pd.Categorical(rng.choice(["p", "q"], n)),
            "d_date": pd.date_range("2024-01-01", periods=n, freq="h"),
            "o_mixed": [1, "a"] * (n // 2),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        definition = Dataset.from_pandas(frame).data_definition
    ours = engine.infer_columns(frame)
    assert [s.name for s in ours if s.kind == "numeric"] == list(definition.get_numerical_columns())
    assert [s.name for s in ours if s.kind == "categorical"] == list(
        definition.get_categorical_columns()
    )


@pytest.mark.parametrize(("ref_days", "cur_days"), [((1, 14), (121, 127)), ((1, 59), (60, 120))])
def test_bikeshare_kinds_match_evidentlys_inference_on_the_batch(
    ref_days: tuple[int, int], cur_days: tuple[int, int]
) -> None:
    # evidently infers kinds from the current batch, watcher from the reference: on this
    # data they agree, so the bikeshare cases above compare like with like.
    from evidently import Dataset

    ref, cur = _bikeshare(ref_days, cur_days)()
    ours = engine.infer_columns(ref, exclude=BIKESHARE_EXCLUDE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        definition = Dataset.from_pandas(cur.drop(columns=BIKESHARE_EXCLUDE)).data_definition
    assert {s.name for s in ours if s.kind == "numeric"} == set(definition.get_numerical_columns())
    assert {s.name for s in ours if s.kind == "categorical"} == set(
        definition.get_categorical_columns()
    )


def test_catalog_agrees_with_evidentlys_registry() -> None:
    """Names, display names, kinds and default thresholds: evidently's registered tests,
    all but its two text-only ones, are exactly the catalog's."""
    from evidently.legacy.calculations import stattests
    from evidently.legacy.calculations.stattests import registry

    # evidently's own tests (a test module may have registered one of its own).
    builtin = [t for t in vars(stattests).values() if isinstance(t, registry.StatTest)]
    kinds = {"num": "numeric", "cat": "categorical"}
    theirs = {}
    for test in builtin:
        name = test.name
        allowed = {t.value for t in test.allowed_feature_types}
        if allowed == {"text"}:
            continue
        theirs[name] = (
            test.display_name,
            frozenset(kinds[t] for t in allowed),
            test.default_threshold,
        )
    ours = {
        name: (t.display_name, t.kinds, t.default_threshold) for name, t in catalog.TESTS.items()
    }
    assert ours == theirs
    assert len(builtin) == 20
