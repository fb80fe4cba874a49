"""Unit tests of the drift engine: choice of test, overrides, missing values, edge columns,
prediction drift, the JSON shape, and the fast paths against SciPy/numpy themselves.

Agreement with evidently's Report is in tests/integration/test_drift_oracle.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from watcher.config import ColumnsConfig, DirectorySourceConfig, DriftConfig, ModelConfig
from watcher.drift import engine, stattests
from watcher.drift.engine import ColumnSpec
from watcher.errors import BatchRejected, ConfigError, ReferenceDataError


def _frames(n_ref: int, n_cur: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def frame(n: int, shift: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "x": rng.normal(shift, 1, n),
                "y": rng.normal(0, 1, n),
                "c": rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1]),
                "pred": rng.normal(shift * 2, 1, n),
            }
        )

    return frame(n_ref, 0.0), frame(n_cur, 0.5)


SPECS = [ColumnSpec("x", "numeric"), ColumnSpec("y", "numeric"), ColumnSpec("c", "categorical")]


def _score(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    specs: list[ColumnSpec] = SPECS,
    *,
    prediction: ColumnSpec | None = None,
    **kw: Any,
) -> engine.DriftResult:
    prepared = engine.prepare_reference(ref, specs, version="v1", prediction=prediction)
    return engine.score(prepared, cur, **kw)


# --- evidently's choice of test ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "ref_values", "cur_values", "n_ref", "expected"),
    [
        ("numeric", np.arange(10.0), np.arange(10.0), 500, "ks"),
        ("numeric", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 500, "chisquare"),
        ("numeric", [0.0, 1.0], [0.0, 1.0], 500, "z"),
        # Distinct values are counted over reference and batch together.
        ("numeric", [0.0, 1.0], [0.0, 1.0, 2.0], 500, "chisquare"),
        ("numeric", [1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 6.0], 500, "ks"),
        ("categorical", ["a", "b"], ["a", "b"], 500, "z"),
        ("categorical", ["a", "b"], ["c"], 500, "chisquare"),
        ("categorical", list("abcdefghijklmnop"), list("abc"), 500, "chisquare"),
        ("numeric", np.arange(10.0), np.arange(10.0), 1000, "ks"),
        ("numeric", np.arange(10.0), np.arange(10.0), 1001, "wasserstein"),
        ("numeric", [0.0, 1.0], [0.0, 1.0], 1001, "jensenshannon"),
        ("categorical", ["a", "b"], ["a", "b"], 1001, "jensenshannon"),
    ],
)
def test_default_test_follows_evidently(
    kind: str, ref_values: list[object], cur_values: list[object], n_ref: int, expected: str
) -> None:
    ref = pd.DataFrame({"v": np.resize(np.asarray(ref_values, dtype=object), n_ref)})
    cur = pd.DataFrame({"v": np.resize(np.asarray(cur_values, dtype=object), 300)})
    if kind == "numeric":
        ref, cur = ref.astype(float), cur.astype(float)
    result = _score(ref, cur, [ColumnSpec("v", kind)])
    assert result.columns["v"].stattest == expected


def test_reference_size_counts_values_not_rows() -> None:
    # 1,200 rows, 300 of them empty: 900 values, so evidently's small-reference KS applies.
    ref, cur = _frames(1200, 400)
    ref.loc[ref.index[:300], "x"] = np.nan
    result = _score(ref, cur)
    assert result.columns["x"].stattest == "ks"
    assert result.columns["y"].stattest == "wasserstein"


# --- overrides -----------------------------------------------------------------------------


def test_per_column_test_and_threshold_win_over_kind_defaults() -> None:
    ref, cur = _frames(2000, 800)
    specs = [
        ColumnSpec("x", "numeric", stattest="ks", threshold=0.01),
        ColumnSpec("y", "numeric", threshold=0.5),
        ColumnSpec("c", "categorical", stattest="chisquare"),
    ]
    result = _score(ref, cur, specs, num_stattest="psi", cat_stattest="hellinger")
    x, y, c = result.columns["x"], result.columns["y"], result.columns["c"]
    assert (x.stattest, x.threshold) == ("ks", 0.01)
    # The kind default picks the test; the column's own threshold still applies to it.
    assert (y.stattest, y.threshold) == ("psi", 0.5)
    assert (c.stattest, c.threshold) == ("chisquare", 0.05)


def test_kind_defaults_apply_with_the_tests_own_threshold() -> None:
    ref, cur = _frames(400, 300)
    result = _score(ref, cur, num_stattest="wasserstein", cat_stattest="jensenshannon")
    assert {n: (c.stattest, c.threshold) for n, c in result.columns.items()} == {
        "x": ("wasserstein", 0.1),
        "y": ("wasserstein", 0.1),
        "c": ("jensenshannon", 0.1),
    }


def test_threshold_decides_the_flag() -> None:
    ref, cur = _frames(2000, 2000)
    loose = _score(ref, cur, [ColumnSpec("x", "numeric", threshold=0.9)]).columns["x"]
    strict = _score(ref, cur, [ColumnSpec("x", "numeric", threshold=0.2)]).columns["x"]
    assert loose.score == strict.score
    assert 0.2 < loose.score < 0.9
    assert (loose.drifted, strict.drifted) == (False, True)


@pytest.mark.parametrize(
    ("spec", "kw"),
    [
        (ColumnSpec("x", "numeric", stattest="chisquare"), {}),
        (ColumnSpec("c", "categorical", stattest="wasserstein"), {}),
        (ColumnSpec("c", "categorical", stattest="ks"), {}),
        (ColumnSpec("x", "numeric", stattest="bogus"), {}),
        (ColumnSpec("x", "numeric", threshold=0.0), {}),
        (ColumnSpec("x", "numeric"), {"num_stattest": "z"}),
        (ColumnSpec("c", "categorical"), {"cat_stattest": "wasserstein"}),
    ],
)
def test_a_test_evidently_refuses_for_the_kind_is_a_config_error(
    spec: ColumnSpec, kw: dict[str, str]
) -> None:
    ref, cur = _frames(300, 300)
    with pytest.raises(ConfigError):
        _score(ref, cur, [spec], **kw)


def test_specs_from_config(tmp_path: Path) -> None:
    model = ModelConfig(
        source=DirectorySourceConfig(path=tmp_path),
        columns=ColumnsConfig(numeric=["x", "y"], categorical=["c"], prediction="pred"),
        drift=DriftConfig(
            num_stattest="psi",
            columns={"x": {"stattest": "ks", "threshold": 0.01}, "c": {"threshold": 0.2}},
        ),
    )
    features, prediction = engine.specs_from_config(model)
    assert features == [
        ColumnSpec("x", "numeric", "ks", 0.01),
        ColumnSpec("y", "numeric"),
        ColumnSpec("c", "categorical", None, 0.2),
    ]
    assert prediction == ColumnSpec("pred", "numeric")  # retrain.task defaults to regression

    model.retrain.task = "classification"
    assert engine.specs_from_config(model)[1] == ColumnSpec("pred", "categorical")

    model.drift.num_stattest = "chisquare"
    with pytest.raises(ConfigError, match="num_stattest"):
        engine.specs_from_config(model)


# --- infer_columns -------------------------------------------------------------------------


def test_infer_columns_follows_evidentlys_dtype_rules() -> None:
    n = 100
    df = pd.DataFrame(
        {
            "f": np.linspace(0, 1, n),
            "i_few": np.arange(n) % 10,  # 10 distinct: categorical
            "i_many": np.arange(n) % 11,  # 11 distinct: numeric
            "s": ["a", "b"] * (n // 2),
            "text": [f"sentence {i}" for i in range(n)],
            "flag": [True, False] * (n // 2),
            "when": pd.date_range("2024-01-01", periods=n, freq="D"),
            "empty": np.full(n, np.nan),
            "target": np.linspace(0, 1, n),
        }
    )
    specs = engine.infer_columns(df, exclude=["target"])
    assert [(s.name, s.kind) for s in specs] == [
        ("f", "numeric"),
        ("i_few", "categorical"),
        ("i_many", "numeric"),
        ("s", "categorical"),
        ("flag", "categorical"),
    ]
    assert all(s.stattest is None and s.threshold is None for s in specs)


# --- missing values ------------------------------------------------------------------------


def test_nan_and_inf_are_left_out_like_evidently() -> None:
    ref, cur = _frames(600, 400)
    clean = _score(ref, cur)
    holey_ref, holey_cur = ref.copy(), cur.copy()
    extra_ref = pd.DataFrame({"x": [np.nan, np.inf], "y": [np.nan, -np.inf], "c": [None, np.nan]})
    extra_cur = pd.DataFrame({"x": [np.nan, -np.inf], "y": [np.inf, np.nan], "c": [np.nan, None]})
    holey = _score(
        pd.concat([holey_ref, extra_ref], ignore_index=True),
        pd.concat([holey_cur, extra_cur], ignore_index=True),
    )
    for name in ("x", "y", "c"):
        assert holey.columns[name].score == pytest.approx(clean.columns[name].score, rel=1e-12)
        assert holey.columns[name].stattest == clean.columns[name].stattest


def test_all_missing_column_in_the_batch_is_skipped_and_not_counted() -> None:
    # evidently refuses the whole report on an empty column; watcher scores the others and
    # says which column it left out (the quality check quarantines such a batch by default).
    ref, cur = _frames(400, 300)
    cur["y"] = np.nan
    result = _score(ref, cur)
    assert set(result.columns) == {"x", "c"}
    assert result.n_columns == 2
    assert result.skipped == {"y": "no values in the batch (all missing or infinite)"}
    assert result.drift_share == result.n_drifted / 2


def test_a_batch_with_no_value_in_any_feature_is_rejected() -> None:
    ref, cur = _frames(400, 300)
    cur["x"], cur["y"], cur["c"] = np.nan, np.inf, None
    with pytest.raises(BatchRejected) as err:
        _score(ref, cur)
    assert err.value.check == "all_missing"


def test_all_missing_reference_column_is_a_reference_error() -> None:
    ref, _ = _frames(400, 300)
    ref["y"] = np.nan
    with pytest.raises(ReferenceDataError, match=r"\['y'\]"):
        engine.prepare_reference(ref, SPECS, version="v7")


def test_all_missing_prediction_in_the_reference_drops_prediction_drift() -> None:
    ref, cur = _frames(400, 300)
    ref["pred"] = np.nan
    result = _score(ref, cur, prediction=ColumnSpec("pred", "numeric"))
    assert result.prediction is None
    assert result.skipped == {"pred": "the reference has no prediction values"}
    assert result.n_columns == 3


# --- single-valued columns -----------------------------------------------------------------


def test_one_and_the_same_value_on_both_sides_is_no_drift() -> None:
    ref = pd.DataFrame({"k": ["only"] * 300, "v": [3.0] * 300})
    cur = pd.DataFrame({"k": ["only"] * 200, "v": [3.0] * 200})
    specs = [ColumnSpec("k", "categorical"), ColumnSpec("v", "numeric")]
    small = _score(ref, cur, specs)
    assert [(c.stattest, c.score, c.drifted) for c in small.columns.values()] == [
        ("z", 1.0, False),
        ("z", 1.0, False),
    ]
    big = _score(pd.concat([ref] * 4, ignore_index=True), cur, specs)
    assert [(c.stattest, c.score, c.drifted) for c in big.columns.values()] == [
        ("jensenshannon", 0.0, False),
        ("jensenshannon", 0.0, False),
    ]


def test_a_single_value_that_changes_is_drift() -> None:
    ref = pd.DataFrame({"k": ["old"] * 300})
    cur = pd.DataFrame({"k": ["new"] * 200})
    col = _score(ref, cur, [ColumnSpec("k", "categorical")]).columns["k"]
    assert (col.stattest, col.drifted) == ("z", True)
    assert col.score < 1e-12


def test_constant_reference_norms_wasserstein_by_evidentlys_floor() -> None:
    ref = pd.DataFrame({"v": np.ones(2000)})
    cur = pd.DataFrame({"v": np.linspace(0.99, 1.01, 500)})
    col = _score(ref, cur, [ColumnSpec("v", "numeric")]).columns["v"]
    assert col.stattest == "wasserstein"
    expected = stats.wasserstein_distance(ref["v"], cur["v"]) / 0.001
    assert col.score == pytest.approx(expected, rel=1e-12)
    assert col.drifted


# --- prediction ----------------------------------------------------------------------------


def test_prediction_is_scored_but_not_counted_in_the_dataset_share() -> None:
    ref, cur = _frames(2000, 1000)
    result = _score(ref, cur, prediction=ColumnSpec("pred", "numeric"))
    assert result.prediction is not None
    assert result.prediction.column == "pred"
    assert result.prediction.stattest == "wasserstein"
    assert result.prediction.drifted
    assert "pred" not in result.columns
    assert result.n_columns == 3
    assert result.n_drifted == sum(c.drifted for c in result.columns.values())


def test_prediction_with_a_kind_default() -> None:
    ref, cur = _frames(2000, 1000)
    result = _score(ref, cur, prediction=ColumnSpec("pred", "numeric"), num_stattest="psi")
    assert result.prediction is not None
    assert result.prediction.stattest == "psi"


# --- batch problems ------------------------------------------------------------------------


def test_missing_column_is_rejected() -> None:
    ref, cur = _frames(300, 300)
    with pytest.raises(BatchRejected) as err:
        _score(ref, cur.drop(columns=["y"]))
    assert err.value.check == "missing_columns"


def test_text_in_a_numeric_column_is_rejected_but_numbers_as_text_are_read() -> None:
    ref, cur = _frames(300, 300)
    as_text = cur.assign(x=cur["x"].map(repr))
    assert _score(ref, as_text).columns["x"].score == pytest.approx(
        _score(ref, cur).columns["x"].score, rel=1e-12
    )
    with pytest.raises(BatchRejected) as err:
        _score(ref, cur.assign(x=["n/a"] * len(cur)))
    assert err.value.check == "type_change"


def test_repeated_column_name_is_rejected() -> None:
    ref, cur = _frames(300, 300)
    doubled = pd.concat([cur, cur[["x"]]], axis=1)
    with pytest.raises(BatchRejected) as err:
        _score(ref, doubled)
    assert err.value.check == "duplicate_columns"


def test_no_features_is_a_config_error() -> None:
    ref, _ = _frames(300, 300)
    with pytest.raises(ConfigError):
        engine.prepare_reference(ref, [], version="v1")


# --- the reference is prepared once ----------------------------------------------------------


def test_prepared_reference_does_not_depend_on_the_frame_afterwards() -> None:
    ref, cur = _frames(2000, 500)
    prepared = engine.prepare_reference(ref, SPECS, version="v3")
    first = engine.score(prepared, cur)
    ref.loc[:, "x"] = 1e9
    ref.loc[:, "c"] = "zzz"
    again = engine.score(prepared, cur)
    assert first == again
    assert prepared.version == "v3"
    assert prepared.n_rows == 2000


# --- the JSON shape --------------------------------------------------------------------------


def test_json_shape() -> None:
    ref, cur = _frames(400, 300)
    out = _score(ref, cur, prediction=ColumnSpec("pred", "numeric")).to_json_dict()
    assert set(out) == {"dataset_drift", "drift_share", "columns", "prediction"}
    assert isinstance(out["dataset_drift"], bool)
    assert isinstance(out["drift_share"], float)
    assert list(out["columns"]) == ["x", "y", "c"]
    for entry in [*out["columns"].values(), out["prediction"]]:
        assert set(entry) == {"stattest", "score", "threshold", "drifted"}
        assert isinstance(entry["stattest"], str)
        assert type(entry["score"]) is float
        assert type(entry["threshold"]) is float
        assert type(entry["drifted"]) is bool
    assert json.loads(json.dumps(out)) == out
    assert _score(ref, cur).to_json_dict()["prediction"] is None


# --- fast paths against the libraries they replace -------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_presorted_wasserstein_equals_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Integers make many ties within and across the two sides.
    u = rng.integers(0, 30, 1500).astype(float) if seed % 2 else rng.normal(0, 1, 1500)
    v = rng.integers(5, 40, 700).astype(float) if seed % 2 else rng.standard_t(3, 700)
    ref = stattests.numeric_reference(pd.Series(u))
    cur = stattests.numeric_sample(pd.Series(v))
    expected = stats.wasserstein_distance(u, v) / max(float(np.std(u)), 0.001)
    assert stattests.wasserstein_normed(ref, cur) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
def test_histogram_shares_equal_numpys(dtype: str) -> None:
    rng = np.random.default_rng(1)
    u = pd.Series((rng.normal(0, 50, 3000)).astype(dtype))
    v = pd.Series((rng.normal(10, 60, 2000)).astype(dtype))
    p, q = stattests.binned(
        "numeric", stattests.numeric_reference(u), stattests.numeric_sample(v), fill_zeroes=False
    )
    edges = np.histogram_bin_edges(np.concatenate([u, v]), bins="sturges")
    np.testing.assert_array_equal(p, np.histogram(u, edges)[0] / len(u))
    np.testing.assert_array_equal(q, np.histogram(v, edges)[0] / len(v))


def test_ks_equals_scipy_on_the_clean_values() -> None:
    rng = np.random.default_rng(2)
    u, v = rng.normal(0, 1, 800), rng.normal(0.1, 1, 300)
    col = _score(
        pd.DataFrame({"v": u}), pd.DataFrame({"v": v}), [ColumnSpec("v", "numeric")]
    ).columns["v"]
    assert col.stattest == "ks"
    assert col.score == stats.ks_2samp(u, v).pvalue


def test_the_quality_pass_samples_score_the_same_as_the_engines_own() -> None:
    """The pipeline hands `check_batch`'s samples to `score` (one pass over the batch):
    the result is the engine's own, with missing values, infinities, text categories,
    integer categories arriving as text and a pandas category column."""
    from watcher.config import QualityConfig
    from watcher.drift.quality import check_batch, profile_reference

    rng = np.random.default_rng(5)
    n = 3_000
    ref = pd.DataFrame(
        {
            "x": rng.normal(0, 1, n),
            "y": rng.integers(0, 50, n).astype(float),
            "c": rng.choice(["a", "b", "c"], n),
            "k": rng.integers(0, 4, n),
            "g": pd.Categorical(rng.choice(["u", "v"], n), categories=["u", "v", "w"]),
        }
    )
    cur = pd.DataFrame(
        {
            "x": rng.normal(0.3, 1, n),
            "y": rng.integers(0, 60, n).astype(float),
            "c": rng.choice(["a", "b", "d", None], n),
            "k": rng.choice(["0", "1", "2", "3"], n),
            "g": pd.Categorical(rng.choice(["u", "v"], n), categories=["u", "v", "w"]),
        }
    )
    cur.loc[::7, "x"] = np.nan
    cur.loc[::11, "y"] = np.inf
    columns = ColumnsConfig(numeric=["x", "y"], categorical=["c", "k", "g"])
    specs = [ColumnSpec("x", "numeric"), ColumnSpec("y", "numeric")] + [
        ColumnSpec(c, "categorical") for c in ("c", "k", "g")
    ]
    for lean in (False, True):
        prepared = engine.prepare_reference(ref, specs, version="v1", lean=lean)
        for profile in (
            profile_reference(ref, columns),
            profile_reference(ref, columns, prepared.samples),
        ):
            clean, quality = check_batch(
                cur, profile, columns, QualityConfig(max_missing_share=1.0)
            )
            assert set(quality.samples) == {"x", "y", "c", "k", "g"}
            for test in (None, "psi", "ks"):
                own = engine.score(prepared, clean, num_stattest=test)
                given = engine.score(prepared, clean, num_stattest=test, samples=quality.samples)
                assert given.to_json_dict() == own.to_json_dict()
    # The profile read off the prepared samples is the one computed over the frame.
    prepared = engine.prepare_reference(ref, specs, version="v1", lean=True)
    assert profile_reference(ref, columns, prepared.samples) == profile_reference(ref, columns)
    assert not prepared.raw  # lean, every test on the fast path: no rows kept
    kept = engine.prepare_reference(ref, specs, version="v1", lean=True, num_stattest="anderson")
    assert set(kept.raw) == {"x", "y"}  # evidently's own test runs on the rows, in order
