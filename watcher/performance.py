"""The production model's performance, once labels arrive.

Directory sources: predictions are kept (id + prediction + the version whose reference
scored the batch, a small Parquet file per batch) when a batch is scored; label files
(id + target) land later in the source's ``labels_path``. Each new label file is joined
with the kept predictions. A label file is read once: its name is recorded in the state
store, in the same transaction as its losses and the policy's decision on them.

SQL sources with a ``labels_table``: the prediction log already holds the predictions, so
every ``late_check_interval_seconds`` the labels of the recent finished windows
(``late_check_windows`` of them) are joined by id; each window is a period, recorded again
when more of its rows are labelled.

For each labelled period the primary metric (``retrain.primary_metric``; ``accuracy`` when
that is ``roc_auc``, which needs probabilities the prediction log does not hold) is turned
into a loss (`watcher.signals.loss_of`) and kept with the version that served the period:
the `performance` trigger signal's history. The metrics on everything read in one round
are exported as ``watcher_model_performance{model,metric}``.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from watcher.config import ModelConfig
from watcher.errors import SourceError
from watcher.metrics import Metrics
from watcher.retrain.evaluation import classification_metrics, regression_metrics
from watcher.signals import loss_of
from watcher.sources.base import Source
from watcher.state import LabelPeriod, StateStore

log = logging.getLogger(__name__)


def performance_metric(cfg: ModelConfig) -> str:
    """The metric the performance signal follows: the gate's primary metric, except
    roc_auc, which needs class probabilities that predictions alone do not give."""
    metric = cfg.retrain.primary_metric
    return "accuracy" if metric == "roc_auc" else metric


@dataclass
class LabelsRead:
    """What one round of label reading found, not yet recorded."""

    metrics: dict[str, float]  # on every row read this round
    periods: list[LabelPeriod] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)  # watermark keys of label files read


class PerformanceTracker:
    def __init__(
        self,
        model: str,
        cfg: ModelConfig,
        state_dir: Path,
        store: StateStore,
        metrics: Metrics,
        source: Source | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.dir = state_dir / "predictions" / model
        cols = cfg.columns
        src = cfg.source
        self.labels_path = src.labels_path if src.kind == "directory" else None
        self.enabled = bool(cols.id and cols.prediction and cols.target and self.labels_path)
        if src.kind == "sql":  # SQLAlchemy (the `sql` extra) only matters for sql sources
            from watcher.sources.sql import SqlSource

        self.sql = (
            source
            if src.kind == "sql"
            and isinstance(source, SqlSource)
            and src.labels_table
            and cols.id
            and cols.prediction
            else None
        )
        # Whether this model has labels to follow at all (the performance signal's input).
        self.tracks = self.enabled or self.sql is not None
        self._next_sql_check = 0.0
        self._read_files: set[str] = set()  # label files known to be read (recorded in the store)
        self._unmatched: dict[str, int] = {}  # label file -> kept prediction files at last look

    def keep_predictions(self, batch_id: str, frame: pd.DataFrame, version: str = "") -> None:
        """Called after a batch is scored (worker thread); `version` is the reference the
        batch was scored against, i.e. the production version that served it."""
        cols = self.cfg.columns
        if not self.enabled or cols.id not in frame or cols.prediction not in frame:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in batch_id)
        kept = frame[[cols.id, cols.prediction]].rename(
            columns={cols.id: "id", cols.prediction: "prediction"}
        )
        kept["version"] = version
        tmp = self.dir / f".{safe}.parquet.tmp"
        kept.to_parquet(tmp, index=False)
        tmp.replace(self.dir / f"{safe}.parquet")

    def check_labels(self) -> dict[str, float] | None:
        """Read labels not seen before, record their periods; the metrics on them.

        The daemon does not call this: it reads with `read_labels` and records with
        `record` inside the transaction of the policy's decision (`Pipeline.on_labels`).
        """
        read = self.read_labels()
        if read is None:
            return None
        with self.store.transaction() as conn:
            self.record(conn, read)
        return read.metrics or None

    def record(self, conn: sqlite3.Connection, read: LabelsRead) -> list[LabelPeriod]:
        """Store what `read_labels` found, inside the caller's transaction; the periods
        that are new or changed."""
        changed = [p for p in read.periods if self.store.add_label_period(conn, self.model, p)]
        for key in read.marks:
            self.store.set_watermark(conn, key, "read")
        self._read_files.update(k.rsplit(":", 1)[-1] for k in read.marks)
        return changed

    def read_labels(self) -> LabelsRead | None:
        """Labels not read before, joined with their predictions. Reads only."""
        if self.sql is not None:
            return self._check_sql_labels()
        if not self.enabled or self.labels_path is None or not self.labels_path.is_dir():
            return None
        candidates = [
            p
            for p in sorted(self.labels_path.iterdir())
            if p.suffix in (".csv", ".parquet")
            and not p.name.startswith(".")
            and p.name not in self._read_files
        ]
        # This runs every loop round: ask the store about a file name once per process.
        new = []
        for p in candidates:
            if self.store.watermark(self._mark(p.name)) is None:
                new.append(p)
            else:
                self._read_files.add(p.name)
        if not new:
            return None
        target = self.cfg.columns.target
        id_col = self.cfg.columns.id
        assert target is not None
        assert id_col is not None
        kept_files = sorted(self.dir.glob("*.parquet")) if self.dir.is_dir() else []
        # A label file none of whose ids has a kept prediction yet (labels that came
        # first) is read again only once more predictions were kept.
        new = [p for p in new if self._unmatched.get(p.name) != len(kept_files)]
        if not new:
            return None
        kept = [pd.read_parquet(p) for p in kept_files]
        predictions = pd.concat(kept) if kept else None
        if predictions is not None and "version" not in predictions:
            predictions["version"] = ""
        read = LabelsRead({})
        joined_all = []
        for path in new:
            df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            if id_col not in df or target not in df:
                log.warning("label file %s lacks %s or %s; ignored", path, id_col, target)
                read.marks.append(self._mark(path.name))
                continue
            labels = df[[id_col, target]].rename(columns={id_col: "id", target: "label"})
            joined = (
                labels.merge(predictions, on="id", how="inner")
                if predictions is not None
                else labels.iloc[:0]
            )
            if joined.empty:
                if path.name not in self._unmatched:
                    log.info("%s: no kept prediction for the ids of %s yet", self.model, path)
                self._unmatched[path.name] = len(kept_files)
                continue
            self._unmatched.pop(path.name, None)
            read.marks.append(self._mark(path.name))
            joined_all.append(joined)
            for version, rows in joined.groupby("version", sort=False):
                period = self._period(path.name, str(version), rows["label"], rows["prediction"])
                if period is not None:
                    read.periods.append(period)
        if not read.marks:
            return None
        if joined_all:
            joined = pd.concat(joined_all)
            if len(joined):
                read.metrics = self._export(
                    joined["label"].to_numpy(), joined["prediction"].to_numpy()
                )
        return read

    def _mark(self, file_name: str) -> str:
        return f"labels:{self.model}:{file_name}"

    def _metrics(self, y: Any, p: Any) -> dict[str, float]:
        # The same metric definitions the retraining DAG's gate uses.
        if self.cfg.retrain.task == "regression":
            return regression_metrics(np.asarray(y, dtype=float), np.asarray(p, dtype=float))
        return classification_metrics(np.asarray(y), np.asarray(p), None)

    def _period(self, name: str, version: str, y: pd.Series, p: pd.Series) -> LabelPeriod | None:
        """The loss of one period's labelled rows (None when no row could be scored)."""
        ok = y.notna().to_numpy() & p.notna().to_numpy()
        if not ok.any():
            return None
        metric = performance_metric(self.cfg)
        try:
            value = self._metrics(y[ok], p[ok]).get(metric, math.nan)
        except (TypeError, ValueError) as exc:
            log.warning("%s: cannot score the labels of %s: %s", self.model, name, exc)
            return None
        if not math.isfinite(value):
            return None
        version = version or (self.store.reference_version(self.model) or "")
        return LabelPeriod(
            name, version, metric, value, loss_of(metric, value), int(ok.sum()), time.time()
        )

    def _check_sql_labels(self) -> LabelsRead | None:
        src = self.cfg.source
        assert self.sql is not None
        assert src.kind == "sql"
        if time.monotonic() < self._next_sql_check:
            return None
        self._next_sql_check = time.monotonic() + src.late_check_interval_seconds
        end_ts = self.sql.progress.end
        if end_ts is None:
            return None
        end = datetime.fromtimestamp(end_ts, UTC)
        start = end - timedelta(seconds=src.window_seconds * src.late_check_windows)
        try:
            labels = self.sql.load_labels(start, end)
        except SourceError as exc:  # the source's own metrics and alerts cover the outage
            log.warning("%s: labels not read this round: %s", self.model, exc)
            return None
        label_col = self.cfg.columns.target or "target"
        pred_col = self.cfg.columns.prediction
        if labels.empty or label_col not in labels or pred_col not in labels:
            return None
        read = LabelsRead(self._export(labels[label_col].to_numpy(), labels[pred_col].to_numpy()))
        # Each finished window is a period, attributed to the version that scored it.
        windows = self.sql.windows
        ts = pd.to_datetime(labels[src.timestamp_column], utc=True)
        index = (
            (ts - pd.Timestamp(windows.origin, unit="s", tz="UTC")).dt.total_seconds()
            // windows.width
        ).astype(int)
        for k, rows in labels.groupby(index.to_numpy(), sort=True):
            period = windows.batch_id(int(k))  # type: ignore[call-overload]
            with self.store.transaction() as conn:
                version = self.store.batch_version(conn, self.model, period) or ""
            found = self._period(period, version, rows[label_col], rows[pred_col])
            if found is not None:
                read.periods.append(found)
        return read

    def _export(self, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        result = self._metrics(y, p)
        for metric, value in result.items():
            self.metrics.model_performance.labels(self.model, metric).set(value)
        log.info(
            "%s: performance on %d labelled rows: %s",
            self.model,
            len(y),
            ", ".join(f"{k}={v:.3g}" for k, v in result.items()),
        )
        return result
