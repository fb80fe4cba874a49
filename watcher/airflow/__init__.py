"""Retraining through Airflow 3: deliver triggers, follow runs, watch Airflow's health.

The daemon calls `build_airflow_workers` when ``airflow.enabled`` and runs each worker with
`watcher.periodic.run_periodically`. The three workers share one `AirflowGateway`, so a
refused login is met once, backed off once and alerted once.
"""

from __future__ import annotations

from watcher.airflow.dispatcher import TriggerDispatcher
from watcher.airflow.gateway import (
    AirflowGateway,
    DagInfo,
    Triggered,
    is_transient_status,
    to_airflow_error,
)
from watcher.airflow.health import AirflowHealth, health_problems
from watcher.airflow.tracker import OnRunEnd, OnRunSuccess, RunTracker
from watcher.config import Settings
from watcher.metrics import Metrics
from watcher.periodic import PeriodicWorker
from watcher.state import StateStore

__all__ = [
    "AirflowGateway",
    "AirflowHealth",
    "DagInfo",
    "OnRunEnd",
    "OnRunSuccess",
    "RunTracker",
    "TriggerDispatcher",
    "Triggered",
    "build_airflow_workers",
    "health_problems",
    "is_transient_status",
    "to_airflow_error",
]


def build_airflow_workers(
    settings: Settings,
    store: StateStore,
    metrics: Metrics,
    on_run_success: OnRunSuccess,
    on_run_end: OnRunEnd | None = None,
) -> list[PeriodicWorker]:
    """The trigger dispatcher, the run tracker and the health probe, sharing one gateway.

    `on_run_success(model, run)` is awaited once per successful run (again after a crash
    before the run was marked handled, so it must be idempotent); `on_run_end(run)` once per
    ended run, whatever its state.
    """
    gateway = AirflowGateway(settings.airflow)
    return [
        TriggerDispatcher(settings, store, metrics, gateway),
        RunTracker(settings, store, metrics, gateway, on_run_success, on_run_end=on_run_end),
        AirflowHealth(settings, store, metrics, gateway),
    ]
