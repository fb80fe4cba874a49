"""The evidently HTML drift report of one batch, attached to (or linked from) its alert mail.

Rendering takes about a second and the file is a few MB (evidently inlines its JavaScript),
so the pipeline calls this only for a batch that raises a drift alert, never per batch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

from watcher.config import ColumnsConfig, DriftConfig
from watcher.drift import catalog
from watcher.fileio import write_atomic


def drift_snapshot(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: ColumnsConfig,
    *,
    drift: DriftConfig | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Any:
    """evidently's data drift snapshot of `current` against `reference`.

    Only the configured features (and the prediction column, when both frames have it) are
    compared. With `drift`, the report uses the same stat tests (custom ones included),
    thresholds and drift share as the daemon's scoring, so its verdict matches the mail's.
    """
    numeric = [c for c in columns.numeric if c in current.columns and c in reference.columns]
    categorical = [
        c for c in columns.categorical if c in current.columns and c in reference.columns
    ]
    pred = columns.prediction
    if pred and pred in current.columns and pred in reference.columns:
        if pd.api.types.is_numeric_dtype(reference[pred]):
            numeric.append(pred)
        else:
            categorical.append(pred)
    compared = [*numeric, *categorical]
    if not compared:
        raise ValueError(
            "no configured feature is present in both frames; check the model's columns"
        )
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    cfg = drift or DriftConfig()
    preset = DataDriftPreset(
        columns=compared,
        drift_share=cfg.drift_share,
        num_method=_method(cfg.num_stattest),
        cat_method=_method(cfg.cat_stattest),
        per_column_method={c: _method(s.stattest) for c, s in cfg.columns.items() if s.stattest}
        or None,
        per_column_threshold={c: s.threshold for c, s in cfg.columns.items() if s.threshold}
        or None,
        threshold=cfg.threshold,
        num_threshold=cfg.num_threshold,
        cat_threshold=cfg.cat_threshold,
    )
    with warnings.catch_warnings():
        # Chi-square over a category the reference never saw divides by a zero expected
        # count; scipy warns, and the test still (rightly) reports drift.
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report([preset]).run(
            Dataset.from_pandas(current[compared], data_definition=definition),
            Dataset.from_pandas(reference[compared], data_definition=definition),
            name=name,
            tags=tags,
            metadata=metadata,
        )


def _method(test: str | None) -> Any:
    """A configured test as evidently takes it: its name, or the custom test's object."""
    if test is None or not catalog.is_custom(test):
        return test
    return catalog.load_custom_test(test).func


def write_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: ColumnsConfig,
    path: Path,
    *,
    drift: DriftConfig | None = None,
) -> Path:
    """Write evidently's data drift report of `current` against `reference` to `path`
    (see `drift_snapshot`). The file appears atomically: a mail never links to half a
    report."""
    snapshot = drift_snapshot(reference, current, columns, drift=drift)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return write_atomic(path, lambda tmp: snapshot.save_html(str(tmp)))
