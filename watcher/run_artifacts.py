"""The evidently drift reports of a retraining run's triggering batches, on its MLflow run.

The daemon renders a drift report in the background after the batch that opened the drift
incident (`watcher.reports`), on its own disk. With `[registry] backend = "mlflow"` the DAG's
tasks share no disk with the daemon, so the daemon itself uploads the reports of the batches
named in the run's conf (`conf["batches"]`) to the run's MLflow run, under `drift/`, once the
Airflow run has ended: by then the DAG has made the MLflow run, and a report that was still
being rendered when the run was triggered has long been written. Uploading again replaces the
same artifact path, so a retried hook does not duplicate anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from watcher.config import Settings
from watcher.reports import report_path
from watcher.state import RunRecord

log = logging.getLogger(__name__)


def drift_reports_of(settings: Settings, run: RunRecord) -> list[Path]:
    """The rendered reports of the run's triggering batches, oldest batch first."""
    batches = run.conf.get("batches") or []
    root = settings.daemon.state_dir / "reports"
    paths = (report_path(root, run.model, str(b)) for b in batches if isinstance(b, str))
    return [p for p in paths if p.is_file()]


def attach_drift_reports(registry: Any, settings: Settings, run: RunRecord) -> int:
    """Upload the run's drift reports to its MLflow run; how many were uploaded.

    Nothing to do (0) on the file backend, when no report was rendered, or when the DAG never
    made an MLflow run for this Airflow run (it failed before its first task). MLflow errors
    propagate as `RegistryError` for the caller to log: a report is a convenience.
    """
    if settings.registry.backend != "mlflow":
        return 0
    reports = drift_reports_of(settings, run)
    if not reports:
        return 0
    mlrun = registry.retrain_run(run.model, run.run_id)
    if mlrun is None:
        log.info(
            "run %s of %s has no MLflow run: drift reports not attached", run.run_id, run.model
        )
        return 0
    for path in reports:
        registry.log_file(mlrun, path, "drift")
    log.info("attached %d drift report(s) to the MLflow run of %s", len(reports), run.run_id)
    return len(reports)
