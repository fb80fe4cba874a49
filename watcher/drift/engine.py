"""Drift scoring of a batch against a model's reference, the way evidently scores it.

The tests, the automatic choice of test per column and the dataset verdict are those of
evidently 0.7.23's `Report([DataDriftPreset()])`:

- the test for a column is, in order: the column's own `stattest`, then `num_stattest` /
  `cat_stattest` for its kind, then evidently's choice: with at most 1,000 finite reference
  values, KS for a numeric column with more than 5 distinct values (reference and batch
  together), else chi-square, or the Z-test with at most 2 distinct values; with more,
  normed Wasserstein for a numeric column with more than 5 distinct values, else
  Jensen-Shannon;
- the threshold is, as in evidently's `DataDriftPreset`: the column's own `threshold`, then
  `num_threshold` / `cat_threshold` for its kind, then `threshold` for every column, then
  the test's default (see `watcher.drift.catalog`, which lists every test, its kinds, its
  default threshold and drift rule, and whether watcher computes it on its fast path or
  calls evidently's own function);
- a custom test (`"package.module:function"`) runs on the cleaned columns; an error in it,
  or in one of evidently's functions, fails that column only: it is listed in
  `DriftResult.failures` with the test's name and the batch is still scored;
- the dataset drifts when the share of drifted feature columns reaches `drift_share`.
  The prediction column is scored the same way but is not counted in that share.

NaN, None and ±inf are left out of every test, as evidently leaves them out. A column with
no value left in the batch is not scored: it is listed in `DriftResult.skipped` (evidently
refuses the whole report instead). A reference column with no value is an error.

`prepare_reference` does everything that depends on the reference alone (cleaning,
sorting, counting, the Wasserstein norm) once per reference version; `score` is then cheap
and pure, safe to run in a worker thread. tests/integration/test_drift_oracle.py holds the
scores equal to evidently's to 1e-6 and the decisions identical.

Size: kept whole so that evidently's rules (the choice of test per column, the
prepared reference, the dataset verdict) read in one place against evidently's own code;
samples and column inference already live in `samples.py` and `inference.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from watcher.config import DriftConfig, ModelConfig
from watcher.drift import catalog, stattests
from watcher.drift.catalog import TESTS, Kind
from watcher.drift.inference import ColumnSpec, infer_columns
from watcher.drift.stattests import Sample
from watcher.errors import BatchRejected, ConfigError, ReferenceDataError

__all__ = [
    "ColumnDrift",
    "ColumnSpec",
    "DriftResult",
    "PreparedReference",
    "infer_columns",
    "options_from_config",
    "prepare_reference",
    "score",
    "specs_from_config",
]


@dataclass(frozen=True)
class ColumnDrift:
    """The drift result of one column."""

    column: str
    kind: str
    stattest: str
    score: float
    threshold: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        """The column's entry in `DriftResult.to_json_dict()`."""
        return {
            "stattest": self.stattest,
            "score": self.score,
            "threshold": self.threshold,
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class DriftResult:
    """The drift of one batch: per feature, for the prediction, and the dataset verdict."""

    columns: dict[str, ColumnDrift]  # features only, in configured order
    prediction: ColumnDrift | None  # when a prediction column is configured and scorable
    dataset_drift: bool
    drift_share: float  # share of scored features that drifted
    n_drifted: int
    n_columns: int  # scored features
    # Columns that could not be scored, with the reason (e.g. no values in the batch).
    skipped: dict[str, str] = field(default_factory=dict)
    # Columns whose test failed (raised, or returned no finite score and flag): column ->
    # (test, what went wrong). Counted as scoring failures; the other columns are scored.
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The `watcher score --json` shape."""
        return {
            "dataset_drift": self.dataset_drift,
            "drift_share": self.drift_share,
            "columns": {name: c.to_dict() for name, c in self.columns.items()},
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            **(
                {
                    "failures": {
                        name: {"stattest": test, "error": why}
                        for name, (test, why) in self.failures.items()
                    }
                }
                if self.failures
                else {}
            ),
        }


@dataclass(frozen=True, eq=False)
class PreparedReference:
    """Everything about a reference that scoring needs, computed once per version."""

    version: str
    n_rows: int
    specs: tuple[ColumnSpec, ...]
    prediction: ColumnSpec | None
    samples: Mapping[str, Sample]
    # The prediction column is dropped here when the reference holds no prediction values.
    skipped: Mapping[str, str] = field(default_factory=dict)
    # The reference's own columns (no copy), in row order, for tests that run evidently's
    # function or a custom one: TVD and empirical_mmd permute rows, so order matters.
    raw: Mapping[str, pd.Series] = field(default_factory=dict)

    def all_specs(self) -> tuple[ColumnSpec, ...]:
        """Features, then the prediction column if there is one."""
        return self.specs if self.prediction is None else (*self.specs, self.prediction)


def _check_spec_test(name: str, kind: Kind, test: str | None, where: str) -> None:
    if test is None:
        return
    try:
        catalog.check_name(test)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message} for column {name!r}", hint=exc.hint) from exc
    info = TESTS.get(test)
    if info is not None and kind not in info.kinds:
        allowed = " and ".join(sorted(info.kinds))
        raise ConfigError(
            f"{where}: stat test {test!r} does not apply to {kind} column {name!r} "
            f"(evidently runs it on {allowed} columns only)",
            hint="pick another test for this column, or declare the column's kind correctly",
        )


def _check_specs(specs: Sequence[ColumnSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.kind not in ("numeric", "categorical"):
            raise ConfigError(f"column {spec.name!r} has unknown kind {spec.kind!r}")
        if spec.name in seen:
            raise ConfigError(f"column {spec.name!r} is listed twice")
        seen.add(spec.name)
        _check_spec_test(spec.name, spec.kind, spec.stattest, "drift.columns")
        if spec.threshold is not None and not spec.threshold > 0:
            raise ConfigError(f"column {spec.name!r} has threshold {spec.threshold}, not > 0")


def _reference_sample(spec: ColumnSpec, series: pd.Series, version: str) -> Sample:
    if spec.kind == "categorical":
        return stattests.categorical_sample(series)
    if not pd.api.types.is_numeric_dtype(series):
        raise ReferenceDataError(
            f"reference {version}: numeric column {spec.name!r} holds {series.dtype} values",
            hint="declare the column as categorical, or fix the reference data",
        )
    return stattests.numeric_reference(series)


def prepare_reference(
    reference: pd.DataFrame,
    columns: Sequence[ColumnSpec],
    *,
    version: str,
    prediction: ColumnSpec | None = None,
    lean: bool = False,
    num_stattest: str | None = None,
    cat_stattest: str | None = None,
) -> PreparedReference:
    """Clean, sort and count the reference once, for every later `score` call.

    The prepared reference keeps the reference's columns in row order for the tests that
    run evidently's own function or a custom one. With `lean=True` it keeps (copies of)
    only the columns whose configured test (the column's own, else `num_stattest` /
    `cat_stattest`) needs them, so the frame can be dropped after preparation: `score`
    must then be called with the same `num_stattest` / `cat_stattest`, or tests on the
    fast path (evidently's automatic choice, ks, chisquare included).

    Raises ConfigError for an unusable column list (none, duplicates, a test that does not
    apply to the column's kind) and ReferenceDataError for a column that is missing from
    the reference, holds text where numbers belong, or has no values at all.
    """
    specs = tuple(columns)
    if not specs:
        raise ConfigError(
            "no feature columns to score for drift",
            hint="list features under the model's columns.numeric / columns.categorical",
        )
    _check_specs([*specs, *([prediction] if prediction else [])])
    wanted = [*specs, *([prediction] if prediction else [])]
    missing = [s.name for s in wanted if s.name not in reference.columns]
    if missing:
        raise ReferenceDataError(
            f"reference {version} lacks column(s) {missing}",
            hint="the configured columns must exist in the reference data",
        )
    repeated = sorted({s.name for s in wanted if isinstance(reference[s.name], pd.DataFrame)})
    if repeated:
        raise ReferenceDataError(
            f"reference {version} has more than one column named {repeated}",
            hint="column names must be unique",
        )
    samples: dict[str, Sample] = {}
    empty: list[str] = []
    skipped: dict[str, str] = {}
    for spec in wanted:
        sample = _reference_sample(spec, reference[spec.name], version)
        if sample.n == 0:
            if spec is prediction:
                skipped[spec.name] = "the reference has no prediction values"
                prediction = None
                continue
            empty.append(spec.name)
        samples[spec.name] = sample
    if empty:
        raise ReferenceDataError(
            f"reference {version} has no values (all missing or infinite) in column(s) {empty}",
            hint="fill the column in the reference data, or stop scoring it",
        )
    if lean:
        by_kind = {"numeric": num_stattest, "categorical": cat_stattest}
        raw = {
            s.name: reference[s.name].copy()
            for s in wanted
            if s.name in samples and _needs_rows(s.stattest or by_kind[s.kind])
        }
    else:
        raw = {name: reference[name] for name in samples}
    return PreparedReference(version, len(reference), specs, prediction, samples, skipped, raw)


def _needs_rows(test: str | None) -> bool:
    """Whether a test runs on the reference's rows (evidently's function, a custom one)
    rather than on the prepared sample; None is evidently's automatic (fast) choice."""
    if test is None:
        return False
    info = TESTS.get(test)
    return info is None or info.path != "fast"


def _single_column(frame: pd.DataFrame, name: str) -> pd.Series:
    column = frame[name]
    if isinstance(column, pd.DataFrame):
        raise BatchRejected(
            f"column {name!r} appears {column.shape[1]} times",
            check="duplicate_columns",
            hint="column names must be unique",
        )
    return column


def _current_series(spec: ColumnSpec, series: pd.Series) -> pd.Series:
    if spec.kind == "numeric" and not pd.api.types.is_numeric_dtype(series):
        converted = pd.to_numeric(series, errors="coerce")
        if (series.notna() & converted.isna()).any():
            raise BatchRejected(
                f"numeric column {spec.name!r} holds {series.dtype} values that are not numbers",
                check="type_change",
                hint="fix the writer's types, or configure the column as categorical",
            )
        return converted
    return series


def _sample(spec: ColumnSpec, series: pd.Series) -> Sample:
    if spec.kind == "categorical":
        return stattests.categorical_sample(series)
    return stattests.numeric_sample(series)


def _clean(series: pd.Series) -> pd.Series:
    # What evidently hands its test functions: ±inf as missing, then missing dropped.
    return series.replace([-np.inf, np.inf], np.nan).dropna()


@dataclass(frozen=True)
class _Options:
    num_stattest: str | None
    cat_stattest: str | None
    threshold: float | None
    num_threshold: float | None
    cat_threshold: float | None

    def stattest(self, kind: Kind) -> str | None:
        return self.num_stattest if kind == "numeric" else self.cat_stattest

    def kind_threshold(self, kind: Kind) -> float | None:
        own = self.num_threshold if kind == "numeric" else self.cat_threshold
        return own if own is not None else self.threshold


def _score_column(
    spec: ColumnSpec,
    ref: Sample,
    cur: Sample,
    options: _Options,
    ref_raw: Callable[[], pd.Series],
    cur_raw: pd.Series,
) -> ColumnDrift:
    test = (
        spec.stattest or options.stattest(spec.kind) or stattests.default_test(spec.kind, ref, cur)
    )
    threshold = spec.threshold if spec.threshold is not None else options.kind_threshold(spec.kind)
    info = TESTS.get(test)
    if info is not None and info.path == "fast":
        used = info.default_threshold if threshold is None else threshold
        value = stattests.run(test, spec.kind, ref, cur)
        return ColumnDrift(
            spec.name, spec.kind, test, value, float(used), info.drifted(value, used)
        )
    value, drifted, used = catalog.run_function(
        test, _clean(ref_raw()), _clean(cur_raw), spec.kind, threshold
    )
    return ColumnDrift(spec.name, spec.kind, test, value, used, drifted)


def options_from_config(drift: DriftConfig) -> dict[str, Any]:
    """The keyword arguments of `score` that a model's `[drift]` section sets."""
    return {
        "drift_share": drift.drift_share,
        "num_stattest": drift.num_stattest,
        "cat_stattest": drift.cat_stattest,
        "threshold": drift.threshold,
        "num_threshold": drift.num_threshold,
        "cat_threshold": drift.cat_threshold,
    }


def score(
    prepared: PreparedReference,
    current: pd.DataFrame,
    *,
    drift_share: float = 0.5,
    num_stattest: str | None = None,
    cat_stattest: str | None = None,
    threshold: float | None = None,
    num_threshold: float | None = None,
    cat_threshold: float | None = None,
    samples: Mapping[str, Sample] | None = None,
) -> DriftResult:
    """Score a batch against a prepared reference.

    `samples`: the batch's samples already made by the quality checks' pass
    (`QualityReport.samples`, from the very frame passed here); a column without one is
    sampled here.

    Raises BatchRejected when the batch lacks a configured column, repeats one, holds text
    in a numeric column, or has no value in any feature (nothing left to score), and
    ConfigError when `num_stattest` / `cat_stattest` does not apply to its kind. A test
    that fails on a column (see `DriftResult.failures`) raises nothing.
    """
    if not 0 < drift_share <= 1:
        raise ConfigError(f"drift_share must be in (0, 1], got {drift_share}")
    for name, value in (
        ("threshold", threshold),
        ("num_threshold", num_threshold),
        ("cat_threshold", cat_threshold),
    ):
        if value is not None and not value > 0:
            raise ConfigError(f"drift.{name} must be > 0, got {value}")
    _check_spec_test("<numeric columns>", "numeric", num_stattest, "drift.num_stattest")
    _check_spec_test("<categorical columns>", "categorical", cat_stattest, "drift.cat_stattest")
    options = _Options(num_stattest, cat_stattest, threshold, num_threshold, cat_threshold)
    specs = prepared.all_specs()
    missing = [s.name for s in specs if s.name not in current.columns]
    if missing:
        raise BatchRejected(
            f"the batch lacks column(s) {missing}",
            check="missing_columns",
            hint="the batch must have every configured feature and the prediction column",
        )
    skipped = dict(prepared.skipped)
    failures: dict[str, tuple[str, str]] = {}
    results: dict[str, ColumnDrift] = {}
    for spec in specs:
        series = _current_series(spec, _single_column(current, spec.name))
        given = samples.get(spec.name) if samples is not None else None
        cur = given if given is not None and _kind_of(given) == spec.kind else _sample(spec, series)
        if cur.n == 0:
            skipped[spec.name] = "no values in the batch (all missing or infinite)"
            continue
        try:
            results[spec.name] = _score_column(
                spec,
                prepared.samples[spec.name],
                cur,
                options,
                partial(_rows, prepared, spec.name),
                series,
            )
        except catalog.TestFailed as exc:
            failures[spec.name] = (exc.test, str(exc))

    prediction = None
    if prepared.prediction is not None:
        prediction = results.pop(prepared.prediction.name, None)
    n_columns = len(results)
    if n_columns == 0 and not failures:
        raise BatchRejected(
            "no feature has any value in the batch: nothing to score",
            check="all_missing",
            hint="the upstream feature pipeline probably failed",
        )
    n_drifted = sum(c.drifted for c in results.values())
    # Every feature's test failed: the batch is scored (nothing is quarantined over a
    # broken test), with no drift found; the failures say why.
    share = n_drifted / n_columns if n_columns else 0.0
    return DriftResult(
        columns=results,
        prediction=prediction,
        dataset_drift=n_columns > 0 and share >= drift_share,
        drift_share=share,
        n_drifted=n_drifted,
        n_columns=n_columns,
        skipped=skipped,
        failures=failures,
    )


def _kind_of(sample: Sample) -> Kind:
    return "numeric" if isinstance(sample, stattests.NumericSample) else "categorical"


def _rows(prepared: PreparedReference, name: str) -> pd.Series:
    """The reference column in row order, for a test off the fast path (only then: it
    is O(N)). Not kept (a lean reference, or one built by hand): rebuilt from the sample,
    sorted."""
    kept = prepared.raw.get(name)
    return kept if kept is not None else pd.Series(_values_of(prepared.samples[name]))


def _values_of(sample: Sample) -> Any:
    if isinstance(sample, stattests.NumericSample):
        return sample.in_dtype()
    keys = list(sample.counts)
    return np.repeat(np.asarray(keys, dtype=object), [sample.counts[k] for k in keys])


def specs_from_config(model: ModelConfig) -> tuple[list[ColumnSpec], ColumnSpec | None]:
    """Feature specs (with per-column overrides) and the prediction spec of a model.

    The prediction is numeric for a regression model and categorical for a classifier
    (`retrain.task`). `num_stattest` / `cat_stattest` are not baked in: pass them to
    `score`, which applies them to the prediction column too, as evidently does. Raises
    ConfigError when a configured test does not apply to its column's kind.
    """
    overrides = model.drift.columns
    features: list[ColumnSpec] = []
    groups: tuple[tuple[Kind, list[str]], ...] = (
        ("numeric", model.columns.numeric),
        ("categorical", model.columns.categorical),
    )
    for kind, names in groups:
        for name in names:
            override = overrides.get(name)
            features.append(
                ColumnSpec(
                    name,
                    kind,
                    stattest=override.stattest if override else None,
                    threshold=override.threshold if override else None,
                )
            )
    prediction = None
    if model.columns.prediction is not None:
        pred_kind: Kind = "numeric" if model.retrain.task == "regression" else "categorical"
        prediction = ColumnSpec(model.columns.prediction, pred_kind)
    _check_specs([*features, *([prediction] if prediction else [])])
    _check_spec_test("<numeric columns>", "numeric", model.drift.num_stattest, "drift.num_stattest")
    _check_spec_test(
        "<categorical columns>", "categorical", model.drift.cat_stattest, "drift.cat_stattest"
    )
    return features, prediction
