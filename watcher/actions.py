"""The outbox actions a policy decision causes, built from the decision: the drift
incident's alerts and a retrain trigger with its mail.

The pipeline commits them in the transaction of the decision; the incidents they belong to
are opened and resolved through `watcher.incidents`. Keys are deterministic (the batch, the
run id), so committing the same decision twice queues nothing new.
"""

from __future__ import annotations

from typing import Any

from watcher.alerts import alert_action
from watcher.drift.engine import DriftResult
from watcher.policy import Verdict
from watcher.sources.base import BatchRef
from watcher.state import Action


def drift_incident(model: str) -> str:
    return f"drift:{model}"


def drifted_features(drift: DriftResult) -> list[dict[str, Any]]:
    """Every scored feature, drifted first, the highest score first."""
    features = [c.to_dict() | {"feature": name} for name, c in drift.columns.items()]
    features.sort(key=lambda f: (not f["drifted"], -float(f["score"])))
    return features


def drift_opened(
    model: str,
    ref: BatchRef,
    drift: DriftResult,
    verdict: Verdict,
    *,
    reference_version: str,
    report_path: str | None,
) -> Action:
    """The mail of a drift incident that opens."""
    incident = drift_incident(model)
    return alert_action(
        "drift_persisting",
        key=f"{incident}:opened:{ref.batch_id}",
        model=model,
        title=f"dataset drift in {verdict.streak} consecutive batches "
        f"({drift.n_drifted}/{drift.n_columns} features drifted)",
        severity="warning",
        details={
            "drift_share": drift.drift_share,
            "streak": verdict.streak,
            "reference_version": reference_version,
            "decision": verdict.outcome,
            "decision_reason": verdict.reason,
        },
        features=drifted_features(drift),
        batch={"batch_id": ref.batch_id, "uri": ref.uri},
        report_path=report_path,
        incident=incident,
    )


def drift_over(
    model: str, ref: BatchRef, verdict: Verdict, *, resolve_after: int, reference_version: str
) -> Action:
    """The mail of a drift incident that resolves."""
    return alert_action(
        "drift_resolved",
        key=f"{drift_incident(model)}:resolved:{ref.batch_id}",
        model=model,
        title=f"dataset drift over: {verdict.streak} drifted, "
        f"{resolve_after} clean batches in a row",
        severity="info",
        batch={"batch_id": ref.batch_id, "uri": ref.uri},
        incident=drift_incident(model),
        details={"reference_version": reference_version},
    )


def retrain_trigger(
    model: str,
    *,
    dag_id: str,
    run_id: str,
    point: str,
    ref: BatchRef | None,
    drift: DriftResult | None,
    verdict: Verdict,
    conf: dict[str, Any],
) -> list[Action]:
    """The trigger (the DAG run's `conf`, a `RetrainRequest`) and its mail: the same
    whichever signal fired. `point` is the batch or labels that decided."""
    fired = next((r for r in verdict.readings if r.signal == verdict.signal), None)
    details: dict[str, Any] = {
        "reason": verdict.reason,
        "reason_kind": verdict.reason_kind,
        "signal": verdict.signal,
    }
    if drift is not None:
        details["drift_share"] = drift.drift_share
    if fired is not None:
        details |= {f"{fired.signal}_{k}": v for k, v in (fired.numbers or {}).items()}
        details |= {"signal_value": fired.value, "signal_threshold": fired.threshold}
    what = (verdict.reason_kind or "retrain").replace("_", " ")
    return [
        Action(
            kind="trigger",
            key=run_id,
            model=model,
            payload={
                "dag_id": dag_id,
                "run_id": run_id,
                "conf": conf,
                "note": f"watcher: {verdict.reason}",
            },
        ),
        alert_action(
            "retrain_triggered",
            key=f"triggered:{run_id}",
            model=model,
            title=f"retraining triggered ({dag_id}): {what}",
            severity="info",
            features=drifted_features(drift)[:10] if drift is not None else [],
            batch={"batch_id": point, "uri": ref.uri if ref else point},
            run={"dag_id": dag_id, "run_id": run_id},
            details=details,
        ),
    ]
