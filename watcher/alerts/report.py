"""The evidently HTML drift report of one batch, attached to (or linked from) its alert mail.

Rendering takes about a second and the file is a few MB (evidently inlines its JavaScript),
so the pipeline calls this only for a batch that raises a drift alert, never per batch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

from watcher.config import ColumnsConfig, DriftConfig


def write_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: ColumnsConfig,
    path: Path,
    *,
    drift: DriftConfig | None = None,
) -> Path:
    """Write evidently's data drift report of `current` against `reference` to `path`.

    Only the configured features (and the prediction column, when both frames have it) are
    compared. With `drift`, the report uses the same stat tests, thresholds and drift share
    as the daemon's scoring, so its verdict matches the mail's. The file appears atomically:
    a mail never links to half a report.
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
        num_method=cfg.num_stattest,
        cat_method=cfg.cat_stattest,
        per_column_method={c: s.stattest for c, s in cfg.columns.items() if s.stattest} or None,
        per_column_threshold={c: s.threshold for c, s in cfg.columns.items() if s.threshold}
        or None,
    )
    with warnings.catch_warnings():
        # Chi-square over a category the reference never saw divides by a zero expected
        # count; scipy warns, and the test still (rightly) reports drift.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([preset]).run(
            Dataset.from_pandas(current[compared], data_definition=definition),
            Dataset.from_pandas(reference[compared], data_definition=definition),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        snapshot.save_html(str(tmp))
    os.replace(tmp, path)
    return path
