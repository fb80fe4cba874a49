"""On-call alerts: what happened, as an outbox action, delivered by email."""

from __future__ import annotations

from typing import Any, Literal

from watcher.state import Action

AlertKind = Literal[
    "drift_persisting",
    "drift_resolved",
    "retrain_triggered",
    "retrain_deployed",
    "retrain_not_deployed",
    "retrain_failed",
    "retrain_task_failed",
    "retrain_task_retried",
    "trigger_refused",
    "dag_paused",
    "airflow_unreachable",
    "airflow_recovered",
    "source_down",
    "source_silent",
    "source_recovered",
    "batch_rejected",
    "label_file_rejected",
    "reminder",
]
Severity = Literal["critical", "warning", "info"]


def alert_action(
    kind: AlertKind,
    *,
    key: str,
    model: str | None,
    title: str,
    severity: Severity,
    details: dict[str, Any] | None = None,
    features: list[dict[str, Any]] | None = None,
    batch: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
    report_path: str | None = None,
    incident: str | None = None,
) -> Action:
    """An alert as an outbox action.

    `key` is unique per mail that should exist (it seeds the Message-ID), so enqueuing the
    same alert twice is a no-op. `incident` names the incident the alert belongs to, for
    reminders and the matching "resolved" mail.
    """
    payload: dict[str, Any] = {
        "alert": kind,
        "severity": severity,
        "model": model,
        "title": title,
        "details": details or {},
        "features": features or [],
        "batch": batch,
        "run": run,
        "report_path": report_path,
        "incident": incident,
    }
    return Action(kind="alert", key=key, model=model, payload=payload)
