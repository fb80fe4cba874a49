"""One retraining run's steps, file registry + local run folder vs MLflow registry + artifact
handoff, on the same data: wall time, per-task seconds, and the artifact round trips.

Version 1 of the bundled example is bootstrapped from 8 weeks into a file registry, weeks
9-12 are served as production batches, then the same retraining run (every DAG step, in
DAG order) is done twice:

- file:   `RunContext` on a local run folder (what LocalExecutor + file registry does);
- mlflow: each step inside `watcher.retrain.handoff.task_context`, exactly as each DAG task
          runs under Celery: an empty folder filled from the MLflow run's artifacts, the
          step, then the upload. Version 1 is migrated into a private `mlflow server`
          (SQLite store, --serve-artifacts, free port, temporary folder) started here.

Airflow's own scheduling latency (queueing through Redis to a Celery worker) is not part of
these numbers: it is a property of the deployment, not of watcher's code. The steps run in
this process, one after another, so the difference is the artifact traffic and MLflow
bookkeeping alone.

    .venv/bin/python benchmarks/bench_distributed_retrain.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fixtures_mlflow import MlflowServer  # noqa: E402
from fixtures_retrain import EXAMPLE_CONFIG, MODEL, v1_workspace  # noqa: E402

from watcher.config import dump_toml, load_config  # noqa: E402
from watcher.dev.localservices import free_port  # noqa: E402
from watcher.registry import ModelRegistry  # noqa: E402
from watcher.registry_backend import open_registry  # noqa: E402
from watcher.registry_migrate import migrate  # noqa: E402
from watcher.retrain import steps  # noqa: E402
from watcher.retrain.bootstrap import load_example_data  # noqa: E402
from watcher.retrain.handoff import task_context  # noqa: E402
from watcher.retrain.mails import run_ended_mail  # noqa: E402

TASKS: list[tuple[str, Callable[[steps.RunContext], Any]]] = [
    ("ingest", lambda c: steps.ingest(c)),
    ("validate", steps.validate),
    ("engineer_features", steps.engineer),
    ("select_features", steps.select),
    ("tune_and_train", steps.train),
    ("evaluate", steps.evaluate),
    ("gate", lambda c: steps.gate(c)),
    ("deploy", steps.deploy),
    ("notify", run_ended_mail),
]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        folder = Path(tmp)
        (folder / "file").mkdir()
        data = load_example_data(load_config(EXAMPLE_CONFIG), MODEL)
        workspace = v1_workspace(folder / "file", data)
        config, settings = workspace.config, workspace.settings

        port = free_port()
        (folder / "mlflow").mkdir()
        server = MlflowServer(url=f"http://127.0.0.1:{port}", home=folder / "mlflow", port=port)
        server.start()
        try:
            raw = tomllib.loads(config.read_text(encoding="utf-8"))
            raw["registry"] = server.registry_config(keep_versions=3)
            raw["models"] = raw.pop("models")
            ml_config = folder / "file" / "watcher-mlflow.toml"
            ml_config.write_text(dump_toml(raw), encoding="utf-8")
            ml_settings = load_config(ml_config)
            migrate(ModelRegistry(settings.registry.path), open_registry(ml_settings.registry))

            file_times: dict[str, float] = {}
            ctx = steps.RunContext(settings, MODEL, "bench-file")
            for name, step in TASKS:
                started = time.perf_counter()
                step(ctx)
                file_times[name] = time.perf_counter() - started

            ml_times: dict[str, float] = {}
            for name, step in TASKS:
                started = time.perf_counter()
                with task_context(
                    ml_settings, MODEL, "bench-mlflow", task=name, conf={"reason": "bench"}
                ) as run:
                    step(run)
                ml_times[name] = time.perf_counter() - started
            registry = open_registry(ml_settings.registry)
            mlrun = registry.retrain_run(MODEL, "bench-mlflow")  # type: ignore[attr-defined]
            from mlflow.tracking import MlflowClient

            metrics = MlflowClient(tracking_uri=server.url).get_run(mlrun).data.metrics
        finally:
            server.stop()

    print(
        f"{'task':<18} {'file s':>8} {'mlflow s':>9} {'in s':>6} {'out s':>6} {'in MB':>7} "
        f"{'out MB':>7}"
    )
    for name, _ in TASKS:
        print(
            f"{name:<18} {file_times[name]:8.2f} {ml_times[name]:9.2f} "
            f"{metrics.get(f'handoff_in_seconds.{name}', 0):6.2f} "
            f"{metrics.get(f'handoff_out_seconds.{name}', 0):6.2f} "
            f"{metrics.get(f'handoff_in_bytes.{name}', 0) / 1e6:7.2f} "
            f"{metrics.get(f'handoff_out_bytes.{name}', 0) / 1e6:7.2f}"
        )
    file_total, ml_total = sum(file_times.values()), sum(ml_times.values())
    handoff = sum(v for k, v in metrics.items() if k.startswith("handoff_") and "seconds" in k)
    print(f"{'total':<18} {file_total:8.2f} {ml_total:9.2f}")
    print(
        f"MLflow / file wall time: {ml_total / file_total:.2f}x; artifact round trips "
        f"{handoff:.2f} s ({handoff / ml_total:.0%} of the MLflow run), the rest of the "
        f"difference is MLflow bookkeeping (run lookup, params, metrics, registration)"
    )


if __name__ == "__main__":
    main()
