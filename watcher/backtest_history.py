"""The labelled history of a backtest, cut into periods, and the one training run per
period that every policy shares (see `watcher.backtest`).

A run after period i sees the same data and the same seed whatever policy asked for it,
so each period's run is done once, in worker processes, with the DAG's own steps.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from watcher.config import ModelConfig, Settings
from watcher.errors import BacktestError, TrainingDataError
from watcher.fileio import read_table, write_json_atomic, write_parquet_atomic
from watcher.registry import load_trusted_model
from watcher.retrain import data as data_mod
from watcher.retrain import steps
from watcher.retrain.evaluation import limited_threads

MIN_SERVED_PERIODS = 2

# ---- the history, cut into periods ---------------------------------------------------


@dataclass(frozen=True)
class History:
    """The labelled history of one model, in time order, cut into periods."""

    model: str
    frame: pd.DataFrame  # every row, sorted by time, with a `_period` column
    starts: list[pd.Timestamp]  # start of each period
    skip: int  # periods used for version 1
    label_delay: int

    @property
    def n_periods(self) -> int:
        return len(self.starts)

    def rows(self, period: int) -> pd.DataFrame:
        rows: pd.DataFrame = self.frame[self.frame["_period"].to_numpy() == period]
        return rows


def load_history(
    frame: pd.DataFrame,
    model_cfg: ModelConfig,
    model: str,
    *,
    every: str = "7D",
    skip: int = 8,
    label_delay: int = 1,
    limit: int | None = None,
) -> History:
    """Check the data can be backtested and cut it into periods (BacktestError if not)."""
    cols = model_cfg.columns
    if cols.timestamp is None or cols.timestamp not in frame.columns:
        raise BacktestError(
            f"the data has no timestamp column ({cols.timestamp or 'columns.timestamp unset'})",
            hint="a backtest replays history in time order: set columns.timestamp in the "
            "config and give every row a time",
        )
    if cols.target is None or cols.target not in frame.columns:
        raise BacktestError(
            f"the data has no labels: the target column {cols.target!r} is absent",
            hint="a backtest needs the true outcome of every row (columns.target)",
        )
    if frame[cols.target].notna().sum() == 0:
        raise BacktestError(
            f"the data has no labels: the target column {cols.target!r} is empty",
            hint="a backtest needs the true outcome of every row",
        )
    missing = [c for c in cols.features if c not in frame.columns]
    if missing:
        raise BacktestError(
            f"the data lacks the configured feature column(s) {missing}",
            hint="the data must hold every feature of columns.numeric/categorical",
        )
    try:
        width = pd.Timedelta(every)
    except ValueError as exc:
        raise BacktestError(
            f"--every {every!r} is not a period length", hint="use e.g. 7D, 1D, 12h"
        ) from exc
    if width <= pd.Timedelta(0):
        raise BacktestError(f"--every {every!r} must be a positive period length")
    if skip < 1 or label_delay < 0:
        raise BacktestError("--skip must be at least 1 and --label-delay at least 0")
    ts = data_mod.timestamps(frame, cols)
    assert ts is not None
    if ts.isna().any():
        raise BacktestError(
            f"{int(ts.isna().sum())} rows have no timestamp in {cols.timestamp!r}",
            hint="drop them or fill them in",
        )
    data = frame.copy()
    data[cols.timestamp] = ts
    data = data.sort_values(cols.timestamp, kind="stable").reset_index(drop=True)
    origin = data[cols.timestamp].min().normalize()
    keys = ((data[cols.timestamp] - origin) // width).astype(int)
    # Periods are numbered densely: an empty stretch of time is no period to serve.
    codes, uniques = pd.factorize(keys, sort=True)
    data["_period"] = codes
    starts = [origin + int(k) * width for k in uniques]
    if limit is not None:
        keep = skip + limit
        data = data[data["_period"] < keep].reset_index(drop=True)
        starts = starts[:keep]
    served = len(starts) - skip
    if served < MIN_SERVED_PERIODS:
        raise BacktestError(
            f"too few periods: the data spans {len(starts)} period(s) of {every}, "
            f"{skip} of them train version 1, leaving {max(served, 0)} to replay "
            f"(at least {MIN_SERVED_PERIODS} needed)",
            hint="use a shorter --every, a smaller --skip, or more history",
        )
    return History(model, data, starts, skip, label_delay)


# ---- one retraining run per period, shared by all policies ---------------------------


@dataclass
class Training:
    """The outcome of the DAG's steps run after `period` (or version 1 when period < 0)."""

    period: int
    ok: bool
    message: str = ""
    challenger: Any = None  # fitted on the training rows, judged on the holdout
    final: Any = None  # what deploy registers (refit on every row when configured)
    features: list[str] = field(default_factory=list)
    holdout: pd.DataFrame | None = None
    train: pd.DataFrame | None = None  # the rows the challenger was fitted on
    trained_until: pd.Timestamp | None = None  # newest row the final model saw
    reference: pd.DataFrame | None = None  # the next drift reference, with predictions
    importance: dict[str, float] = field(default_factory=dict)  # selection's scores
    seconds: float = 0.0


def training_rows(history: History, model_cfg: ModelConfig, after: int, delay: int) -> pd.DataFrame:
    """What ingest would gather after period `after`: the window up to that period's end,
    with labels only for periods at least `delay` old, plus the base training data."""
    cols, cfg = model_cfg.columns, model_cfg.retrain
    assert cols.timestamp is not None
    assert cols.target is not None
    frame = history.frame
    rows = frame[frame["_period"].to_numpy() <= after].copy()
    rows.loc[rows["_period"] > after - delay, cols.target] = np.nan
    ts = rows[cols.timestamp]
    if cfg.window == "last_days":
        labelled = rows[cols.target].notna().to_numpy()
        span = pd.Timedelta(days=cfg.window_size)
        rows = rows[data_mod.window_mask(ts, labelled, ts.max(), span).to_numpy()]
    elif cfg.window == "last_batches":
        rows = rows[(rows["_period"] > after - cfg.window_size).to_numpy()]
    rows = rows.drop(columns=["_period"]).assign(**{data_mod.ORIGIN: "production"})
    if cfg.base_training_data is not None:
        base = read_table(cfg.base_training_data).assign(**{data_mod.ORIGIN: "base"})
        rows = pd.concat([rows, base], ignore_index=True)
    return rows.reset_index(drop=True)


def run_training(
    settings: Settings, history: History, after: int, delay: int, workdir: Path
) -> Training:
    """Run the DAG's training steps on the data seen after period `after`."""
    model_cfg = settings.models[history.model]
    cols = model_cfg.columns
    started = time.monotonic()
    ctx = steps.RunContext(settings, history.model, f"backtest-{after:04d}-{delay}")
    rows = training_rows(history, model_cfg, after, delay)
    write_parquet_atomic(ctx.path("data.parquet"), rows)
    write_json_atomic(ctx.path("ingest.json"), {"production_rows": len(rows)})
    try:
        steps.validate(ctx)
        steps.engineer(ctx)
        steps.select(ctx)
        steps.train(ctx)
    except TrainingDataError as exc:  # the DAG run fails the same way
        return Training(after, False, exc.message, seconds=time.monotonic() - started)
    selection = steps.read_selection(ctx)
    challenger = load_trusted_model(ctx.path("challenger.skops"))
    final_path = ctx.path("final.skops")
    final = load_trusted_model(final_path) if final_path.exists() else challenger
    validated = pd.read_parquet(ctx.path("validated.parquet"))
    reference = steps.reference_frame(ctx, final, selection.features)
    ts = data_mod.timestamps(validated, cols)
    until = ts.max() if ts is not None and len(ts) else None
    if not settings.models[history.model].retrain.refit_on_all_data:
        train_ts = data_mod.timestamps(pd.read_parquet(ctx.path("train.parquet")), cols)
        until = train_ts.max() if train_ts is not None and len(train_ts) else until
    return Training(
        period=after,
        ok=True,
        challenger=challenger,
        final=final,
        features=selection.features,
        holdout=pd.read_parquet(ctx.path("holdout.parquet")),
        train=pd.read_parquet(ctx.path("train.parquet")),
        trained_until=until,
        reference=reference,
        importance=selection.scores,
        seconds=time.monotonic() - started,
    )


# Worker processes get the settings and history once (initializer), not with every task.
_WORKER: dict[str, Any] = {}


def _init_worker(settings: Settings, history: History, tmp: Path) -> None:
    _WORKER["settings"], _WORKER["history"], _WORKER["tmp"] = settings, history, tmp


def _settings_in(settings: Settings, workdir: Path) -> Settings:
    """The settings with state and registry under `workdir`: a backtest writes nowhere else."""
    daemon = settings.daemon.model_copy(update={"state_dir": workdir / "state"})
    registry = settings.registry.model_copy(update={"path": workdir / "registry"})
    return settings.model_copy(update={"daemon": daemon, "registry": registry})


def _train_task(after: int, delay: int) -> Training:
    import logging
    import shutil

    logging.getLogger("watcher").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(dir=_WORKER["tmp"]))
    settings: Settings = _WORKER["settings"]
    threads = settings.models[_WORKER["history"].model].retrain.threads
    try:
        with limited_threads(threads):
            return run_training(
                _settings_in(settings, work), _WORKER["history"], after, delay, work
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_all(
    settings: Settings,
    history: History,
    pool: Executor,
    on_done: Callable[[], None] = lambda: None,
) -> dict[int, Training]:
    """Version 1 (key -1) and the run after every served period but the last, in parallel."""
    jobs = {-1: (history.skip - 1, 0)}
    for after in range(history.skip, history.n_periods - 1):
        jobs[after] = (after, history.label_delay)
    futures = {pool.submit(_train_task, a, d): key for key, (a, d) in jobs.items()}
    out: dict[int, Training] = {}
    for fut in as_completed(futures):
        out[futures[fut]] = fut.result()
        on_done()
    first = out[-1]
    if not first.ok:
        raise BacktestError(
            f"version 1 cannot be trained on the first {history.skip} period(s): {first.message}",
            hint="use a larger --skip or check the data",
        )
    return out
