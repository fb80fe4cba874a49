"""Replay a labelled data set as production traffic, period by period.

For each period (a week by default) the replay serves the rows with the model currently
in production (loaded from the registry, as a serving system would), writes them as a
batch file into the model's source folder (write-then-rename), and delivers the labels of
the previous period as a label file: labels arrive one period late, as in real life.
With `wait=True` it waits for the daemon to score each batch. Retraining runs alongside,
as in production: the replay goes on at its pace (`period_seconds` of wall time per
period) while Airflow retrains, and each period is served by whatever model is in
production when it is sent. `wait_for_retrain=True` instead holds the replay until a
retrain the batch caused has ended and the daemon uses its result (deterministic: tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from watcher.config import ModelConfig, Settings
from watcher.errors import WatcherError
from watcher.fileio import write_parquet_atomic
from watcher.reference import reference_tag
from watcher.registry_backend import open_registry
from watcher.state import Decision, open_state


@dataclass
class PeriodResult:
    index: int
    start: pd.Timestamp
    rows: int
    served_version: str
    batch_file: str
    # The served predictions' error, known once the labels arrive: the mean absolute error
    # for a regression, the error rate (share of wrong classes) for a classification.
    mae: float
    baseline_mae: float | None = None  # the first production version, never retrained
    status: str = "sent"
    drift_share: float | None = None
    dataset_drift: bool | None = None
    top_features: list[str] = field(default_factory=list)
    decision: str = ""
    reason: str = ""
    run_id: str | None = None
    run_state: str | None = None
    version_after: str | None = None
    signal: str | None = None  # the run's reason kind: which signal fired (end of replay)
    outcome: str | None = None  # deployed / refused / failed / unknown (end of replay)


def period_seconds(speed: float) -> float:
    """Wall-clock seconds one replayed period takes at `speed` periods per minute (the
    `--speed` of `watcher demo` and `watcher replay`); 0 is as fast as possible."""
    return 60.0 / speed if speed > 0 else 0.0


def periods(
    data: pd.DataFrame, timestamp: str, every: str = "7D"
) -> Iterator[tuple[pd.Timestamp, pd.DataFrame]]:
    ts = pd.to_datetime(data[timestamp])
    start = ts.min().normalize()
    keys = ((ts - start) // pd.Timedelta(every)).astype(int)
    for k, chunk in data.groupby(keys, sort=True):
        yield start + int(k) * pd.Timedelta(every), chunk


def predict(estimator: Any, frame: pd.DataFrame) -> np.ndarray:
    """Serve like production: the estimator gets exactly the columns it was fitted on.
    Class labels stay what the model predicts (strings such as 'Up' included)."""
    columns = list(getattr(estimator, "feature_names_in_", frame.columns))
    return np.asarray(estimator.predict(frame[columns]))


def positive_proba(estimator: Any, frame: pd.DataFrame) -> np.ndarray:
    """The positive class's probability (predict_proba[:, 1]: the class that sorts last),
    what a production log writes to `columns.score`."""
    columns = list(getattr(estimator, "feature_names_in_", frame.columns))
    return np.asarray(estimator.predict_proba(frame[columns]))[:, 1]


def error(task: str, y: Any, predicted: Any) -> float:
    """The replay's per-period error: MAE for a regression, error rate for a classifier."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    if task == "classification":
        return float((y != predicted).mean())
    return float(np.abs(predicted.astype(float) - y.astype(float)).mean())


class Replay:
    def __init__(self, settings: Settings, model: str, data: pd.DataFrame) -> None:
        if model not in settings.models:
            raise WatcherError(f"unknown model {model!r}", hint=f"one of {sorted(settings.models)}")
        self.settings = settings
        self.model = model
        self.cfg: ModelConfig = settings.models[model]
        src = self.cfg.source
        if src.kind != "directory":
            raise WatcherError("replay writes files: the model needs a directory source")
        cols = self.cfg.columns
        if not (cols.timestamp and cols.target and cols.id and cols.prediction):
            raise WatcherError(
                f"replay needs columns.timestamp, target, id and prediction for {model}",
            )
        missing = [c for c in (cols.timestamp, cols.target, cols.id) if c not in data]
        if missing:
            raise WatcherError(f"the replay data lacks column(s) {missing}")
        self.incoming = src.path
        self.labels = src.labels_path or (src.path.parent / "labels")
        self.data = data.sort_values(cols.timestamp)
        self.registry = open_registry(settings.registry)
        # The daemon's own state: the replay follows what it scored and decided.
        self.store = open_state(settings)
        self._served: tuple[str, Any] | None = None
        self._baseline: Any = None

    def _production(self) -> tuple[str, Any]:
        version = self.registry.production_version(self.model)
        if version is None:
            raise WatcherError(
                f"no production version of {self.model} in the registry",
                hint="bootstrap one first (watcher bootstrap)",
            )
        if self._served is None or self._served[0] != version:
            self._served = (version, self.registry.load_model(self.model, version))
            if self._baseline is None:
                self._baseline = self._served[1]
        return self._served

    def count(self, every: str = "7D", skip: int = 8) -> int:
        """How many periods `run` would replay."""
        assert self.cfg.columns.timestamp
        return max(0, sum(1 for _ in periods(self.data, self.cfg.columns.timestamp, every)) - skip)

    def run(
        self,
        *,
        skip: int = 8,
        limit: int | None = None,
        every: str = "7D",
        wait: bool = True,
        wait_for_retrain: bool = False,
        period_seconds: float = 0.0,
        timeout: float = 900.0,
        on_period: Callable[[PeriodResult], None] | None = None,
    ) -> list[PeriodResult]:
        cols = self.cfg.columns
        assert cols.target
        assert cols.id
        assert cols.prediction
        assert cols.timestamp
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.labels.mkdir(parents=True, exist_ok=True)
        results: list[PeriodResult] = []
        pending_labels: tuple[str, pd.DataFrame] | None = None
        chosen = list(periods(self.data, cols.timestamp, every))[skip:]
        for i, (start, chunk) in enumerate(chosen[:limit] if limit else chosen):
            began = time.monotonic()
            version, estimator = self._production()
            served = chunk.drop(columns=[cols.target]).copy()
            served[cols.prediction] = predict(estimator, chunk)
            if cols.score:
                served[cols.score] = positive_proba(estimator, chunk)
            name = f"{self.model}-{start:%Y-%m-%d}.parquet"
            write_parquet_atomic(self.incoming / name, served)
            if pending_labels is not None:  # last period's labels arrive now
                write_parquet_atomic(self.labels / pending_labels[0], pending_labels[1])
            delivered = pending_labels[0] if pending_labels is not None else None
            pending_labels = (f"labels-{start:%Y-%m-%d}.parquet", chunk[[cols.id, cols.target]])
            y = chunk[cols.target].to_numpy()
            task = self.cfg.retrain.task
            result = PeriodResult(
                index=skip + i + 1,
                start=start,
                rows=len(chunk),
                served_version=version,
                batch_file=name,
                mae=error(task, y, served[cols.prediction].to_numpy()),
                baseline_mae=error(task, y, predict(self._baseline, chunk)),
            )
            if wait:
                self._follow(result, timeout, wait_for_retrain, delivered)
            results.append(result)
            if on_period is not None:
                on_period(result)
            time.sleep(max(0.0, period_seconds - (time.monotonic() - began)))
        if pending_labels is not None:
            write_parquet_atomic(self.labels / pending_labels[0], pending_labels[1])
        return results

    def _follow(
        self,
        result: PeriodResult,
        timeout: float,
        wait_for_retrain: bool,
        labels: str | None = None,
    ) -> None:
        """Wait for the daemon to score the batch (and to decide on the `labels` file
        delivered with it, when the model follows its performance), then for any
        retraining either decision caused."""
        deadline = time.monotonic() + timeout
        record = None
        while time.monotonic() < deadline:
            record = self.store.batch(self.model, result.batch_file)
            if record is not None and record.status != "claimed":
                break
            time.sleep(0.2)
        if record is None or record.status == "claimed":
            raise WatcherError(
                f"the daemon did not score {result.batch_file} within {timeout:.0f}s",
                hint="is `watcher run` running with the same config?",
            )
        result.status, result.drift_share = record.status, record.drift_share
        result.dataset_drift = record.dataset_drift
        if record.result:
            cols = record.result["drift"]["columns"]
            ranked = sorted(
                cols.items(), key=lambda kv: -float(kv[1]["score"] / kv[1]["threshold"])
            )
            result.top_features = [k for k, v in ranked if v["drifted"]][:3]
        decisions = self.store.decisions(self.model, 1, batch_id=result.batch_file)
        if decisions:
            d = decisions[0]
            result.decision, result.reason, result.run_id = d.outcome, d.reason, d.run_id
        elif record.reason:
            result.decision, result.reason = "rejected", record.reason
        if labels is not None and self._follows_labels():
            # The daemon reads labels after scoring: wait for its decision on them, and
            # show it when it triggered (a performance or age trigger happens there).
            point = f"labels:{labels}"
            found: list[Decision] = []
            # Bounded: labels that match no kept prediction make no decision at all.
            until = min(deadline, time.monotonic() + 30.0)
            while time.monotonic() < until and not found:
                found = self.store.decisions(self.model, 1, batch_id=point)
                if not found:
                    time.sleep(0.2)
            if found and found[0].run_id and not result.run_id:
                d = found[0]
                result.decision, result.reason, result.run_id = d.outcome, d.reason, d.run_id
        if result.run_id and result.decision == "triggered" and wait_for_retrain:
            while time.monotonic() < deadline:
                result.run_state = self.run_states().get(result.run_id, "pending")
                ended = result.run_state not in ("pending", "queued", "running")
                if ended and self._daemon_caught_up():
                    break
                time.sleep(0.5)
        result.version_after = self.registry.production_version(self.model)

    def _follows_labels(self) -> bool:
        cols = self.cfg.columns
        return bool(cols.id and cols.prediction and cols.target)

    def wait_idle(self, timeout: float = 600.0) -> None:
        """Wait until no retrain of the model is pending or running (end of a replay)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.store.retraining(self.model) and self._daemon_caught_up():
                return
            time.sleep(1)

    def run_states(self) -> dict[str, str]:
        """The state of every retrain run of the model, by run id."""
        return {r.run_id: r.state for r in self.store.runs(self.model, limit=100_000)}

    def run_signals(self) -> dict[str, str]:
        """The signal that fired each retrain run (its reason kind), by run id."""
        runs = self.store.runs(self.model, limit=100_000)
        return {r.run_id: str(r.conf.get("reason_kind") or "manual") for r in runs}

    def close(self) -> None:
        self.store.close()

    def _daemon_caught_up(self) -> bool:
        """The daemon uses the registry's production version as its reference."""
        version = self.registry.production_version(self.model)
        in_use = self.store.reference_version(self.model)
        return version is not None and in_use == reference_tag(version)


def monthly_mae(results: list[PeriodResult]) -> pd.DataFrame:
    """MAE per month, row-weighted, with and without retraining."""
    frame = (
        pd.DataFrame(
            {
                "month": [r.start.strftime("%Y-%m") for r in results],
                "rows": [r.rows for r in results],
                "loop": [r.mae * r.rows for r in results],
                "baseline": [(r.baseline_mae or 0.0) * r.rows for r in results],
            }
        )
        .groupby("month")
        .sum()
    )
    return pd.DataFrame(
        {
            "mae_with_loop": frame["loop"] / frame["rows"],
            "mae_without_retraining": frame["baseline"] / frame["rows"],
        }
    )
