"""`retrain.impute = "none"`: numeric NaN passed through the preprocessing to an estimator
that handles it, and refused in the config for one that does not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest

from watcher.config import NAN_FAMILIES, ColumnsConfig, ModelFamily, RetrainConfig, load_config
from watcher.errors import ConfigError
from watcher.retrain import validation
from watcher.retrain.evaluation import limited_threads
from watcher.retrain.features import OutlierClipper, build_preprocessor
from watcher.retrain.selection import select_features
from watcher.retrain.tuning import estimator_for, make_pipeline, tune


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # As the DAG's steps train: OpenMP spinning on a shared 2-core host costs seconds.
    with limited_threads(1):
        yield


def missing_matters(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """y = x1 + x2 where x2 is present, x1 + 4 where it is missing (a quarter of the rows):
    a model told "missing" can learn the jump, one shown the median of x2 cannot."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    gone = rng.random(n) < 0.25
    y = x1 + np.where(gone, 4.0, x2) + rng.normal(scale=0.1, size=n)
    color = rng.choice(["red", "green"], size=n).astype(object)
    color[::50] = None  # categorical imputation is unchanged by impute = "none"
    return pd.DataFrame({"x1": x1, "x2": np.where(gone, np.nan, x2), "color": color, "y": y})


def cfg(**overrides: object) -> RetrainConfig:
    base: dict[str, object] = {"min_rows": 50, "n_iter": 2, "cv_splits": 2}
    return RetrainConfig.model_validate(base | overrides)


def test_the_default_stays_median() -> None:
    assert RetrainConfig().impute == "median"
    prep = build_preprocessor(RetrainConfig(), ["x1"], ["color"])
    num = dict((name, pipe) for name, pipe, _ in prep.transformers)["num"]
    assert num.named_steps["impute"].strategy == "median"


def test_the_clipper_keeps_nan_and_learns_its_bounds_from_the_values_present() -> None:
    values = np.array([[1.0], [2.0], [np.nan], [3.0], [100.0]])
    clip = OutlierClipper(quantiles=(0.0, 0.5)).fit(values)
    assert float(clip.upper_[0]) == pytest.approx(2.5)  # median of 1, 2, 3, 100
    out = clip.transform(np.array([[np.nan], [50.0], [-5.0]]))[:, 0]
    assert np.isnan(out[0])
    assert out[1:].tolist() == [2.5, 1.0]


@pytest.mark.parametrize("outliers", ["none", "quantile", "iqr"])
@pytest.mark.parametrize("scaling", ["none", "standard", "robust"])
def test_nan_stays_nan_through_clipping_and_scaling(outliers: str, scaling: str) -> None:
    frame = missing_matters(200)
    settings = cfg(impute="none", outliers=outliers, scaling=scaling, encoding="ordinal")
    prep = build_preprocessor(settings, ["x1", "x2"], ["color"])
    out = prep.fit_transform(frame[["x1", "x2", "color"]])
    names = list(prep.get_feature_names_out())
    assert names == ["num__x1", "num__x2", "cat__color"]
    # Exactly the missing numeric values are NaN; the missing colours were imputed.
    assert np.array_equal(np.isnan(out), frame[["x1", "x2"]].isna().assign(c=False).to_numpy())
    # A batch with NaN where training had none is passed on too, not refused.
    batch = frame[["x1", "x2", "color"]].head(3).assign(x1=np.nan)
    assert np.isnan(prep.transform(batch)[:, 0]).all()


def test_the_hgb_pipeline_handles_nan_as_hist_gradient_boosting_does() -> None:
    frame = missing_matters()
    train, test = frame.iloc[:450], frame.iloc[450:]
    gone = test["x2"].isna().to_numpy()
    assert gone.sum() > 20
    family = "hist_gradient_boosting"

    # Without clipping and scaling the numeric columns reach the estimator untouched: the
    # pipeline predicts what HistGradientBoosting fitted on the same columns does.
    bare = cfg(impute="none", outliers="none", scaling="none")
    pipe = make_pipeline(bare, ["x1", "x2"], [], family).fit(train[["x1", "x2"]], train["y"])
    plain = estimator_for(family, "regression", bare.seed).fit(train[["x1", "x2"]], train["y"])
    assert np.array_equal(pipe.predict(test[["x1", "x2"]]), plain.predict(test[["x1", "x2"]]))

    # With the default clipping and scaling and a categorical column: fits and predicts on
    # NaN, and tells "missing" apart from the median, which the median imputation cannot.
    cols = ["x1", "x2", "color"]
    missing = test[cols].assign(x2=np.nan)
    at_median = test[cols].assign(x2=float(np.nanmedian(train["x2"])))
    models = {
        impute: make_pipeline(cfg(impute=impute), ["x1", "x2"], ["color"], family).fit(
            train[cols], train["y"]
        )
        for impute in ("none", "median")
    }
    imputed = models["median"]
    assert np.array_equal(imputed.predict(missing), imputed.predict(at_median))
    # The jump where x2 is missing is 4 (minus x2's median, about 0).
    jump = models["none"].predict(missing) - models["none"].predict(at_median)
    assert 3.0 < float(np.mean(jump)) < 5.0
    errors = {
        impute: float(np.mean(np.abs(m.predict(test[cols])[gone] - test["y"][gone])))
        for impute, m in models.items()
    }
    assert errors["none"] < errors["median"], errors


@pytest.mark.parametrize(
    ("impute", "how"), [("none", "left to the estimator"), ("mean", "imputed")]
)
def test_validate_says_what_happens_to_a_mostly_missing_column(impute: str, how: str) -> None:
    frame = missing_matters(200)
    frame.loc[frame.index[:120], "x1"] = np.nan
    columns = ColumnsConfig(numeric=["x1", "x2"], categorical=["color"], target="y")
    _, report = validation.validate(frame, columns, cfg(impute=impute))
    assert f"x1: 60% of values missing ({how})" in report.warnings


@pytest.mark.parametrize("family", get_args(ModelFamily))
def test_nan_families_is_what_the_estimators_accept(family: str) -> None:
    frame = missing_matters(200)
    pipe = make_pipeline(cfg(impute="none"), ["x1", "x2"], ["color"], family)
    X = frame[["x1", "x2", "color"]]
    if family in NAN_FAMILIES:
        assert np.isfinite(pipe.fit(X, frame["y"]).predict(X)).all()
    else:
        with pytest.raises(ValueError, match="NaN"):
            pipe.fit(X, frame["y"])


def test_selection_and_tuning_run_on_nan() -> None:
    frame = missing_matters(240)
    settings = cfg(
        impute="none",
        selection="importance",
        max_features=2,
        n_iter=1,
        model_families=["hist_gradient_boosting", "random_forest"],
    )
    chosen = select_features(frame, frame["y"], ["x1", "x2"], ["color"], settings)
    assert set(chosen.features) == {"x1", "x2"}
    num = [c for c in ("x1", "x2") if c in chosen.features]
    result = tune(frame[num], frame["y"], num, [], settings)
    assert [s.family for s in result.searches] == ["hist_gradient_boosting", "random_forest"]
    assert np.isfinite(result.estimator.predict(frame[num])).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"model_families": ["hist_gradient_boosting", "linear"]},
            "retrain.impute = 'none' leaves missing values to the estimator, but family "
            "'linear' does not accept NaN: use impute = 'median' or model_families = "
            "['hist_gradient_boosting', 'random_forest'] only",
        ),
        (
            {"selection": "univariate"},
            "selection = 'univariate' (the F-test) does not accept NaN: use impute = 'median'",
        ),
    ],
)
def test_the_config_refuses_nan_for_what_cannot_take_it(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=r"retrain\.impute = 'none'") as caught:
        cfg(impute="none", **overrides)
    assert message in str(caught.value)
    # The same combination with an imputer is fine.
    assert cfg(impute="median", **overrides).impute == "median"
    path = tmp_path / "watcher.toml"
    families = overrides.get("model_families", ["hist_gradient_boosting"])
    path.write_text(
        '[models.m]\nsource = { kind = "directory", path = "in" }\n'
        'columns = { numeric = ["x"] }\n'
        f'retrain = {{ impute = "none", selection = "{overrides.get("selection", "none")}", '
        f"model_families = {families} }}\n".replace("'", '"'),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "models.m.retrain" in str(info.value)
    assert message in str(info.value)
