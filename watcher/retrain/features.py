"""Feature engineering: one scikit-learn ColumnTransformer built from the retrain config.

Numeric columns: impute → clip outliers (by quantiles or by IQR fences learnt on the
training data) → scale. With `impute = "none"` a missing numeric value stays NaN through
clipping and scaling (both learn from the values present and pass NaN on), for an
estimator that handles it (config.NAN_FAMILIES). Categorical columns: impute the most
frequent value → encode (one-hot, or ordinal for tree models). Categories never seen in
training are ignored at prediction time, and rare ones (seen fewer than
`MIN_CATEGORY_COUNT` times) are pooled, so a category that turns up once cannot become a
feature of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, RobustScaler, StandardScaler

from watcher.config import RetrainConfig

MIN_CATEGORY_COUNT = 2


class CategoryText(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Categories as text (missing stays missing), so 1, 1.0 and '1' are one category.

    Inside the pipeline, so training, evaluation and the daemon's batches, whose integer
    codes may arrive as ints, floats or strings, all see the same categories.
    """

    def fit(self, X: Any, y: Any = None) -> CategoryText:
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X: Any) -> Any:
        frame = pd.DataFrame(X)
        return (
            frame.apply(lambda col: col.map(_category_text).where(col.notna(), np.nan))
            .astype(object)
            .to_numpy()
        )

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        if input_features is None:
            input_features = [f"x{i}" for i in range(self.n_features_in_)]
        return np.asarray(input_features, dtype=object)


class OutlierClipper(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Clip each column to bounds learnt in `fit`: quantiles, or Tukey's IQR fences.

    Kept as a small class (not a FunctionTransformer over a lambda) so skops can save it
    and the registry can allow it by name.
    """

    def __init__(
        self,
        method: str = "quantile",
        quantiles: tuple[float, float] = (0.01, 0.99),
        k: float = 1.5,
    ) -> None:
        self.method = method
        self.quantiles = quantiles
        self.k = k

    def fit(self, X: Any, y: Any = None) -> OutlierClipper:
        arr = np.asarray(X, dtype=float)
        if self.method == "iqr":
            q1, q3 = np.nanpercentile(arr, [25, 75], axis=0)
            spread = q3 - q1
            self.lower_, self.upper_ = q1 - self.k * spread, q3 + self.k * spread
        else:
            lo, hi = self.quantiles
            self.lower_ = np.nanquantile(arr, lo, axis=0)
            self.upper_ = np.nanquantile(arr, hi, axis=0)
        self.n_features_in_ = arr.shape[1]
        return self

    def transform(self, X: Any) -> Any:
        return np.clip(np.asarray(X, dtype=float), self.lower_, self.upper_)

    def get_feature_names_out(self, input_features: Any = None) -> Any:
        if input_features is None:
            input_features = [f"x{i}" for i in range(self.n_features_in_)]
        return np.asarray(input_features, dtype=object)


def build_preprocessor(
    cfg: RetrainConfig, numeric: list[str], categorical: list[str]
) -> ColumnTransformer:
    """The unfitted preprocessing for these columns, as configured."""
    num_steps: list[tuple[str, Any]] = []
    if cfg.impute != "none":
        num_steps.append(("impute", SimpleImputer(strategy=cfg.impute)))
    if cfg.outliers != "none":
        num_steps.append(
            ("clip", OutlierClipper(method=cfg.outliers, quantiles=cfg.outlier_quantiles))
        )
    if cfg.scaling == "standard":
        num_steps.append(("scale", StandardScaler()))
    elif cfg.scaling == "robust":
        num_steps.append(("scale", RobustScaler()))
    if not num_steps:  # no imputation, clipping or scaling: the values as they are
        num_steps.append(("pass", "passthrough"))

    encoder: Any
    if cfg.encoding == "onehot":
        encoder = OneHotEncoder(
            handle_unknown="infrequent_if_exist",
            min_frequency=MIN_CATEGORY_COUNT,
            sparse_output=False,
        )
    else:
        encoder = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=-1,
            min_frequency=MIN_CATEGORY_COUNT,
        )
    cat_steps: list[tuple[str, Any]] = [
        ("text", CategoryText()),
        ("impute", SimpleImputer(strategy="most_frequent")),
        ("encode", encoder),
    ]
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        transformers.append(("num", Pipeline(num_steps), numeric))
    if categorical:
        transformers.append(("cat", Pipeline(cat_steps), categorical))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)


def output_to_input(names: list[str], numeric: list[str], categorical: list[str]) -> list[str]:
    """Map transformed column names ('num__temp', 'cat__weathersit_clear') to input columns."""
    mapped: list[str] = []
    cats = sorted(categorical, key=len, reverse=True)  # longest first: 'a_b' before 'a'
    for name in names:
        prefix, _, rest = name.partition("__")
        if prefix == "num":
            mapped.append(rest)
        else:
            mapped.append(next((c for c in cats if rest == c or rest.startswith(c + "_")), rest))
    return mapped


def _category_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
