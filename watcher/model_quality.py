"""Model quality (not speed): the production model's loss once labels arrive.

Directory sources: predictions are kept (id + prediction + the version whose reference
scored the batch, a small Parquet file per batch) when a batch is scored; label files
(id + target) land later in the source's ``labels_path``. Each new label file is joined
with the kept predictions. A label file is read once: its name is recorded in the state
store, in the same transaction as its losses and the policy's decision on them. Like a
batch, a label file is read only once it has settled (size and mtime unchanged across two
checks and at least ``settle_seconds`` old), so one read mid-write does not lose its later
rows. A file that cannot be used (empty, not UTF-8, damaged Parquet, no id/target column,
text labels for a regression model) is set aside: recorded in the store with the reason,
logged, counted in ``watcher_problems_total{kind="label_file"}`` and mailed; the other
files are still used.

SQL sources with a ``labels_table``: the prediction log already holds the predictions, so
every ``late_check_interval_seconds`` the labels of the recent finished windows
(``late_check_windows`` of them) are joined by id; each window is a period, recorded again
when more of its rows are labelled.

For each labelled period the primary metric (``retrain.primary_metric``; ``accuracy`` when
that is ``roc_auc`` and the prediction log holds no ``columns.score``, since roc_auc needs
the positive class's probability) is turned into a loss (`watcher.signals.loss_of`) and
kept with the version that served the period: the `performance` trigger signal's history.
With ``columns.score`` the roc_auc of a period is computed from its labels and scores; a
period whose labels hold one class only has no ROC AUC: it is skipped, and the log says
so (``LabelsRead.skipped``). The metrics on everything read in one round are exported as
``watcher_model_performance{model,metric}``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from watcher.alerts import alert_action
from watcher.config import ModelConfig
from watcher.errors import SourceError
from watcher.fileio import LabelFileError, read_label_file, write_parquet_atomic
from watcher.metrics import Metrics
from watcher.retrain.evaluation import classification_metrics, regression_metrics, score_auc
from watcher.signals import loss_of, performance_metric
from watcher.sources.base import Source
from watcher.state import LabelPeriod, StateConn, StateStore

log = logging.getLogger(__name__)


@dataclass
class LabelsRead:
    """What one round of label reading found, not yet recorded."""

    metrics: dict[str, float]  # on every row read this round
    periods: list[LabelPeriod] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)  # watermark keys of label files read
    rejected: dict[str, str] = field(default_factory=dict)  # label file name -> why not used
    # period -> why it has no value for the signal (one class only: no ROC AUC)
    skipped: dict[str, str] = field(default_factory=dict)


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
            from watcher.sources.sql.source import SqlSource

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
        self._seen: dict[str, tuple[int, int]] = {}  # (size, mtime_ns) at the previous check
        self.settle_seconds = src.settle_seconds if src.kind == "directory" else 0.0
        self._said_skipped: set[tuple[str, str, int]] = set()  # (period, version, rows) logged

    def keep_predictions(self, batch_id: str, frame: pd.DataFrame, version: str = "") -> None:
        """Called after a batch is scored (worker thread); `version` is the reference the
        batch was scored against, i.e. the production version that served it."""
        cols = self.cfg.columns
        if not self.enabled or cols.id not in frame or cols.prediction not in frame:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in batch_id)
        roles = {cols.id: "id", cols.prediction: "prediction"}
        if cols.score and cols.score in frame:  # check_batch refused a batch without it
            roles[cols.score] = "score"
        kept = frame[list(roles)].rename(columns=roles)
        kept["version"] = version
        write_parquet_atomic(self.dir / f"{safe}.parquet", kept)

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

    def record(self, conn: StateConn, read: LabelsRead) -> list[LabelPeriod]:
        """Store what `read_labels` found, inside the caller's transaction; the periods
        that are new or changed."""
        changed = [p for p in read.periods if self.store.add_label_period(conn, self.model, p)]
        for key in read.marks:
            self.store.set_watermark(conn, key, "read")
        for name, why in read.rejected.items():
            self.store.set_watermark(conn, self._mark(name), f"rejected: {why}"[:1000])
            self.store.enqueue(
                conn,
                alert_action(
                    "label_file_rejected",
                    key=f"{self._mark(name)}:rejected",
                    model=self.model,
                    title=f"label file {name} set aside",
                    severity="warning",
                    details={"file": name, "reason": why},
                ),
            )
        self._read_files.update(k.rsplit(":", 1)[-1] for k in read.marks)
        self._read_files.update(read.rejected)
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
        for p in self._settled(candidates):
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
            try:
                labels = self._read_label_file(path)
            except LabelFileError as exc:
                read.rejected[path.name] = str(exc)
                self.metrics.problem(self.model, "label_file")
                log.warning(
                    "%s: label file %s set aside, its labels are not used: %s",
                    self.model,
                    path.name,
                    exc,
                    extra={"model": self.model},
                )
                continue
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
                period = self._period(
                    read, path.name, str(version), rows["label"], rows["prediction"], _score(rows)
                )
                if period is not None:
                    read.periods.append(period)
        if not read.marks and not read.rejected:
            return None
        if joined_all:
            joined = pd.concat(joined_all)
            if len(joined):
                read.metrics = self._export(
                    joined["label"].to_numpy(), joined["prediction"].to_numpy(), _score(joined)
                )
        return read

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
        df = read_label_file(path, id_col, target)
        out = df.rename(columns={id_col: "id", target: "label"})
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

    def _mark(self, file_name: str) -> str:
        return f"labels:{self.model}:{file_name}"

    def _metrics(self, y: Any, p: Any, score: Any | None = None) -> dict[str, float]:
        # The same metric definitions the retraining DAG's gate uses.
        if self.cfg.retrain.task == "regression":
            return regression_metrics(np.asarray(y, dtype=float), np.asarray(p, dtype=float))
        out = classification_metrics(np.asarray(y), np.asarray(p), None)
        if score is not None:
            floats = np.asarray(score, dtype=float)
            ok = ~np.isnan(floats)
            auc, _ = score_auc(np.asarray(y)[ok], floats[ok])
            out["roc_auc"] = math.nan if auc is None else auc
        return out

    def _period(
        self,
        read: LabelsRead,
        name: str,
        version: str,
        y: pd.Series,
        p: pd.Series,
        score: pd.Series | None = None,
    ) -> LabelPeriod | None:
        """The loss of one period's labelled rows (None when no row could be scored, or
        the followed metric is undefined there: then `read.skipped` says why)."""
        metric = performance_metric(self.cfg)
        followed = score if metric == "roc_auc" else None  # roc_auc: from the scores
        if metric == "roc_auc" and followed is None:
            why = "its predictions were kept without a score (before columns.score was set)"
            self._skip(read, name, version or "", len(y), why)
            return None
        ok = y.notna().to_numpy() & p.notna().to_numpy()
        if followed is not None:
            ok &= followed.notna().to_numpy()
        if not ok.any():
            return None
        try:
            if followed is not None:
                value, why = score_auc(y[ok].to_numpy(), followed[ok].to_numpy(dtype=float))
            else:
                value, why = self._metrics(y[ok], p[ok]).get(metric, math.nan), ""
        except (TypeError, ValueError) as exc:
            log.warning("%s: cannot score the labels of %s: %s", self.model, name, exc)
            return None
        version = version or (self.store.reference_version(self.model) or "")
        if value is None:
            self._skip(read, name, version, int(ok.sum()), why)
            return None
        if not math.isfinite(value):
            return None
        return LabelPeriod(
            name, version, metric, value, loss_of(metric, value), int(ok.sum()), time.time()
        )

    def _skip(self, read: LabelsRead, name: str, version: str, rows: int, why: str) -> None:
        """A period left out of the performance signal, said once per content (a SQL
        window is read again at every late check)."""
        reason = f"period {name} is left out of the performance signal: {why}"
        read.skipped[name] = reason
        if (name, version, rows) in self._said_skipped:
            return
        self._said_skipped.add((name, version, rows))
        log.warning("%s: %s", self.model, reason, extra={"model": self.model})

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
        score_col = self.cfg.columns.score
        scores = labels[score_col].astype(float) if score_col and score_col in labels else None
        y, p = labels[label_col].to_numpy(), labels[pred_col].to_numpy()
        read = LabelsRead(self._export(y, p, scores))
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
            found = self._period(
                read,
                period,
                version,
                rows[label_col],
                rows[pred_col],
                None if scores is None else scores.loc[rows.index],
            )
            if found is not None:
                read.periods.append(found)
        return read

    def _export(
        self, y: np.ndarray, p: np.ndarray, score: pd.Series | None = None
    ) -> dict[str, float]:
        result = self._metrics(y, p, score)
        for metric, value in result.items():
            self.metrics.performance_measured(self.model, metric, value)
        log.info(
            "%s: performance on %d labelled rows: %s",
            self.model,
            len(y),
            ", ".join(f"{k}={v:.3g}" for k, v in result.items()),
        )
        return result


def _score(rows: pd.DataFrame) -> pd.Series | None:
    """The kept score of joined rows, as floats; None when predictions were kept without
    one (kept before columns.score was configured)."""
    return rows["score"].astype(float) if "score" in rows else None
