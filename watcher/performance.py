"""The production model's performance, once labels arrive.

Directory sources: predictions are kept (id + prediction, a small Parquet file per batch)
when a batch is scored; label files (id + target) land later in the source's
``labels_path``. Each new label file is joined with the kept predictions and the model's
metrics on those rows are exported as ``watcher_model_performance{model,metric}``. A label
file is read once: its name is recorded in the state store.

SQL sources with a ``labels_table``: the prediction log already holds the predictions, so
every ``late_check_interval_seconds`` the labels of the recent finished windows
(``late_check_windows`` of them) are joined by id and the metrics on them exported.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from watcher.config import ModelConfig
from watcher.errors import SourceError
from watcher.metrics import Metrics
from watcher.retrain.evaluation import classification_metrics, regression_metrics
from watcher.sources.base import Source
from watcher.state import StateStore

log = logging.getLogger(__name__)


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
        self._next_sql_check = 0.0
        self._read_files: set[str] = set()  # label files known to be read (recorded in the store)

    def keep_predictions(self, batch_id: str, frame: pd.DataFrame) -> None:
        """Called after a batch is scored (worker thread)."""
        cols = self.cfg.columns
        if not self.enabled or cols.id not in frame or cols.prediction not in frame:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in batch_id)
        kept = frame[[cols.id, cols.prediction]].rename(
            columns={cols.id: "id", cols.prediction: "prediction"}
        )
        tmp = self.dir / f".{safe}.parquet.tmp"
        kept.to_parquet(tmp, index=False)
        tmp.replace(self.dir / f"{safe}.parquet")

    def check_labels(self) -> dict[str, float] | None:
        """Read labels not seen before; export and return the metrics on them."""
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
            if self.store.watermark(f"labels:{self.model}:{p.name}") is None:
                new.append(p)
            else:
                self._read_files.add(p.name)
        if not new:
            return None
        target = self.cfg.columns.target
        assert target is not None
        assert self.cfg.columns.id is not None
        frames = []
        for path in new:
            df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            if self.cfg.columns.id not in df or target not in df:
                log.warning(
                    "label file %s lacks %s or %s; ignored", path, self.cfg.columns.id, target
                )
                continue
            frames.append(
                df[[self.cfg.columns.id, target]].rename(
                    columns={self.cfg.columns.id: "id", target: "label"}
                )
            )
        kept = (
            [pd.read_parquet(p) for p in sorted(self.dir.glob("*.parquet"))]
            if self.dir.is_dir()
            else []
        )
        result: dict[str, float] | None = None
        if frames and kept:
            joined = pd.concat(frames).merge(pd.concat(kept), on="id", how="inner")
            if len(joined):
                result = self._export(joined["label"].to_numpy(), joined["prediction"].to_numpy())
        with self.store.transaction() as conn:
            for path in new:
                self.store.set_watermark(conn, f"labels:{self.model}:{path.name}", "read")
        self._read_files.update(path.name for path in new)
        return result

    def _check_sql_labels(self) -> dict[str, float] | None:
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
        return self._export(labels[label_col].to_numpy(), labels[pred_col].to_numpy())

    def _export(self, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        # The same metric definitions the retraining DAG's gate uses.
        if self.cfg.retrain.task == "regression":
            result = regression_metrics(y.astype(float), p.astype(float))
        else:
            result = classification_metrics(y, p, None)
        for metric, value in result.items():
            self.metrics.model_performance.labels(self.model, metric).set(value)
        log.info(
            "%s: performance on %d labelled rows: %s",
            self.model,
            len(y),
            ", ".join(f"{k}={v:.3g}" for k, v in result.items()),
        )
        return result
