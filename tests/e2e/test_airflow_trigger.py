"""Trigger delivery, run tracking and health against a real Airflow 3.3.2.

Each test counts the DAG runs it caused by a marker in the conf, so tests sharing the
session's Airflow never see each other's runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stamina
from fixtures_airflow import AirflowServer
from prometheus_client import CollectorRegistry

from watcher.airflow import AirflowGateway, AirflowHealth, RunTracker, TriggerDispatcher
from watcher.config import AirflowConfig, Settings
from watcher.metrics import Metrics
from watcher.periodic import run_periodically
from watcher.state import Action, RunRecord, StateStore

pytestmark = pytest.mark.airflow

MODEL = "bikes"


class Rig:
    """A state store, metrics and the three Airflow workers, as the daemon wires them."""

    def __init__(
        self, tmp: Path, server: AirflowServer, store: StateStore | None = None, **airflow: Any
    ) -> None:
        self.settings = Settings(airflow=AirflowConfig(**server.airflow_config(**airflow)))
        self.store = store or StateStore(tmp / "state.db")
        self.metrics = Metrics(CollectorRegistry())
        self.gateway = AirflowGateway(self.settings.airflow)
        self.successes: list[tuple[str, RunRecord]] = []
        self.dispatcher = TriggerDispatcher(
            self.settings, self.store, self.metrics, self.gateway, backoff_base=0.2
        )
        self.tracker = RunTracker(
            self.settings, self.store, self.metrics, self.gateway, self._on_success
        )
        self.health = AirflowHealth(self.settings, self.store, self.metrics, self.gateway)

    async def _on_success(self, model: str, run: RunRecord) -> None:
        self.successes.append((model, run))

    def enqueue(self, dag_id: str, marker: str, run_id: str | None = None) -> Action:
        run_id = run_id or f"{MODEL}__{marker}"
        action = Action(
            kind="trigger",
            key=run_id,
            model=MODEL,
            payload={
                "dag_id": dag_id,
                "run_id": run_id,
                "conf": {"model": MODEL, "marker": marker, "batches": ["b1", "b2"]},
                "note": f"test {marker}",
            },
        )
        with self.store.transaction() as conn:
            assert self.store.enqueue(conn, action)
        return action

    def deliver(self) -> None:
        asyncio.run(self.dispatcher.run_once())

    def make_due(self) -> None:
        """Skip the backoff wait of every pending trigger."""
        with self.store.transaction() as conn:
            conn.execute("UPDATE outbox SET next_attempt_at = 0 WHERE status = 'pending'")

    def track_until_handled(self, run_id: str, timeout: float = 120.0) -> RunRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            asyncio.run(self.tracker.run_once())
            run = self.run(run_id)
            if run is not None and run.handled:
                return run
            time.sleep(0.5)
        raise AssertionError(f"run {run_id} not handled after {timeout}s: {self.run(run_id)}")

    def run(self, run_id: str) -> RunRecord | None:
        return next((r for r in self.store.runs(limit=1000) if r.run_id == run_id), None)

    def outbox(self, kind: str) -> list[dict[str, Any]]:
        return [i for i in self.store.outbox_items() if i["kind"] == kind]

    def alerts(self, alert: str) -> list[dict[str, Any]]:
        return [i for i in self.outbox("alert") if i["payload"]["alert"] == alert]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def close(self) -> None:
        self.gateway.close()
        self.store.close()


@pytest.fixture
def rig_factory(tmp_path: Path, airflow_server: AirflowServer) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(store: StateStore | None = None, **airflow: Any) -> Rig:
        rig = Rig(tmp_path / f"rig{len(rigs)}", airflow_server, store, **airflow)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def marker() -> str:
    return uuid.uuid4().hex[:10]


def test_trigger_is_delivered_and_tracked_to_success(
    airflow_server: AirflowServer, rig_factory: Any
) -> None:
    rig = rig_factory()
    m = marker()
    action = rig.enqueue("retrain_test", m)

    rig.deliver()

    [item] = rig.outbox("trigger")
    assert item["status"] == "done", item
    assert rig.sample("watcher_retrain_deliveries_total", model=MODEL, outcome="delivered") == 1
    assert rig.sample("watcher_outbox_pending", kind="trigger") == 0
    runs = airflow_server.runs_with_conf("retrain_test", "marker", m)
    assert [r["dag_run_id"] for r in runs] == [action.key]
    assert runs[0]["conf"] == action.payload["conf"]
    assert runs[0]["note"] == f"test {m}"

    run = rig.track_until_handled(action.key)

    assert run.state == "success"
    assert (airflow_server.get_run("retrain_test", action.key) or {}).get("state") == "success"
    assert [(model, r.run_id) for model, r in rig.successes] == [(MODEL, action.key)]
    assert rig.sample("watcher_retrain_runs", model=MODEL, state="success") == 1
    assert rig.sample("watcher_retrain_runs", model=MODEL, state="running") == 0
    assert (rig.sample("watcher_retrain_last_success_timestamp_seconds", model=MODEL) or 0) > 0
    # Handled once: more rounds do not call the success hook again.
    asyncio.run(rig.tracker.run_once())
    assert len(rig.successes) == 1
    assert rig.alerts("retrain_failed") == []


def test_second_delivery_of_the_same_trigger_is_one_run(
    airflow_server: AirflowServer, rig_factory: Any
) -> None:
    rig = rig_factory()
    m = marker()
    action = rig.enqueue("retrain_test", m)
    # The daemon delivered it, then died before marking it done: Airflow has the run.
    payload = action.payload
    first = asyncio.run(
        rig.gateway.trigger(payload["dag_id"], payload["run_id"], payload["conf"], None)
    )
    assert not first.duplicate

    rig.deliver()  # the restarted daemon delivers it again: 409

    [item] = rig.outbox("trigger")
    assert item["status"] == "done"
    assert rig.sample("watcher_retrain_deliveries_total", model=MODEL, outcome="duplicate") == 1
    assert rig.run(action.key) is not None
    # The same batches replayed into a fresh state store produce the same run id again.
    replay = rig_factory()
    replay.enqueue("retrain_test", m)
    replay.deliver()
    assert replay.outbox("trigger")[0]["status"] == "done"
    assert len(airflow_server.runs_with_conf("retrain_test", "marker", m)) == 1
    airflow_server.wait_for_run("retrain_test", action.key)


def test_wrong_password_is_one_clear_alert_and_no_tight_loop(
    airflow_server: AirflowServer, rig_factory: Any
) -> None:
    rig = rig_factory(password="not-the-password")
    rig.dispatcher.interval_seconds = 0.05
    rig.tracker.interval_seconds = 0.05
    m = marker()
    rig.enqueue("retrain_test", m)

    async def run_for(seconds: float) -> None:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(run_periodically(w, stop)) for w in (rig.dispatcher, rig.tracker)
        ]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(run_for(2.0))

    # ~40 rounds of each worker, one request to /auth/token: the refusal is backed off.
    assert rig.gateway.login_attempts == 1
    [item] = rig.outbox("trigger")
    assert item["status"] == "pending"  # not lost: it waits for the right password
    assert "refused the login of user 'admin': Invalid credentials" in item["last_error"]
    assert "airflow.password" in item["last_error"]
    assert item["next_attempt_at"] > time.time()
    [alert] = rig.alerts("trigger_refused")
    assert alert["payload"]["incident"] == "airflow:login"
    assert alert["payload"]["details"]["status"] == 401
    assert airflow_server.runs_with_conf("retrain_test", "marker", m) == []

    # The operator fixes the password and restarts: the same outbox delivers, the incident ends.
    fixed = rig_factory(store=rig.store)
    fixed.make_due()
    fixed.deliver()
    assert fixed.outbox("trigger")[0]["status"] == "done"
    assert len(airflow_server.runs_with_conf("retrain_test", "marker", m)) == 1
    assert not any(i["key"] == "airflow:login" for i in rig.store.open_incidents())
    assert len(rig.alerts("trigger_refused")) == 1


def test_paused_dag_is_detected_and_alerted(
    airflow_server: AirflowServer, rig_factory: Any
) -> None:
    airflow_server.set_paused("retrain_paused", True)
    rig = rig_factory()
    m = marker()
    action = rig.enqueue("retrain_paused", m)

    rig.deliver()
    rig.make_due()
    rig.deliver()  # still paused: counted again, alerted once

    [item] = rig.outbox("trigger")
    assert item["status"] == "pending"
    assert "is paused" in item["last_error"]
    assert rig.sample("watcher_dag_paused_detections_total", model=MODEL) == 2
    [alert] = rig.alerts("dag_paused")
    assert alert["payload"]["details"]["dag_id"] == "retrain_paused"
    assert alert["payload"]["incident"] == "dag_paused:retrain_paused"
    assert rig.store.decisions(MODEL)[0].outcome == "dag_paused"
    assert airflow_server.runs_with_conf("retrain_paused", "marker", m) == []

    # Someone unpauses it: the waiting trigger goes out, the incident closes.
    airflow_server.set_paused("retrain_paused", False)
    try:
        rig.make_due()
        rig.deliver()
        assert rig.outbox("trigger")[0]["status"] == "done"
        assert len(airflow_server.runs_with_conf("retrain_paused", "marker", m)) == 1
        assert not any(i["key"] == "dag_paused:retrain_paused" for i in rig.store.open_incidents())
        airflow_server.wait_for_run("retrain_paused", action.key)
    finally:
        airflow_server.set_paused("retrain_paused", True)


def test_paused_dag_is_unpaused_when_configured(
    airflow_server: AirflowServer, rig_factory: Any
) -> None:
    airflow_server.set_paused("retrain_paused", True)
    rig = rig_factory(unpause_paused_dags=True)
    m = marker()
    action = rig.enqueue("retrain_paused", m)
    try:
        rig.deliver()

        assert rig.outbox("trigger")[0]["status"] == "done"
        assert not airflow_server.is_paused("retrain_paused")
        assert rig.sample("watcher_dag_paused_detections_total", model=MODEL) == 1
        assert rig.alerts("dag_paused") == []
        assert rig.store.decisions(MODEL)[0].outcome == "dag_unpaused"
        run = rig.track_until_handled(action.key)
        assert run.state == "success"
    finally:
        airflow_server.set_paused("retrain_paused", True)


def test_failed_run_becomes_an_alert(airflow_server: AirflowServer, rig_factory: Any) -> None:
    rig = rig_factory()
    action = rig.enqueue("retrain_fails", marker())
    rig.deliver()

    run = rig.track_until_handled(action.key)

    assert run.state == "failed"
    assert rig.successes == []
    [alert] = rig.alerts("retrain_failed")
    assert alert["payload"]["run"]["run_id"] == action.key
    assert alert["payload"]["run"]["url"].endswith(f"/dags/retrain_fails/runs/{action.key}")
    assert rig.sample("watcher_retrain_runs", model=MODEL, state="failed") == 1


def assert_refused_for_good(rig: Rig, action: Action) -> None:
    """A dead letter with the server's message, one alert, the metrics counting it."""
    [item] = rig.outbox("trigger")
    assert item["status"] == "dead"
    assert "404" in item["last_error"]
    assert "no_such_dag" in item["last_error"]
    [alert] = rig.alerts("trigger_refused")
    assert alert["payload"]["details"]["status"] == 404
    assert alert["payload"]["details"]["run_id"] == action.key
    assert rig.sample("watcher_dead_letters_total", kind="trigger") == 1
    assert rig.sample("watcher_retrain_deliveries_total", model=MODEL, outcome="failed") == 1


def test_unknown_dag_is_a_dead_letter_with_the_server_message(rig_factory: Any) -> None:
    rig = rig_factory(missing_dag_grace_seconds=0)
    action = rig.enqueue("no_such_dag", marker())
    rig.deliver()
    assert_refused_for_good(rig, action)


def test_unknown_dag_is_asked_again_for_the_grace_period_then_refused(rig_factory: Any) -> None:
    """Airflow answers 404 while it re-parses a DAG it deactivated: within the grace period
    the trigger waits with the server's answer as its last error, nobody is paged; after
    it, the same 404 is a dead letter and one alert."""
    rig = rig_factory(missing_dag_grace_seconds=600)
    action = rig.enqueue("no_such_dag", marker())
    rig.deliver()

    [item] = rig.outbox("trigger")
    assert item["status"] == "pending"
    assert "HTTP 404" in item["last_error"]
    assert "no_such_dag" in item["last_error"]
    assert "missing_dag_grace_seconds" in item["last_error"]
    assert rig.alerts("trigger_refused") == []
    assert rig.sample("watcher_dead_letters_total", kind="trigger") is None

    with rig.store.transaction() as conn:  # the grace period has passed
        conn.execute("UPDATE outbox SET created_at = created_at - 601 WHERE kind = 'trigger'")
    rig.make_due()
    rig.deliver()
    assert_refused_for_good(rig, action)


LATE_DAG = """
from airflow.sdk import dag, task


@task
def noop() -> None:
    pass


@dag(dag_id="{dag_id}", schedule=None, is_paused_upon_creation=False, catchup=False)
def late() -> None:
    noop()


late()
"""


def test_a_dag_deployed_within_the_grace_period_gets_its_trigger(
    tmp_path: Path, airflow_server: AirflowServer, rig_factory: Any
) -> None:
    """The trigger is queued before Airflow has parsed the DAG's file (a deployment in
    progress): the 404 waits, and once the file is parsed the same trigger is delivered."""
    rig = rig_factory(missing_dag_grace_seconds=600)
    dag_id = f"retrain_late_{marker()}"
    action = rig.enqueue(dag_id, marker())
    rig.deliver()
    [item] = rig.outbox("trigger")
    assert item["status"] == "pending"
    assert "HTTP 404" in item["last_error"]

    dag_file = tmp_path / f"{dag_id}.py"
    dag_file.write_text(LATE_DAG.format(dag_id=dag_id))
    airflow_server.add_dag(dag_file, [dag_id])
    try:
        rig.make_due()
        rig.deliver()
        [item] = rig.outbox("trigger")
        assert item["status"] == "done", item
        assert airflow_server.get_run(dag_id, action.key) is not None
        assert rig.alerts("trigger_refused") == []
    finally:
        (airflow_server.dags_folder / dag_file.name).unlink()


def test_health_probe_reads_each_component(airflow_server: AirflowServer, rig_factory: Any) -> None:
    rig = rig_factory()
    components = asyncio.run(rig.gateway.health())
    assert components["metadatabase"] == "healthy"
    assert components["scheduler"] == "healthy"
    assert components["dag_processor"] == "healthy"
    asyncio.run(rig.health.run_once())
    assert rig.sample("watcher_airflow_up") == 1
    assert rig.health.problems == []
    assert rig.outbox("alert") == []


def test_api_server_outage_loses_nothing_and_triggers_once(
    airflow_server: AirflowServer, rig_factory: Any
) -> None:
    rig = rig_factory(unreachable_alert_after_seconds=0.0)
    airflow_server.wait_until_idle()  # tasks need the api-server too; stop it between runs
    m = marker()
    action = rig.enqueue("retrain_test", m)
    airflow_server.stop_api_server()
    try:
        with stamina.set_testing(True, attempts=2):
            rig.deliver()
            asyncio.run(rig.health.run_once())
            rig.make_due()
            rig.deliver()
    finally:
        airflow_server.start_api_server()

    [item] = rig.outbox("trigger")
    assert item["status"] == "pending"
    assert item["attempts"] == 2
    assert "refused" in item["last_error"].lower()
    assert rig.sample("watcher_airflow_up") == 0
    [down] = rig.alerts("airflow_unreachable")
    assert down["payload"]["incident"] == "airflow:unreachable"

    asyncio.run(rig.health.run_once())
    assert rig.sample("watcher_airflow_up") == 1
    assert len(rig.alerts("airflow_recovered")) == 1
    rig.make_due()
    rig.deliver()
    rig.deliver()

    assert rig.outbox("trigger")[0]["status"] == "done"
    assert len(airflow_server.runs_with_conf("retrain_test", "marker", m)) == 1
    assert rig.track_until_handled(action.key).state == "success"
