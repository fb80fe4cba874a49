"""What the state holds, as values: the records the store reads and writes, and their
conversion from database rows (a `sqlite3.Row` or a psycopg dict row, read by column name)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

ActionKind = Literal["trigger", "alert", "webhook"]
BatchStatus = Literal["claimed", "scored", "rejected", "failed"]
ACTIVE_RUN_STATES = ("queued", "running")


@dataclass(frozen=True)
class Action:
    """Something the daemon must do outside its own process, delivered from the outbox."""

    kind: ActionKind
    key: str  # idempotency key: the dag_run_id of a trigger, the incident/Message-ID of a mail
    model: str | None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    kind: ActionKind
    key: str
    model: str | None
    payload: dict[str, Any]
    attempts: int
    created_at: float
    sending_at: float | None = None  # a delivery began then and was never marked done


@dataclass(frozen=True)
class BatchRecord:
    seq: int
    model: str
    batch_id: str
    uri: str
    status: BatchStatus
    finished_at: float | None
    rows: int | None
    reference_version: str | None
    dataset_drift: bool | None
    drift_share: float | None
    result: dict[str, Any] | None
    reason: str | None


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    model: str
    dag_id: str
    state: str
    conf: dict[str, Any]
    triggered_at: float
    updated_at: float
    ended_at: float | None
    handled: bool


@dataclass(frozen=True)
class Decision:
    model: str
    batch_id: str | None
    at: float
    outcome: str
    reason: str
    run_id: str | None
    signal: str | None = None
    readings: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class LabelPeriod:
    """The production model's loss on the labelled rows of one period."""

    period: str
    version: str
    metric: str
    value: float
    loss: float
    rows: int
    at: float


def finite(value: Any) -> Any:
    """json.dumps default: numpy scalars as Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a decision's readings")


def batch_of(r: Any) -> BatchRecord:
    return BatchRecord(
        seq=r["seq"],
        model=r["model"],
        batch_id=r["batch_id"],
        uri=r["uri"],
        status=r["status"],
        finished_at=r["finished_at"],
        rows=r["rows"],
        reference_version=r["reference_version"],
        dataset_drift=None if r["dataset_drift"] is None else bool(r["dataset_drift"]),
        drift_share=r["drift_share"],
        result=json.loads(r["result"]) if r["result"] else None,
        reason=r["reason"],
    )


def outbox_of(r: Any) -> OutboxItem:
    return OutboxItem(
        id=r["id"],
        kind=r["kind"],
        key=r["key"],
        model=r["model"],
        payload=json.loads(r["payload"]),
        attempts=r["attempts"],
        created_at=r["created_at"],
        sending_at=r["sending_at"],
    )


def run_of(r: Any) -> RunRecord:
    return RunRecord(
        run_id=r["run_id"],
        model=r["model"],
        dag_id=r["dag_id"],
        state=r["state"],
        conf=json.loads(r["conf"]),
        triggered_at=r["triggered_at"],
        updated_at=r["updated_at"],
        ended_at=r["ended_at"],
        handled=bool(r["handled"]),
    )


def decision_of(r: Any) -> Decision:
    return Decision(
        r["model"],
        r["batch_id"],
        r["at"],
        r["outcome"],
        r["reason"],
        r["run_id"],
        r["signal"],
        json.loads(r["readings"]) if r["readings"] else [],
    )


def label_period_of(r: Any) -> LabelPeriod:
    return LabelPeriod(
        r["period"], r["version"], r["metric"], r["value"], r["loss"], r["rows"], r["at"]
    )
