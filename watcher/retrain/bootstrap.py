"""Train and deploy version 1 of a model from a table, with the same steps as the DAG.

    python -m watcher.retrain.bootstrap --config examples/bikeshare/watcher.toml --model bikeshare
    python -m watcher.retrain.bootstrap --config my.toml --model churn --data first.parquet

Deterministic (seeded search, time-ordered split), so the example's version 1 is the same
on every machine. Does nothing when the model already has a version in production.

For a directory source the training rows are also left in the source's `processed/`
folder (`data.HISTORY_FILE`), where retraining reads production data: they are labelled
history of the same model, and a window of 12 weeks should hold them until 12 weeks of
production have replaced them (as `watcher backtest` assumes). Without them the first
retrain after a bootstrap trained on the one or two labelled weeks production had served,
and the gate refused it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd

from watcher.config import DirectorySourceConfig, ModelConfig, Settings, load_config
from watcher.errors import WatcherError
from watcher.fileio import read_table, write_json_atomic, write_parquet_atomic
from watcher.registry import VersionInfo
from watcher.retrain import data as data_mod
from watcher.retrain import steps
from watcher.retrain.example_data import prepare_bikeshare

log = logging.getLogger(__name__)

BOOTSTRAP_RUN = "bootstrap"
EXAMPLE_DATA = (
    Path(__file__).resolve().parents[2]
    / "examples"
    / "bikeshare"
    / "data"
    / "bikeshare_2011_hourly.csv"
)
EXAMPLE_WEEKS = 8


def first_rows(
    frame: pd.DataFrame,
    ts_column: str | None,
    *,
    weeks: int | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """The rows of the first `weeks` weeks (from the oldest row), or those before `until`."""
    if ts_column is None or (weeks is None and until is None):
        return frame
    ts = pd.to_datetime(frame[ts_column], utc=True)
    end = pd.Timestamp(until) if until is not None else ts.min() + timedelta(weeks=weeks or 0)
    if end.tzinfo is None:
        end = end.tz_localize("UTC")
    return frame[(ts < end).to_numpy()].reset_index(drop=True)


def bootstrap(
    settings: Settings,
    model: str,
    frame: pd.DataFrame,
    *,
    weeks: int | None = None,
    until: datetime | None = None,
) -> VersionInfo:
    """Train on the first weeks of `frame`, register the model and put it in production."""
    if model not in settings.models:
        raise WatcherError(
            f"model {model!r} is not configured",
            hint=f"configured models: {', '.join(settings.models) or 'none'}",
        )
    ctx = steps.RunContext(settings, model, BOOTSTRAP_RUN)
    registry = ctx.registry
    current = registry.production_version(model)
    if current is not None:
        log.info("model %s already has version %s in production; nothing to do", model, current)
        return registry.get(model, current)
    existing = registry.find_run(model, BOOTSTRAP_RUN)
    if existing is not None:  # registered by an interrupted bootstrap: just promote it
        registry.promote(model, existing.version, reason="bootstrap")
        return existing

    rows = first_rows(frame, settings.models[model].columns.timestamp, weeks=weeks, until=until)
    keep_history(settings.models[model], rows)
    rows = rows.assign(**{data_mod.ORIGIN: "base"})
    write_parquet_atomic(ctx.path("data.parquet"), rows)
    write_json_atomic(
        ctx.path("ingest.json"),
        data_mod.IngestSummary(base_rows=len(rows), labelled_rows=len(rows)).to_dict(),
    )
    outcome = steps.run_all(ctx)
    if outcome.version is None:  # cannot happen without a champion; say so if it does
        raise WatcherError(f"bootstrap of {model} did not deploy: {outcome.decision.reason}")
    return outcome.version


def history_path(model_cfg: ModelConfig) -> Path | None:
    """Where `keep_history` leaves version 1's rows (None for a SQL source)."""
    src = model_cfg.source
    if not isinstance(src, DirectorySourceConfig):
        return None
    return src.path / "processed" / data_mod.HISTORY_FILE


def keep_history(model_cfg: ModelConfig, rows: pd.DataFrame) -> Path | None:
    """Leave the labelled rows version 1 is trained on where retraining finds production
    data (a directory source's processed/ folder); returns the file, or None for a SQL
    source, whose table is where its history already lives."""
    path = history_path(model_cfg)
    if path is None:
        return None
    cols = model_cfg.columns
    wanted = dict.fromkeys([cols.id, cols.timestamp, *cols.features, cols.target])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(path, rows[[c for c in wanted if c is not None and c in rows]])
    log.info("bootstrap: %d labelled rows kept for retraining windows in %s", len(rows), path)
    return path


def read_dataset(path: Path, dataset: Literal["table", "bikeshare"]) -> pd.DataFrame:
    """A training table; 'bikeshare' derives `ts` and `id` from the raw Bikeshare columns."""
    frame = read_table(path)
    return prepare_bikeshare(frame) if dataset == "bikeshare" else frame


def load_example_data(settings: Settings, model: str) -> pd.DataFrame:
    """The bundled Bikeshare 2011 table, prepared (ts, id), for the example model."""
    del settings, model  # one example today; the signature is the demo's data loader's
    return read_dataset(EXAMPLE_DATA, "bikeshare")


def bootstrap_example(settings: Settings, model: str) -> str:
    """Version 1 of the example model: the first 8 weeks of Bikeshare 2011. Returns it."""
    info = bootstrap(settings, model, load_example_data(settings, model), weeks=EXAMPLE_WEEKS)
    return info.version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m watcher.retrain.bootstrap", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", type=Path, required=True, help="watcher TOML config")
    parser.add_argument("--model", required=True, help="model name in the config")
    parser.add_argument(
        "--data",
        type=Path,
        help="CSV/Parquet training table (default: the bundled Bikeshare data, first 8 weeks)",
    )
    parser.add_argument(
        "--dataset",
        choices=["table", "bikeshare"],
        default="table",
        help="'bikeshare' derives ts and id from the raw Bikeshare columns",
    )
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--weeks", type=int, help="train on the first N weeks")
    window.add_argument("--until", type=datetime.fromisoformat, help="train on rows before this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_config(args.config)
        if args.data is None:
            frame, weeks = load_example_data(settings, args.model), args.weeks or EXAMPLE_WEEKS
        else:
            frame, weeks = read_dataset(args.data, args.dataset), args.weeks
        info = bootstrap(settings, args.model, frame, weeks=weeks, until=args.until)
    except WatcherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in info.metrics.items())
    print(f"{args.model} version {info.version} in production ({metrics}); {info.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
