"""Training data: gather labelled production data for the window, then check it can train.

Production data comes from the model's source: for a directory source, the batch files
the daemon scored (moved to `<source.path>/processed/`) plus any the trigger names; for a
SQL source, the table's rows in the window. Labels arrive later, as files or a table keyed
by the id column, or as the target column in the batches themselves. Optional base
training data is added to every run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from watcher.config import (
    ColumnsConfig,
    DirectorySourceConfig,
    ModelConfig,
    RetrainConfig,
    SqlSourceConfig,
)
from watcher.errors import SourceError, TrainingDataError

log = logging.getLogger(__name__)

ORIGIN = "_origin"  # provenance of each row: "production" or "base"; dropped before training
_TABLE_SUFFIXES = (".parquet", ".csv")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a frame."""
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    raise SourceError(f"{path} is neither .csv nor .parquet", hint="write tables as CSV or Parquet")


def _tables_in(path: Path, patterns: Sequence[str] = ("*.parquet", "*.csv")) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    found = {p for pattern in patterns for p in path.glob(pattern) if p.is_file()}
    return sorted(p for p in found if not p.name.startswith(".") and p.suffix in _TABLE_SUFFIXES)


def batch_files(cfg: DirectorySourceConfig, uris: Sequence[str] = ()) -> list[Path]:
    """Scored batch files of a directory source, plus any named by the trigger.

    A named file that the daemon has since moved to `processed/` is found there by name.
    """
    files = set(_tables_in(cfg.path / "processed", cfg.patterns))
    for uri in uris:
        path = Path(uri)
        if path.is_file():
            files.add(path)
        elif (cfg.path / "processed" / path.name).is_file():
            files.add(cfg.path / "processed" / path.name)
        else:
            log.warning("batch %s named by the trigger no longer exists; skipped", uri)
    return sorted(files)


def read_labels(path: Path | None, columns: ColumnsConfig) -> pd.DataFrame | None:
    """Label files (id + target), newest file winning for an id seen twice."""
    if path is None or columns.id is None or columns.target is None:
        return None
    frames = []
    for file in _tables_in(path):
        frame = read_table(file)
        if columns.id not in frame.columns or columns.target not in frame.columns:
            raise SourceError(
                f"label file {file} lacks column {columns.id!r} or {columns.target!r}",
                hint="label files hold the id column and the target column",
            )
        frames.append(frame[[columns.id, columns.target]])
    if not frames:
        return None
    labels = pd.concat(frames, ignore_index=True)
    return labels.drop_duplicates(subset=columns.id, keep="last")


def attach_labels(
    frame: pd.DataFrame, labels: pd.DataFrame | None, columns: ColumnsConfig
) -> pd.DataFrame:
    """Join labels onto rows by id; a label from the label files wins over one in the batch."""
    target = columns.target
    if target is None:
        raise TrainingDataError("no target column is configured (columns.target)")
    out = frame.copy()
    if target not in out.columns:
        out[target] = np.nan
    if labels is None or columns.id is None or columns.id not in out.columns:
        return out
    keyed = labels.set_index(columns.id)[target]
    joined = out[columns.id].map(keyed)
    out[target] = joined.where(joined.notna(), out[target])
    return out


def timestamps(frame: pd.DataFrame, columns: ColumnsConfig) -> pd.Series | None:
    """The timestamp column as UTC datetimes, or None when there is none."""
    col = columns.timestamp
    if col is None or col not in frame.columns:
        return None
    try:
        return pd.to_datetime(frame[col], utc=True)
    except (ValueError, TypeError) as exc:
        raise TrainingDataError(
            f"timestamp column {col!r} holds values that are not dates: {exc}",
            hint="write ISO-8601 timestamps",
        ) from exc


def _read_batches(files: list[Path], columns: ColumnsConfig, cfg: RetrainConfig) -> pd.DataFrame:
    frames = []
    for file in files:
        frame = read_table(file)
        frame["_batch"] = file.name
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    if cfg.window == "last_batches":
        # Order batches by their newest row (names and mtimes say little about data time).
        def newest(f: pd.DataFrame) -> Any:
            ts = timestamps(f, columns)
            return ts.max() if ts is not None and len(ts) else f["_batch"].iloc[0]

        frames = sorted(frames, key=newest)[-cfg.window_size :]
    return pd.concat(frames, ignore_index=True)


def _read_sql(
    src: SqlSourceConfig, columns: ColumnsConfig, cfg: RetrainConfig, end: datetime | None
) -> pd.DataFrame:
    """The window's rows with their newest labels, read by the SQL source's own code."""
    from watcher.sources.labels import read_training_window

    if end is None:
        end = _newest_sql_timestamp(src)
        if end is None:
            return pd.DataFrame()
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    span = _window_span(cfg, src.window_seconds)
    start = end - span if span is not None else datetime(1970, 1, 1, tzinfo=UTC)
    # The read is [start, end): take the newest row too.
    return read_training_window(src, columns, start, end + timedelta(microseconds=1))


def _newest_sql_timestamp(src: SqlSourceConfig) -> datetime | None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from watcher.sources.sqlconn import make_engine, quote_ident, quote_table

    engine = make_engine(src, "watcher:training")
    try:
        with engine.connect() as conn:
            value = conn.execute(
                text(
                    f"SELECT max({quote_ident(src.timestamp_column)}) FROM {quote_table(src.table)}"
                )
            ).scalar_one()
    except DBAPIError as exc:
        raise SourceError(f"cannot read the newest row of {src.table}: {exc.orig}") from exc
    finally:
        engine.dispose()
    return pd.Timestamp(value).to_pydatetime() if value is not None else None


def _window_span(cfg: RetrainConfig, window_seconds: float = 0.0) -> timedelta | None:
    if cfg.window == "last_days":
        return timedelta(days=cfg.window_size)
    if cfg.window == "last_batches" and window_seconds:
        return timedelta(seconds=window_seconds * cfg.window_size)
    return None


@dataclass
class IngestSummary:
    """What ingest found, kept in the run folder and shown in logs and mails."""

    files: list[str] = field(default_factory=list)
    production_rows: int = 0
    base_rows: int = 0
    labelled_rows: int = 0
    window_start: str | None = None
    window_end: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather(
    model_cfg: ModelConfig,
    *,
    data_uris: Sequence[str] = (),
    window_end: datetime | None = None,
) -> tuple[pd.DataFrame, IngestSummary]:
    """Labelled production data for the training window, plus the base training data."""
    columns, cfg, src = model_cfg.columns, model_cfg.retrain, model_cfg.source
    summary = IngestSummary()
    if isinstance(src, DirectorySourceConfig):
        if not src.path.is_dir():
            raise SourceError(
                f"the source folder {src.path} does not exist",
                hint="check models.<name>.source.path and that the folder is mounted here",
            )
        files = batch_files(src, data_uris)
        summary.files = [str(f) for f in files]
        production = _read_batches(files, columns, cfg)
        if len(production):
            production = attach_labels(production, read_labels(src.labels_path, columns), columns)
    else:
        production = _read_sql(src, columns, cfg, window_end)

    if len(production):
        ts = timestamps(production, columns)
        span = _window_span(cfg) if cfg.window == "last_days" else None
        if ts is not None:
            end = pd.Timestamp(window_end) if window_end is not None else ts.max()
            if end.tzinfo is None:
                end = end.tz_localize("UTC")
            keep = ts <= end
            if span is not None:
                keep &= ts > end - span
            production = production[keep.to_numpy()]
            kept = ts[keep]
            if len(kept):
                summary.window_start = kept.min().isoformat()
                summary.window_end = kept.max().isoformat()
        production = production.drop(columns=["_batch"], errors="ignore")
        production[ORIGIN] = "production"
    summary.production_rows = len(production)

    frames = [production] if len(production) else []
    if cfg.base_training_data is not None:
        if not cfg.base_training_data.exists():
            raise SourceError(
                f"base training data {cfg.base_training_data} does not exist",
                hint="fix models.<name>.retrain.base_training_data or remove it",
            )
        base = read_table(cfg.base_training_data)
        base[ORIGIN] = "base"
        summary.base_rows = len(base)
        frames.append(base)
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if columns.target and columns.target in data.columns:
        summary.labelled_rows = int(data[columns.target].notna().sum())
    return data, summary


@dataclass
class ValidationReport:
    """Outcome of `validate`: the usable rows and features, and what was dropped and why."""

    rows_in: int
    rows_labelled: int
    label_coverage: float
    numeric: list[str]
    categorical: list[str]
    dropped_features: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        return cls(**data)


def validate(
    frame: pd.DataFrame, columns: ColumnsConfig, cfg: RetrainConfig, *, model: str = "model"
) -> tuple[pd.DataFrame, ValidationReport]:
    """Check the data can train a model; return the labelled rows, sorted by time.

    Raises TrainingDataError naming the problem (no labels, too few rows, missing
    columns, a non-numeric numeric column...). Constant and empty features are dropped
    with a warning rather than failing the run.
    """
    target = columns.target
    if target is None:
        raise TrainingDataError(f"model {model}: no target column configured (columns.target)")
    if frame.empty:
        raise TrainingDataError(
            f"model {model}: no training data was found for the window",
            hint="check the source folder (processed/ batches), the label files and the window",
        )
    missing = [c for c in columns.features if c not in frame.columns]
    if missing:
        raise TrainingDataError(
            f"model {model}: the training data lacks configured feature column(s) {missing}",
            hint="the batches and the base training data must hold every configured feature",
        )
    if target not in frame.columns:
        raise TrainingDataError(
            f"model {model}: no labels: the target column {target!r} is absent",
            hint="deliver label files (id + target) to source.labels_path",
        )

    data = frame.replace([np.inf, -np.inf], np.nan)
    warnings: list[str] = []
    if columns.id and columns.id in data.columns:
        dupes = int(data[columns.id].duplicated(keep="last").sum())
        if dupes:
            warnings.append(f"{dupes} rows repeat an id; the last one of each was kept")
            data = data.drop_duplicates(subset=columns.id, keep="last")

    data[target] = _target_values(data[target], cfg, model, target)
    rows_in = len(data)
    labelled = data[data[target].notna()].copy()
    coverage = len(labelled) / rows_in if rows_in else 0.0
    if not len(labelled):
        raise TrainingDataError(
            f"model {model}: no labels: none of the {rows_in} rows has a value in {target!r}",
            hint="labels arrive as files keyed by id in source.labels_path; wait for them or "
            "add base training data",
        )
    if coverage < cfg.min_label_coverage:
        raise TrainingDataError(
            f"model {model}: only {coverage:.0%} of the {rows_in} rows have a label "
            f"(min_label_coverage is {cfg.min_label_coverage:.0%})",
            hint="wait until more labels have arrived, or lower retrain.min_label_coverage",
        )
    if len(labelled) < cfg.min_rows:
        raise TrainingDataError(
            f"model {model}: too few rows: {len(labelled)} labelled rows, "
            f"retrain.min_rows is {cfg.min_rows}",
            hint="widen retrain.window_size, add base training data, or wait for more batches",
        )
    if cfg.task == "classification" and labelled[target].nunique() < 2:
        raise TrainingDataError(
            f"model {model}: the target {target!r} has a single class "
            f"({labelled[target].iloc[0]!r}); a classifier needs at least two"
        )

    numeric, categorical, dropped = _usable_features(labelled, columns, warnings, model)
    ts = timestamps(labelled, columns)
    if ts is not None and columns.timestamp:
        labelled[columns.timestamp] = ts
        labelled = labelled.sort_values(columns.timestamp, kind="stable")
    report = ValidationReport(
        rows_in=rows_in,
        rows_labelled=len(labelled),
        label_coverage=round(coverage, 4),
        numeric=numeric,
        categorical=categorical,
        dropped_features=dropped,
        warnings=warnings,
    )
    return labelled.reset_index(drop=True), report


def _target_values(values: pd.Series, cfg: RetrainConfig, model: str, target: str) -> pd.Series:
    if cfg.task == "classification":
        return values
    numeric = pd.to_numeric(values, errors="coerce")
    bad = int((numeric.isna() & values.notna()).sum())
    if bad:
        raise TrainingDataError(
            f"model {model}: the regression target {target!r} has {bad} non-numeric value(s) "
            f"such as {values[numeric.isna() & values.notna()].iloc[0]!r}",
            hint="fix the label files, or set retrain.task = 'classification'",
        )
    return numeric.astype(float)


def _usable_features(
    data: pd.DataFrame, columns: ColumnsConfig, warnings: list[str], model: str
) -> tuple[list[str], list[str], dict[str, str]]:
    dropped: dict[str, str] = {}
    for col in columns.numeric:
        values = pd.to_numeric(data[col], errors="coerce")
        bad = int((values.isna() & data[col].notna()).sum())
        if bad > 0.5 * max(1, int(data[col].notna().sum())):
            raise TrainingDataError(
                f"model {model}: numeric feature {col!r} is mostly not numbers "
                f"({bad} of {len(data)} values, e.g. {data[col][values.isna()].iloc[0]!r})",
                hint="list it under columns.categorical, or fix the data",
            )
        if bad:
            warnings.append(f"{col}: {bad} non-numeric values treated as missing")
        data[col] = values
    for col in columns.features:
        values = data[col]
        if values.isna().all():
            dropped[col] = "all values missing"
        elif values.nunique(dropna=True) <= 1:
            dropped[col] = f"constant ({values.dropna().iloc[0]!r})"
        else:
            share = float(values.isna().mean())
            if share > 0.5:
                warnings.append(f"{col}: {share:.0%} of values missing (imputed)")
            if col in columns.categorical:
                counts = values.astype(str).value_counts()
                rare = sorted(counts[counts < 2].index.tolist())
                if rare:
                    warnings.append(
                        f"{col}: categories seen only once {rare[:5]} are pooled as 'infrequent'"
                    )
    for col, why in dropped.items():
        warnings.append(f"feature {col} dropped: {why}")
    numeric = [c for c in columns.numeric if c not in dropped]
    categorical = [c for c in columns.categorical if c not in dropped]
    if not numeric and not categorical:
        raise TrainingDataError(
            f"model {model}: no usable feature left ({dropped})",
            hint="every configured feature is empty or constant in the training window",
        )
    return numeric, categorical, dropped
