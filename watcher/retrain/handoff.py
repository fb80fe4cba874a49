"""Where a DAG task finds what the previous tasks made, with no disk shared between workers.

With the file registry the run folder `<state_dir>/retrain/<model>/<run_id>/` is on a disk
every task sees (one machine, or a shared volume), and the steps use it as it is.

With the MLflow registry each task runs in a fresh, empty temporary folder on whatever
worker Celery (or Kubernetes) gave it:

1. the run folder's files that earlier tasks made are downloaded from the artifact folder
   `handoff/` of the run's MLflow run (found or created by the Airflow run id);
2. the step function runs on that folder, unchanged;
3. every file it created or changed is uploaded to `handoff/`; the holdout figures and the
   gate decision become the MLflow run's metrics and tags;
4. the folder is deleted.

So the data of a task crosses the network twice (in, out) through the MLflow server's
artifact proxy; the seconds and bytes are logged as the run's `handoff_*` metrics (see
benchmarks/bench_distributed_retrain.py). A failed step uploads nothing: a retry starts
from the same inputs.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from watcher.config import Settings
from watcher.registry import sha256_file
from watcher.retrain.steps import RunContext

log = logging.getLogger(__name__)

# What a trigger's conf carries that is worth a parameter of the MLflow run.
_TRIGGER_PARAMS = ("reason", "batches", "data_uris", "window_end", "margin", "reference_version")


def _local_settings(settings: Settings, state_dir: Path) -> Settings:
    daemon = settings.daemon.model_copy(update={"state_dir": state_dir})
    return settings.model_copy(update={"daemon": daemon})


def run_params(settings: Settings, model: str, conf: Mapping[str, Any]) -> dict[str, Any]:
    """The MLflow run's parameters: the retrain config and what triggered the run."""
    params: dict[str, Any] = {
        f"retrain.{k}": json.dumps(v, default=str) if isinstance(v, list | dict) else v
        for k, v in settings.models[model].retrain.model_dump(mode="json").items()
    }
    for key in _TRIGGER_PARAMS:
        value = conf.get(key)
        if value not in (None, [], ""):
            params[f"trigger.{key}"] = json.dumps(value) if isinstance(value, list) else value
    return params


@contextmanager
def task_context(
    settings: Settings,
    model: str,
    run_id: str,
    *,
    task: str,
    conf: Mapping[str, Any] | None = None,
) -> Iterator[RunContext]:
    """The RunContext one DAG task works on (see the module docstring)."""
    if settings.registry.backend != "mlflow":
        yield RunContext(settings, model, run_id)
        return
    from watcher.registry_mlflow import HANDOFF, MlflowRegistry

    registry = MlflowRegistry(settings.registry)
    mlrun = registry.retrain_run(model, run_id)
    if mlrun is None:
        mlrun = registry.retrain_run(model, run_id, create=True)
        assert mlrun is not None
        registry.log_params(mlrun, run_params(settings, model, conf or {}))
        _log_drift_report(registry, mlrun, conf or {})
    with tempfile.TemporaryDirectory(prefix=f"watcher-{task}-") as tmp:
        ctx = RunContext(_local_settings(settings, Path(tmp)), model, run_id)
        started = time.perf_counter()
        before = registry.download_dir(mlrun, HANDOFF, ctx.run_dir)
        fetched = time.perf_counter() - started
        bytes_in = sum((ctx.run_dir / n).stat().st_size for n in before)
        # The registry the steps use is the MLflow one (RunContext.registry opens the
        # configured backend), so deploy registers into MLflow from any worker.
        yield ctx
        started = time.perf_counter()
        bytes_out = 0
        for path in sorted(ctx.run_dir.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            if before.get(path.name) != sha256_file(path):
                registry.log_file(mlrun, path, HANDOFF)
                bytes_out += path.stat().st_size
        stored = time.perf_counter() - started
        registry.log_metrics(
            mlrun,
            {
                f"handoff_in_seconds.{task}": fetched,
                f"handoff_out_seconds.{task}": stored,
                f"handoff_in_bytes.{task}": bytes_in,
                f"handoff_out_bytes.{task}": bytes_out,
            },
        )
        _record_outcome(registry, mlrun, ctx.run_dir)
        if task == "notify":
            # The last task of the DAG: the MLflow run is complete.
            registry.end_run(mlrun)
        log.info(
            "%s: %d files (%d bytes) in from MLflow in %.2fs, %d bytes out in %.2fs",
            task,
            len(before),
            bytes_in,
            fetched,
            bytes_out,
            stored,
        )


def _log_drift_report(registry: Any, mlrun: str, conf: Mapping[str, Any]) -> None:
    """The drift summary the daemon sent with the trigger, as an artifact of the run."""
    drift = conf.get("drift")
    if not drift:
        return
    payload = {"drift": drift, "window": conf.get("window"), "batches": conf.get("batches")}
    with tempfile.TemporaryDirectory(prefix="watcher-drift-") as tmp:
        path = Path(tmp) / "drift_report.json"
        path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        registry.log_file(mlrun, path, "drift")


def _record_outcome(registry: Any, mlrun: str, run_dir: Path) -> None:
    """Holdout figures as metrics, the gate decision as tags, once their files exist."""
    evaluation = run_dir / "evaluation.json"
    if evaluation.exists():
        ev = json.loads(evaluation.read_text(encoding="utf-8"))
        figures = {f"challenger.{k}": v for k, v in (ev.get("challenger") or {}).items()}
        figures |= {f"champion.{k}": v for k, v in (ev.get("champion") or {}).items()}
        registry.log_metrics(
            mlrun, {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}
        )
    decision = run_dir / "decision.json"
    if decision.exists():
        d = json.loads(decision.read_text(encoding="utf-8"))
        registry.set_tags(
            mlrun,
            {
                "watcher.gate": "deploy" if d.get("deploy") else "keep_champion",
                "watcher.gate_reason": str(d.get("reason", "")),
            },
        )
