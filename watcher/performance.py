"""The production model's performance, once labels arrive.

Directory sources: predictions are kept (id + prediction, a small Parquet file per batch)
when a batch is scored; label files (id + target) land later in the source's
``labels_path``. Each new label file is joined with the kept predictions and the model's
metrics on those rows are exported as ``watcher_model_performance{model,metric}``. A label
file is read once: its name is recorded in the state store. Like a batch, a label file is
read only once it has settled (size and mtime unchanged across two checks and at least
``settle_seconds`` old), so one read mid-write does not lose its later rows. A file that
cannot be used (empty, not UTF-8, damaged Parquet, no id/target column, text labels for a
regression model) is set aside: recorded in the store with the reason, logged, counted in
``watcher_problems_total{kind="label_file"}`` and mailed; the other files are still used.

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

from watcher.alerts import alert_action
from watcher.config import ModelConfig
from watcher.errors import SourceError, WatcherError
from watcher.metrics import Metrics
from watcher.retrain.evaluation import classification_metrics, regression_metrics
from watcher.sources.base import Source
from watcher.state import StateStore

log = logging.getLogger(__name__)


class LabelFileError(WatcherError):
    """A label file cannot be used; it is set aside with this reason."""


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
        self._seen: dict[str, tuple[int, int]] = {}  # (size, mtime_ns) at the previous check
        self.settle_seconds = src.settle_seconds if src.kind == "directory" else 0.0

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
            and p.is_file()
        ]
        # This runs every loop round: ask the store about a file name once per process.
        new = []
        for p in self._settled(candidates):
            if self.store.watermark(f"labels:{self.model}:{p.name}") is None:
                new.append(p)
            else:
                self._read_files.add(p.name)
        if not new:
            return None
        frames = []
        rejected: dict[Path, str] = {}
        for path in new:
            try:
                frames.append(self._read_label_file(path))
            except LabelFileError as exc:
                rejected[path] = str(exc)
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
                why = rejected.get(path)
                value = "read" if why is None else f"rejected: {why}"[:1000]
                self.store.set_watermark(conn, f"labels:{self.model}:{path.name}", value)
                if why is not None:
                    self.store.enqueue(
                        conn,
                        alert_action(
                            "label_file_rejected",
                            key=f"labels:{self.model}:{path.name}:rejected",
                            model=self.model,
                            title=f"label file {path.name} set aside",
                            severity="warning",
                            details={"file": str(path), "reason": why},
                        ),
                    )
        for path, why in rejected.items():
            self.metrics.problems.labels(self.model, "label_file").inc()
            log.warning(
                "%s: label file %s set aside, its labels are not used: %s",
                self.model,
                path.name,
                why,
                extra={"model": self.model},
            )
        self._read_files.update(path.name for path in new)
        return result

    def _settled(self, paths: list[Path]) -> list[Path]:
        """The files whose size and mtime did not change since the last check and that are
        at least `settle_seconds` old: the same rule as for batches."""
        now = time.time()
        current: dict[str, tuple[int, int]] = {}
        settled = []
        for p in paths:
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            current[p.name] = sig
            if self._seen.get(p.name) == sig and now - st.st_mtime >= self.settle_seconds:
                settled.append(p)
        self._seen = current
        return settled

    def _read_label_file(self, path: Path) -> pd.DataFrame:
        """id + label of one file; LabelFileError says why a file cannot be used."""
        id_col, target = self.cfg.columns.id, self.cfg.columns.target
        assert id_col is not None
        assert target is not None
        if path.stat().st_size == 0:
            raise LabelFileError(f"{path.name} is empty (0 bytes)")
        try:
            if path.suffix == ".parquet":
                df = pd.read_parquet(path)
            else:
                df = pd.read_csv(path, encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise LabelFileError(
                f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from exc
        except Exception as exc:  # pandas and pyarrow raise many types for damaged files
            kind = "Parquet" if path.suffix == ".parquet" else "CSV"
            raise LabelFileError(
                f"{path.name} is not a readable {kind} file: {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc
        missing = [c for c in (id_col, target) if c not in df.columns]
        if missing:
            raise LabelFileError(f"{path.name} lacks column(s) {missing}")
        out = df[[id_col, target]].rename(columns={id_col: "id", target: "label"})
        if self.cfg.retrain.task == "regression":
            numbers = pd.to_numeric(out["label"], errors="coerce")
            bad = out["label"].notna() & numbers.isna()
            if bad.any():
                examples = sorted(map(str, out["label"][bad].unique()[:3]))
                raise LabelFileError(
                    f"{path.name}: {int(bad.sum())} label(s) are not numbers (e.g. "
                    f"{examples}), but retrain.task is regression"
                )
            out["label"] = numbers
        return out

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
