"""The Airflow workers where Airflow is not needed: restart safety of the run tracker,
backoff of the dispatcher while Airflow is unreachable (a closed port), health parsing and
the wiring the daemon uses."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stamina
from prometheus_client import CollectorRegistry

from watcher.airflow import (
    AirflowGateway,
    AirflowHealth,
    RunTracker,
    TriggerDispatcher,
    build_airflow_workers,
    health_problems,
)
from watcher.config import AirflowConfig, Settings
from watcher.metrics import Metrics
from watcher.state import Action, RunRecord, StateStore


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Settings, StateStore, Metrics, AirflowGateway]]:
    settings = Settings(
        airflow=AirflowConfig(
            enabled=True,
            url=closed_port_url(),
            password="pw",
            request_timeout_seconds=1.0,
            unreachable_alert_after_seconds=0.0,
        )
    )
    store = StateStore(tmp_path / "state.db")
    gateway = AirflowGateway(settings.airflow)
    with stamina.set_testing(True, attempts=1):
        yield settings, store, Metrics(CollectorRegistry()), gateway
    gateway.close()
    store.close()


def enqueue(store: StateStore, key: str, payload: dict[str, Any]) -> None:
    with store.transaction() as conn:
        store.enqueue(conn, Action(kind="trigger", key=key, model="bikes", payload=payload))


def alerts(store: StateStore, kind: str) -> list[dict[str, Any]]:
    return [
        i for i in store.outbox_items() if i["kind"] == "alert" and i["payload"]["alert"] == kind
    ]


def test_tracker_acts_on_runs_that_ended_before_a_restart(parts: Any) -> None:
    settings, store, metrics, gateway = parts
    for run_id, state in (("ok", "success"), ("bad", "failed")):
        store.add_run(run_id, "bikes", "retrain_bikes", {}, "running")
        store.update_run(run_id, state)  # recorded, then the daemon died before acting
    calls: list[str] = []

    async def hook(model: str, run: RunRecord) -> None:
        calls.append(run.run_id)
        if len(calls) == 1:
            raise RuntimeError("registry busy")

    tracker = RunTracker(settings, store, metrics, gateway, hook)
    asyncio.run(tracker.run_once())
    assert calls == ["ok"]  # the hook failed: the run stays unhandled and is tried again
    assert {r.run_id for r in store.runs(unhandled_only=True)} == {"ok"}
    assert len(alerts(store, "retrain_failed")) == 1

    asyncio.run(tracker.run_once())
    asyncio.run(tracker.run_once())
    assert calls == ["ok", "ok"]
    assert store.runs(unhandled_only=True) == []
    assert len(alerts(store, "retrain_failed")) == 1
    registry = metrics.registry
    assert (
        registry.get_sample_value("watcher_retrain_runs", {"model": "bikes", "state": "failed"})
        == 1
    )
    assert registry.get_sample_value(
        "watcher_retrain_last_success_timestamp_seconds", {"model": "bikes"}
    ) == pytest.approx(time.time(), abs=60)


def test_tracker_calls_the_end_hook_for_every_ended_run_and_a_failing_one_holds_nothing_up(
    parts: Any,
) -> None:
    """The end hook (the daemon attaches drift reports to MLflow there) sees success and
    failure alike; when it raises, the run is still handled and its mail still queued."""
    settings, store, metrics, gateway = parts
    for run_id, state in (("ok", "success"), ("bad", "failed")):
        store.add_run(run_id, "bikes", "retrain_bikes", {}, "running")
        store.update_run(run_id, state)
    ended: list[tuple[str, str]] = []
    succeeded: list[str] = []

    async def on_end(run: RunRecord) -> None:
        ended.append((run.run_id, run.state))
        raise RuntimeError("MLflow down")

    async def on_success(model: str, run: RunRecord) -> None:
        succeeded.append(run.run_id)

    tracker = RunTracker(settings, store, metrics, gateway, on_success, on_run_end=on_end)
    asyncio.run(tracker.run_once())
    assert sorted(ended) == [("bad", "failed"), ("ok", "success")]
    assert succeeded == ["ok"]
    assert store.runs(unhandled_only=True) == []
    assert len(alerts(store, "retrain_failed")) == 1


def test_tracker_keeps_active_runs_while_airflow_is_unreachable(parts: Any) -> None:
    settings, store, metrics, gateway = parts
    store.add_run("r1", "bikes", "retrain_bikes", {}, "queued")

    async def hook(model: str, run: RunRecord) -> None:
        raise AssertionError("no run ended")

    asyncio.run(RunTracker(settings, store, metrics, gateway, hook).run_once())
    [run] = store.runs()
    assert run.state == "queued"
    assert not run.handled


def test_dispatcher_backs_off_while_airflow_is_unreachable(parts: Any) -> None:
    settings, store, metrics, gateway = parts
    payload = {"dag_id": "retrain_bikes", "conf": {}, "note": None}
    enqueue(store, "r1", payload | {"run_id": "r1"})
    enqueue(store, "r2", payload | {"run_id": "r2"})
    dispatcher = TriggerDispatcher(settings, store, metrics, gateway, backoff_base=10.0)

    before = time.time()
    asyncio.run(dispatcher.run_once())
    first, second = store.outbox_items()
    assert (first["status"], first["attempts"]) == ("pending", 1)
    assert "refused" in first["last_error"].lower()
    assert 5.0 <= first["next_attempt_at"] - before <= 10.5  # 10 s, jittered down to half
    # After one unreachable answer the round stops: r2 is still due and untried.
    assert second["attempts"] == 0
    assert metrics.registry.get_sample_value("watcher_outbox_pending", {"kind": "trigger"}) == 2

    with store.transaction() as conn:
        conn.execute("UPDATE outbox SET next_attempt_at = 0 WHERE key = 'r1'")
    before = time.time()
    asyncio.run(dispatcher.run_once())
    first = store.outbox_items()[0]
    assert first["attempts"] == 2
    assert 10.0 <= first["next_attempt_at"] - before <= 20.5  # doubled
    assert alerts(store, "trigger_refused") == []  # unreachable is not a refusal


def test_malformed_trigger_is_a_dead_letter(parts: Any) -> None:
    settings, store, metrics, gateway = parts
    enqueue(store, "broken", {"conf": {}})
    asyncio.run(TriggerDispatcher(settings, store, metrics, gateway).run_once())
    [item] = store.outbox_items(status="dead")
    assert "malformed trigger payload" in item["last_error"]
    assert len(alerts(store, "trigger_refused")) == 1
    assert metrics.registry.get_sample_value("watcher_dead_letters_total", {"kind": "trigger"}) == 1


def test_health_probe_alerts_once_while_unreachable(parts: Any) -> None:
    settings, store, metrics, gateway = parts
    health = AirflowHealth(settings, store, metrics, gateway)
    asyncio.run(health.run_once())
    asyncio.run(health.run_once())
    assert metrics.registry.get_sample_value("watcher_airflow_up") == 0
    assert health.problems[0].startswith("unreachable: reading Airflow health")
    [alert] = alerts(store, "airflow_unreachable")
    assert alert["payload"]["severity"] == "critical"
    assert [i["key"] for i in store.open_incidents()] == ["airflow:unreachable"]


def test_health_alert_waits_for_the_configured_time(parts: Any) -> None:
    settings, store, metrics, gateway = parts
    slow = settings.model_copy(
        update={
            "airflow": settings.airflow.model_copy(update={"unreachable_alert_after_seconds": 600})
        }
    )
    asyncio.run(AirflowHealth(slow, store, metrics, gateway).run_once())
    assert metrics.registry.get_sample_value("watcher_airflow_up") == 0
    assert alerts(store, "airflow_unreachable") == []


@pytest.mark.parametrize(
    ("components", "problems"),
    [
        (
            {"metadatabase": "healthy", "scheduler": "healthy", "triggerer": None},
            [],
        ),
        (
            {"metadatabase": "healthy", "scheduler": "unhealthy", "dag_processor": "healthy"},
            ["scheduler: unhealthy"],
        ),
        ({"metadatabase": "healthy", "scheduler": None}, ["scheduler: not reported"]),
        (
            {"metadatabase": "healthy", "scheduler": "healthy", "triggerer": "unhealthy"},
            ["triggerer: unhealthy"],
        ),
    ],
)
def test_health_problems(components: dict[str, str | None], problems: list[str]) -> None:
    assert health_problems(components) == problems


def test_build_airflow_workers_shares_one_gateway(parts: Any) -> None:
    settings, store, metrics, _ = parts

    async def hook(model: str, run: RunRecord) -> None:
        return None

    workers = build_airflow_workers(settings, store, metrics, hook)
    assert [w.name for w in workers] == [
        "airflow-trigger-dispatcher",
        "airflow-run-tracker",
        "airflow-health",
    ]
    assert all(w.interval_seconds > 0 for w in workers)
    assert len({id(w.gateway) for w in workers}) == 1
    for w in workers:
        asyncio.run(w.close())
