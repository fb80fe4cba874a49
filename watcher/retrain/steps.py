"""The retraining steps on a run folder: each reads its inputs from files, writes its
outputs atomically, and returns a path or a small summary (what Airflow passes by XCom).

    <state_dir>/retrain/<model>/<run_id>/
        data.parquet        ingest: labelled production data of the window (+ base data)
        validated.parquet   validate: usable labelled rows, time-ordered
        train.parquet, holdout.parquet, features.json          engineer
        selection.json      select: chosen input features
        challenger.skops, final.skops, training.json           train
        evaluation.json     evaluate: challenger and champion on the holdout
        decision.json       gate
        deployed.json       deploy

The folder is keyed by the run id, so a retried task finds its predecessors' outputs, and
ingest keeps its first snapshot: every step of a run sees the same data. Deploy is
idempotent too: a version the run already registered is promoted, not registered again.

Size: one function per DAG task, in the order the DAG runs them, so the folder above reads
against the code; the work of each step lives in its own module (data, validation,
features, selection, tuning, evaluation, handoff).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from watcher.config import ModelConfig, RetrainConfig, Settings
from watcher.errors import ChecksumMismatch, RegistryError, TrainingDataError
from watcher.fileio import safe_file_name, write_json_atomic, write_parquet_atomic
from watcher.registry import VersionInfo, load_trusted_model, save_model
from watcher.registry_backend import Registry, open_registry
from watcher.retrain import data as data_mod
from watcher.retrain import validation
from watcher.retrain.evaluation import (
    Decision,
    as_informed_as_champion,
    compared_rows,
    limited_threads,
    score,
    split_holdout,
)
from watcher.retrain.evaluation import gate as gate_decision
from watcher.retrain.features import build_preprocessor
from watcher.retrain.selection import SelectionResult, select_features
from watcher.retrain.tuning import make_pipeline, tune

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """One retraining run of one model: its config, its folder, its registry."""

    settings: Settings
    model: str
    run_id: str

    @property
    def model_cfg(self) -> ModelConfig:
        return self.settings.models[self.model]

    @property
    def cfg(self) -> RetrainConfig:
        return self.model_cfg.retrain

    @property
    def target(self) -> str:
        target = self.model_cfg.columns.target
        assert target is not None  # validate refuses a model without one
        return target

    @property
    def run_dir(self) -> Path:
        path = self.settings.daemon.state_dir / "retrain" / self.model / safe_file_name(self.run_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def registry(self) -> Registry:
        # The configured backend: a folder, or MLflow (watcher/registry_backend.py).
        return open_registry(self.settings.registry)

    def path(self, name: str) -> Path:
        return self.run_dir / name


def _threads(ctx: RunContext) -> AbstractContextManager[None]:
    return limited_threads(ctx.cfg.threads)


def read_selection(ctx: RunContext) -> SelectionResult:
    """The features `select` chose (selection.json)."""
    return SelectionResult.from_dict(read_json(ctx.path("selection.json")))


def read_json(path: Path) -> Any:
    """A JSON file of the run folder; a missing one fails the step as bad training data."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TrainingDataError(
            f"{path.name} is missing from the run folder {path.parent}",
            hint="the step that writes it did not finish; rerun the run from the start",
        ) from exc


# ---- the steps ----------------------------------------------------------------------


def ingest(
    ctx: RunContext,
    *,
    data_uris: Sequence[str] = (),
    window_end: datetime | None = None,
) -> Path:
    """Gather the training data into `data.parquet` (once per run: a retry reuses it)."""
    out = ctx.path("data.parquet")
    if out.exists() and ctx.path("ingest.json").exists():
        log.info("ingest: reusing this run's snapshot %s", out)
        return out
    frame, summary = data_mod.gather(ctx.model_cfg, data_uris=data_uris, window_end=window_end)
    log.info(
        "ingest: %d production rows from %d files, %d base rows, %d labelled",
        summary.production_rows,
        len(summary.files),
        summary.base_rows,
        summary.labelled_rows,
    )
    write_parquet_atomic(out, frame)
    write_json_atomic(ctx.path("ingest.json"), summary.to_dict())
    return out


def validate(ctx: RunContext) -> Path:
    """Check the data can train a model (raises TrainingDataError saying why not)."""
    frame = pd.read_parquet(ctx.path("data.parquet"))
    valid, report = validation.validate(frame, ctx.model_cfg.columns, ctx.cfg, model=ctx.model)
    for warning in report.warnings:
        log.warning("validate: %s", warning)
    write_parquet_atomic(ctx.path("validated.parquet"), valid)
    write_json_atomic(ctx.path("validation.json"), report.to_dict())
    return ctx.path("validated.parquet")


def engineer(ctx: RunContext) -> Path:
    """Split off the most recent rows as the holdout; fit the preprocessing on the rest."""
    report = validation.ValidationReport.from_dict(read_json(ctx.path("validation.json")))
    frame = pd.read_parquet(ctx.path("validated.parquet"))
    train, holdout = split_holdout(frame, ctx.cfg.holdout_share)
    cols = [*report.numeric, *report.categorical]
    prep = build_preprocessor(ctx.cfg, report.numeric, report.categorical)
    prep.fit(train[cols], train[ctx.target])
    write_parquet_atomic(ctx.path("train.parquet"), train)
    write_parquet_atomic(ctx.path("holdout.parquet"), holdout)
    write_json_atomic(
        ctx.path("features.json"),
        {
            "numeric": report.numeric,
            "categorical": report.categorical,
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "engineered_columns": [str(c) for c in prep.get_feature_names_out()],
            "steps": {
                "impute": ctx.cfg.impute,
                "outliers": ctx.cfg.outliers,
                "encoding": ctx.cfg.encoding,
                "scaling": ctx.cfg.scaling,
            },
        },
    )
    return ctx.path("features.json")


def select(ctx: RunContext) -> Path:
    """Choose input features on the training rows; record them in `selection.json`."""
    with _threads(ctx):
        spec = read_json(ctx.path("features.json"))
        train = pd.read_parquet(ctx.path("train.parquet"))
        result = select_features(
            train, train[ctx.target], spec["numeric"], spec["categorical"], ctx.cfg
        )
        write_json_atomic(ctx.path("selection.json"), result.to_dict())
        return ctx.path("selection.json")


def _split_roles(ctx: RunContext, features: list[str]) -> tuple[list[str], list[str]]:
    cols = ctx.model_cfg.columns
    return [c for c in features if c in cols.numeric], [
        c for c in features if c in cols.categorical
    ]


def train(ctx: RunContext) -> Path:
    """Tune and fit the challenger on the training rows (and the final model on all rows)."""
    with _threads(ctx):
        selection = read_selection(ctx)
        train_rows = pd.read_parquet(ctx.path("train.parquet"))
        target = ctx.target
        numeric, categorical = _split_roles(ctx, selection.features)
        result = tune(
            train_rows[selection.features], train_rows[target], numeric, categorical, ctx.cfg
        )
        save_model(result.estimator, ctx.path("challenger.skops"))
        if ctx.cfg.refit_on_all_data:
            everything = pd.read_parquet(ctx.path("validated.parquet"))
            final = make_pipeline(ctx.cfg, numeric, categorical, result.family, result.params)
            final.fit(everything[selection.features], everything[target])
            save_model(final, ctx.path("final.skops"))
        write_json_atomic(
            ctx.path("training.json"),
            {
                "family": result.family,
                "params": result.params,
                "cv_score": result.cv_score,
                "scoring": result.scoring,
                "seconds": result.seconds,
                "refit_on_all_data": ctx.cfg.refit_on_all_data,
                "searches": [vars(s) for s in result.searches],
            },
        )
        return ctx.path("training.json")


def evaluate(ctx: RunContext) -> Path:
    """Challenger and champion on the same most recent labelled rows (the holdout)."""
    with _threads(ctx):
        selection = read_selection(ctx)
        holdout = pd.read_parquet(ctx.path("holdout.parquet"))
        target = ctx.target
        task = ctx.cfg.task
        challenger = load_trusted_model(ctx.path("challenger.skops"))
        result: dict[str, Any] = {
            "rows": len(holdout),
            "challenger": score(challenger, holdout[selection.features], holdout[target], task),
            "champion": None,
            "champion_version": ctx.registry.production_version(ctx.model),
            "champion_problem": None,
        }
        version = result["champion_version"]
        if version is not None:
            info = ctx.registry.get(ctx.model, version)
            missing = [f for f in info.features if f not in holdout.columns]
            # Only the rows the champion was not trained on compare the two fairly.
            seen_until = info.training_window[1] if info.training_window else None
            rows, problem = compared_rows(holdout, ctx.model_cfg.columns.timestamp, seen_until)
            result["rows"] = len(rows)
            result["challenger"] = score(challenger, rows[selection.features], rows[target], task)
            if missing:
                result["champion_problem"] = f"its features {missing} are not in the data"
            elif problem is not None:
                result["champion_problem"] = problem
            else:
                train_rows = pd.read_parquet(ctx.path("train.parquet"))
                informed, refit_rows = as_informed_as_champion(
                    challenger, train_rows, holdout, rows, selection.features, target
                )
                result["challenger_refit_rows"] = refit_rows
                result["challenger"] = score(informed, rows[selection.features], rows[target], task)
                try:
                    champion = ctx.registry.load_model(ctx.model, version)
                except ChecksumMismatch:
                    raise  # a tampered production model needs a person, not a silent replacement
                except RegistryError as exc:
                    result["champion_problem"] = str(exc)
                else:
                    result["champion"] = score(champion, rows[info.features], rows[target], task)
        write_json_atomic(ctx.path("evaluation.json"), result)
        return ctx.path("evaluation.json")


def gate(ctx: RunContext, *, margin: float | None = None) -> Decision:
    """Decide whether to deploy; the decision is written to `decision.json`."""
    ev = read_json(ctx.path("evaluation.json"))
    decision = gate_decision(
        ev["challenger"],
        ev["champion"],
        metric=ctx.cfg.primary_metric,
        margin=ctx.cfg.margin if margin is None else margin,
        champion_version=ev["champion_version"],
        champion_problem=ev["champion_problem"],
    )
    log.info("gate: %s: %s", "deploy" if decision.deploy else "keep champion", decision.reason)
    write_json_atomic(ctx.path("decision.json"), decision.to_dict())
    return decision


def reference_frame(ctx: RunContext, estimator: Any, features: list[str]) -> pd.DataFrame:
    """The training rows as the next drift reference: the columns the daemon scores, the
    target, and the new model's predictions (for prediction drift)."""
    frame = pd.read_parquet(ctx.path("validated.parquet"))
    cols = ctx.model_cfg.columns
    keep = [
        c
        for c in (cols.id, cols.timestamp, *cols.features, cols.target)
        if c is not None and c in frame.columns
    ]
    ref = frame[keep].copy()
    if cols.prediction:
        ref[cols.prediction] = estimator.predict(frame[features])
    return ref


def deploy(ctx: RunContext) -> VersionInfo | None:
    """Register and promote the model if the gate said so; prune old versions.

    Returns None when the gate kept the champion. Idempotent per run.
    """
    decision = Decision.from_dict(read_json(ctx.path("decision.json")))
    registry = ctx.registry
    if not decision.deploy:
        registry.record_run(ctx.model, ctx.run_id, {"deployed": False, **decision.to_dict()})
        return None
    info = registry.find_run(ctx.model, ctx.run_id)
    if info is None:
        selection = read_selection(ctx)
        training = read_json(ctx.path("training.json"))
        ingest_summary = read_json(ctx.path("ingest.json"))
        final_path = ctx.path("final.skops")
        if not (ctx.cfg.refit_on_all_data and final_path.exists()):
            final_path = ctx.path("challenger.skops")
        estimator = load_trusted_model(final_path)
        with _threads(ctx):
            reference = reference_frame(ctx, estimator, selection.features)
        window = _window(reference, ctx)
        info = registry.register(
            ctx.model,
            estimator=estimator,
            reference=reference,
            metrics=decision.challenger,
            features=selection.features,
            params={"family": training["family"], **training["params"]},
            run_id=ctx.run_id,
            training_window=window,
            extra={
                "decision": decision.to_dict(),
                "selection": selection.to_dict(),
                "cv_score": training["cv_score"],
                "scoring": training["scoring"],
                "refit_on_all_data": training["refit_on_all_data"],
                "ingest": ingest_summary,
                "task": ctx.cfg.task,
                "target": ctx.model_cfg.columns.target,
            },
        )
    if registry.production_version(ctx.model) != info.version:
        registry.promote(ctx.model, info.version, reason=f"run {ctx.run_id}")
    removed = registry.prune(ctx.model, ctx.settings.registry.keep_versions)
    if removed:
        log.info("deploy: pruned versions %s", removed)
    registry.record_run(
        ctx.model, ctx.run_id, {"deployed": True, "version": info.version, **decision.to_dict()}
    )
    write_json_atomic(ctx.path("deployed.json"), {"version": info.version, "pruned": removed})
    return info


def _window(reference: pd.DataFrame, ctx: RunContext) -> tuple[datetime, datetime] | None:
    ts = data_mod.timestamps(reference, ctx.model_cfg.columns)
    if ts is None or ts.empty:
        return None
    return ts.min().to_pydatetime(), ts.max().to_pydatetime()


# ---- everything at once, without Airflow ---------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    decision: Decision
    version: VersionInfo | None


def run_all(
    ctx: RunContext,
    *,
    data_uris: Sequence[str] = (),
    window_end: datetime | None = None,
    margin: float | None = None,
) -> RunOutcome:
    """Every step in order, in this process (bootstrap, benchmarks, tests)."""
    ingest(ctx, data_uris=data_uris, window_end=window_end)
    validate(ctx)
    engineer(ctx)
    select(ctx)
    train(ctx)
    evaluate(ctx)
    decision = gate(ctx, margin=margin)
    return RunOutcome(decision, deploy(ctx))
