"""Training data: labelled production data for the training window, from the model's source.

Production data comes from the model's source: for a directory source, the batch files
the daemon scored (moved to `<source.path>/processed/`) plus any the trigger names; for a
SQL source, the table's rows in the window. Labels arrive later, as files or a table keyed
by the id column, or as the target column in the batches themselves. A directory source
also holds the labelled history version 1 was trained on (`HISTORY_FILE`, left there by
`watcher.retrain.bootstrap`): it is read like a scored batch, so a retrain soon after the
bootstrap has the window's full span, not only the few labelled periods production has
served. Optional base training data is added to every run.
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
from watcher.fileio import read_label_file, read_table

log = logging.getLogger(__name__)

# In a directory source's processed/ folder: the labelled rows version 1 was trained on.
HISTORY_FILE = "bootstrap-history.parquet"
ORIGIN = "_origin"  # provenance of each row: "production" or "base"; dropped before training
_TABLE_SUFFIXES = (".parquet", ".csv")


def _tables_in(path: Path, patterns: Sequence[str] = ("*.parquet", "*.csv")) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    found = {p for pattern in patterns for p in path.glob(pattern) if p.is_file()}
    return sorted(p for p in found if not p.name.startswith(".") and p.suffix in _TABLE_SUFFIXES)


def batch_files(cfg: DirectorySourceConfig, uris: Sequence[str] = ()) -> list[Path]:
    """Scored batch files of a directory source, plus any named by the trigger, plus the
    bootstrap's history (whatever the source's patterns: the daemon never scores it).

    A named file that the daemon has since moved to `processed/` is found there by name.
    """
    files = set(_tables_in(cfg.path / "processed", cfg.patterns))
    if (cfg.path / "processed" / HISTORY_FILE).is_file():
        files.add(cfg.path / "processed" / HISTORY_FILE)
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
    """Label files (id + target), newest file winning for an id seen twice. A file that
    cannot be used fails the read (LabelFileError): a run does not train on part of its
    labels. (The daemon sets such a file aside instead, `watcher.model_quality`.)"""
    if path is None or columns.id is None or columns.target is None:
        return None
    frames = [read_label_file(file, columns.id, columns.target) for file in _tables_in(path)]
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
    frame = read_training_window(src, columns, start, end + timedelta(microseconds=1))
    if span is None or not len(frame):
        return frame
    # The window counts labelled rows (`window_mask`): when the newest rows still wait
    # for labels, read back far enough for a full span of labelled ones.
    ts, labelled = timestamps(frame, columns), _labelled(frame, columns)
    if ts is None or not labelled.any():
        return frame
    anchor = ts[labelled].max().to_pydatetime()
    if anchor.tzinfo is None:
        anchor = anchor.replace(tzinfo=UTC)
    if anchor - span >= start:
        return frame
    return read_training_window(src, columns, anchor - span, end + timedelta(microseconds=1))


def _newest_sql_timestamp(src: SqlSourceConfig) -> datetime | None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from watcher.sources.sql.connection import make_engine, quote_ident, quote_table

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


def _labelled(frame: pd.DataFrame, columns: ColumnsConfig) -> np.ndarray:
    if columns.target is None or columns.target not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return frame[columns.target].notna().to_numpy()


def window_mask(
    ts: pd.Series, labelled: np.ndarray, end: Any, span: timedelta | pd.Timedelta | None
) -> pd.Series:
    """Rows up to `end` in a `last_days` window of `span` counted back from the newest
    *labelled* row (rows newer than it, still waiting for labels, are kept too).

    Counted back from the newest row, a window of 8 weeks with labels one week late holds
    7 weeks a model can learn from: on Bikeshare that cost 0.4-0.6 MAE on every schedule
    against a plain model trained on 8 labelled weeks (`benchmarks/plain_replay.py`).
    """
    keep: pd.Series = ts <= end
    if span is None:
        return keep
    known = ts[keep.to_numpy() & labelled]
    anchor = known.max() if len(known) else end
    inside: pd.Series = keep & (ts > anchor - span)
    return inside


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
            keep = window_mask(ts, _labelled(production, columns), end, span)
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
