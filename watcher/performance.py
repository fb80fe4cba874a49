"""The production model's performance, once labels arrive.

Predictions are kept (id + prediction, a small Parquet file per batch) when a batch is
scored; label files (id + target) land later in the source's ``labels_path``. Each new
label file is joined with the kept predictions and the model's metrics on those rows are
exported as ``watcher_model_performance{model,metric}``. A label file is read once: its
name is recorded in the state store.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from watcher.config import ModelConfig
from watcher.metrics import Metrics
from watcher.state import StateStore

log = logging.getLogger(__name__)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    err = y_pred - y_true
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": math.sqrt(float((err**2).mean())),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
    }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((y_true == y_pred).mean())}


class PerformanceTracker:
    def __init__(
        self, model: str, cfg: ModelConfig, state_dir: Path, store: StateStore, metrics: Metrics
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
        """Read label files not seen before; export and return the metrics on them."""
        if not self.enabled or self.labels_path is None or not self.labels_path.is_dir():
            return None
        new = [
            p
            for p in sorted(self.labels_path.iterdir())
            if p.suffix in (".csv", ".parquet")
            and not p.name.startswith(".")
            and self.store.watermark(f"labels:{self.model}:{p.name}") is None
        ]
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
                y, p = joined["label"].to_numpy(), joined["prediction"].to_numpy()
                if self.cfg.retrain.task == "regression":
                    result = regression_metrics(y.astype(float), p.astype(float))
                else:
                    result = classification_metrics(y, p)
                for metric, value in result.items():
                    self.metrics.model_performance.labels(self.model, metric).set(value)
                log.info(
                    "%s: performance on %d newly labelled rows: %s",
                    self.model,
                    len(joined),
                    ", ".join(f"{k}={v:.3g}" for k, v in result.items()),
                )
        with self.store.transaction() as conn:
            for path in new:
                self.store.set_watermark(conn, f"labels:{self.model}:{path.name}", "read")
        return result
