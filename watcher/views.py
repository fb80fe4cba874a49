"""What `watcher status --json` and `watcher models --json` print: plain JSON documents.

Kept apart from the CLI's tables so scripts and monitoring get the same facts as people,
with stable keys, Unix times and nulls instead of formatted text.
"""

from __future__ import annotations

from typing import Any

from watcher.config import Settings
from watcher.errors import WatcherError
from watcher.registry_backend import Registry
from watcher.state import StateStore


def run_outcome(registry: Registry | None, model: str, run_id: str, state: str) -> dict[str, Any]:
    """What a run did, from what its deploy step recorded in the registry: a run whose
    challenger the gate refused succeeds in Airflow but deploys nothing.

    `outcome` is "pending" (not ended), "deployed" (with `version`), "refused" (with the
    gate's `reason`), "failed", or "unknown" (ended without a gate record)."""
    if state in ("queued", "running", "pending"):
        return {"outcome": "pending", "version": None, "reason": None}
    try:
        record = registry.run_record(model, run_id) if registry is not None else None
    except (OSError, ValueError, WatcherError):  # WatcherError: MLflow unreachable
        record = None
    if record is None:
        kind = "failed" if state == "failed" else "unknown"
        return {"outcome": kind, "version": None, "reason": None}
    if record.get("deployed"):
        return {"outcome": "deployed", "version": record.get("version"), "reason": None}
    return {"outcome": "refused", "version": None, "reason": record.get("reason") or None}


def describe_outcome(outcome: dict[str, Any]) -> str:
    """`run_outcome` in words, as `watcher status` and the demo's summary show it."""
    kind = outcome["outcome"]
    if kind == "pending":
        return "-"
    if kind == "deployed":
        return f"deployed v{outcome['version'] or '?'}"
    if kind == "refused":
        return f"refused by the gate: {outcome['reason'] or ''}".rstrip(": ")
    return "unknown (no gate record)" if kind == "unknown" else kind


def status_document(
    settings: Settings,
    store: StateStore,
    *,
    batches: int = 5,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Per model: reference, streak, recent batches, last decision, pending actions, runs
    (each with its outcome: deployed, refused by the gate, failed; see `run_outcome`)."""
    models: dict[str, Any] = {}
    for name in settings.models:
        decisions = store.decisions(name, 1)
        models[name] = {
            "reference_version": store.reference_version(name),
            "drift_streak": store.drift_streak(name),
            "batches": [
                {
                    "batch_id": b.batch_id,
                    "status": b.status,
                    "rows": b.rows,
                    "drift_share": b.drift_share,
                    "dataset_drift": b.dataset_drift,
                    "finished_at": b.finished_at,
                    "reason": b.reason,
                }
                for b in store.recent_batches(name, batches)
            ],
            "last_decision": (
                {
                    "outcome": decisions[0].outcome,
                    "reason": decisions[0].reason,
                    "at": decisions[0].at,
                    "batch_id": decisions[0].batch_id,
                    "run_id": decisions[0].run_id,
                }
                if decisions
                else None
            ),
            "pending_actions": [
                {
                    "kind": p["kind"],
                    "key": p["key"],
                    "attempts": p["attempts"],
                    "last_error": p["last_error"],
                }
                for p in store.outbox_items(name, status="pending")
            ],
            "runs": [
                {
                    "run_id": r.run_id,
                    "dag_id": r.dag_id,
                    "state": r.state,
                    "triggered_at": r.triggered_at,
                    "ended_at": r.ended_at,
                    "reason_kind": r.conf.get("reason_kind"),
                    **run_outcome(registry, name, r.run_id, r.state),
                }
                for r in store.runs(name, limit=5)
            ],
        }
    dead = [
        {"kind": p["kind"], "key": p["key"], "model": p["model"], "last_error": p["last_error"]}
        for p in store.outbox_items(status="dead")
    ]
    return {"models": models, "pending": store.pending_counts(), "dead_letters": dead}


def models_document(settings: Settings, registry: Registry) -> dict[str, Any]:
    """Every registered version of each model, and which one is in production."""
    doc: dict[str, Any] = {}
    for name in sorted(set(settings.models) | set(registry.models())):
        doc[name] = {
            "production": registry.production_version(name),
            "versions": [
                {
                    "version": v.version,
                    "created_at": v.created_at.isoformat(),
                    "run_id": v.run_id,
                    "metrics": v.metrics,
                    "features": v.features,
                    "training_rows": v.training_rows,
                }
                for v in registry.list_versions(name)
            ],
        }
    return {"models": doc}
