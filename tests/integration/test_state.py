"""The state store's contract, on SQLite and on the real PostgreSQL (`state_backend`):
the batch ledger, one transaction per batch, decisions, the outbox, runs, incidents,
watermarks, labelled periods and retention."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import psycopg
import pytest
from fixtures_state import StateBackend

from watcher.state import Action, LabelPeriod, StateStore

MODEL = "bikeshare"


def _score(store: StateStore, batch_id: str, *, drift: bool = False, version: str = "0001") -> int:
    assert store.claim_batch(MODEL, batch_id, f"/in/{batch_id}.parquet")
    with store.transaction() as conn:
        return store.finish_batch(
            conn,
            model=MODEL,
            batch_id=batch_id,
            status="scored",
            rows=1000,
            reference_version=version,
            dataset_drift=drift,
            drift_share=0.75 if drift else 0.125,
            result={"drift": {"columns": {"temp": {"drifted": drift}, "hum": {"drifted": False}}}},
        )


def test_ledger_claims_once_and_keeps_results(store: StateStore) -> None:
    assert store.claim_batch(MODEL, "b1", "/in/b1.parquet")
    # Claimed but not finished (a crash while scoring): claimable again.
    assert store.claim_batch(MODEL, "b1", "/in/b1.parquet")
    assert not store.is_processed(MODEL, "b1")
    with store.transaction() as conn:
        seq = store.finish_batch(
            conn,
            model=MODEL,
            batch_id="b1",
            status="scored",
            rows=1234,
            reference_version="0001",
            dataset_drift=True,
            drift_share=0.123456789012345,
            result={"share": 0.5},
        )
    assert seq >= 1
    assert not store.claim_batch(MODEL, "b1", "/in/b1.parquet")
    record = store.batch(MODEL, "b1")
    assert record is not None
    assert (record.status, record.rows, record.dataset_drift) == ("scored", 1234, True)
    assert record.drift_share == 0.123456789012345  # double precision on both backends
    assert record.result == {"share": 0.5}
    assert record.finished_at is not None
    assert abs(record.finished_at - time.time()) < 60
    assert store.processed_ids(MODEL) == {"b1"}
    assert [b.batch_id for b in store.recent_batches(MODEL)] == ["b1"]
    assert store.batch_status(MODEL, "nope") is None
    with pytest.raises(LookupError, match="never claimed"), store.transaction() as conn:
        store.finish_batch(
            conn, model=MODEL, batch_id="nope", status="failed", rows=None, reference_version=None
        )


def test_a_batch_transaction_is_all_or_nothing(store: StateStore) -> None:
    assert store.claim_batch(MODEL, "b1", "/in/b1.parquet")

    def crash_mid_batch() -> None:
        with store.transaction() as conn:
            store.finish_batch(
                conn, model=MODEL, batch_id="b1", status="scored", rows=10, reference_version="1"
            )
            store.record_decision(conn, model=MODEL, batch_id="b1", outcome="triggered", reason="x")
            store.enqueue(conn, Action("trigger", "run-1", MODEL, {"dag_id": "d"}))
            store.open_incident(conn, "drift:bikeshare", "drift", MODEL, {})
            raise RuntimeError("crash between the writes and the commit")

    with pytest.raises(RuntimeError, match="crash"):
        crash_mid_batch()
    assert store.batch_status(MODEL, "b1") == "claimed"
    assert store.decisions(MODEL) == []
    assert store.outbox_items() == []
    assert store.open_incidents() == []
    assert store.claim_batch(MODEL, "b1", "/in/b1.parquet")  # processed again, not a repeat


def test_drift_streak_resets_and_columns(store: StateStore) -> None:
    for i, drift in enumerate([False, True, True, True]):
        _score(store, f"b{i}", drift=drift)
    assert store.drift_streak(MODEL) == 3
    with store.transaction() as conn:
        assert store.drift_flags_since_reset(conn, MODEL, 2) == [True, True]
        columns = store.drifted_columns_since_reset(conn, MODEL, 1)
        assert columns == [{"temp": True, "hum": False}]
        store.reset_streak(conn, MODEL)
    assert store.drift_streak(MODEL) == 0
    _score(store, "b4", drift=True)
    assert store.drift_streak(MODEL) == 1
    with store.transaction() as conn:
        assert store.batches_served(conn, MODEL, "0001") == 5
        assert store.batches_served_since(conn, MODEL, "0001", time.time() + 10) == 0
        assert store.batch_version(conn, MODEL, "b4") == "0001"
        assert store.batch_version(conn, MODEL, "missing") is None


def test_reference_version_and_deployment(store: StateStore) -> None:
    assert store.reference_version(MODEL) is None
    assert store.set_reference_version(MODEL, "0001")
    assert not store.set_reference_version(MODEL, "0001")
    deployed = store.deployed_at(MODEL)
    assert deployed is not None
    assert abs(deployed - time.time()) < 60
    store.note_deployment(MODEL)  # keeps the first time
    assert store.deployed_at(MODEL) == deployed
    assert store.reference_version(MODEL) == "0001"


def test_decisions_filters_and_readings(store: StateStore) -> None:
    t0 = 1_780_000_000.0
    with store.transaction() as conn:
        store.record_decision(
            conn, model=MODEL, batch_id="b1", outcome="no_action", reason="a", at=t0
        )
        store.record_decision(
            conn,
            model=MODEL,
            batch_id="b2",
            outcome="triggered",
            reason="drift",
            run_id="run-2",
            at=t0 + 10,
            signal="drift",
            readings=[{"signal": "drift", "value": np.float64(0.5), "n": np.int64(3)}],
        )
        assert store.trigger_times(conn, MODEL, t0) == [t0 + 10]
        assert store.last_trigger_at(conn, MODEL, "drift") == t0 + 10
        assert store.last_trigger_at(conn, MODEL, "performance") is None
    assert [d.batch_id for d in store.decisions(MODEL)] == ["b2", "b1"]
    assert [d.reason for d in store.decisions(MODEL, batch_id="b1")] == ["a"]
    last = store.last_decision_with_readings(MODEL)
    assert last is not None
    assert last.readings == [{"signal": "drift", "value": 0.5, "n": 3}]


def test_outbox_lifecycle(store: StateStore) -> None:
    store.scrub = lambda text: text.replace("hunter2", "********")
    now = time.time()
    with store.transaction() as conn:
        assert store.enqueue(conn, Action("alert", "a1", MODEL, {"body": "pw hunter2"}))
        assert not store.enqueue(conn, Action("alert", "a1", MODEL, {"body": "again"}))
        assert store.enqueue(conn, Action("alert", "a2", MODEL, {}), not_before=now + 3600)
        assert store.enqueue(conn, Action("trigger", "t1", MODEL, {"dag_id": "d"}))
    assert store.pending_counts() == {"trigger": 1, "alert": 2, "webhook": 0}
    due = store.due_actions("alert", now + 1)
    assert [d.key for d in due] == ["a1"]
    assert due[0].payload == {"body": "pw ********"}
    store.mark_sending(due[0].id)
    assert store.due_actions("alert", now + 1)[0].sending_at is not None
    store.reschedule(due[0].id, now + 60, "smtp said hunter2")
    assert store.earliest_backing_off("alert", now) == due[0].id
    item = store.outbox_items(status="pending")[0]
    assert item["last_error"] == "smtp said ********"
    assert item["attempts"] == 1
    store.mark_done(due[0].id)
    trigger = store.due_actions("trigger", now + 1)[0]
    store.mark_dead(trigger.id, "HTTP 400")
    later = store.due_actions("alert", now + 7200)
    with store.transaction() as conn:
        store.complete_actions(conn, [later[0].id])
    assert store.pending_counts() == {"trigger": 0, "alert": 0, "webhook": 0}
    assert [a.key for a in store.alerts_after(0, pending_only=False)] == ["a1", "a2"]
    assert store.alerts_after(0, pending_only=True) == []
    assert {i["status"] for i in store.outbox_items(model=MODEL)} == {"done", "dead"}


def test_runs_and_retraining(store: StateStore) -> None:
    assert not store.retraining(MODEL)
    with store.transaction() as conn:
        store.enqueue(conn, Action("trigger", "r1", MODEL, {}))
    assert store.retraining(MODEL)  # waiting in the outbox counts
    store.add_run("r1", MODEL, "retrain_bikeshare", {"model": MODEL}, "queued")
    store.add_run("r1", MODEL, "retrain_bikeshare", {"model": MODEL}, "queued")  # idempotent
    store.update_run("r1", "running")
    (run,) = store.runs(MODEL)
    assert (run.state, run.ended_at, run.handled) == ("running", None, False)
    store.update_run("r1", "success")
    store.mark_run_handled("r1")
    (run,) = store.runs()
    assert run.state == "success"
    assert run.ended_at is not None
    assert run.handled
    assert store.runs(unhandled_only=True) == []


def test_incidents_and_watermarks(store: StateStore) -> None:
    with store.transaction() as conn:
        assert store.open_incident(conn, "drift:m", "drift", MODEL, {"streak": 3})
        assert not store.open_incident(conn, "drift:m", "drift", MODEL, {"streak": 4})
        store.set_watermark(conn, "sql:m", "one")
        store.set_watermark(conn, "sql:m", "two")
    (incident,) = store.open_incidents()
    assert incident["details"] == {"streak": 3}
    store.touch_incident("drift:m", 123.5)
    assert store.open_incidents()[0]["last_notified_at"] == 123.5
    with store.transaction() as conn:
        assert store.resolve_incident(conn, "drift:m")
        assert not store.resolve_incident(conn, "drift:m")
        assert store.open_incident(conn, "drift:m", "drift", MODEL, {"streak": 1})  # reopens
    assert store.watermark("sql:m") == "two"
    assert store.watermark("none") is None


def test_label_periods_update_only_on_more_rows(store: StateStore) -> None:
    period = LabelPeriod("2026-01-01", "0001", "rmse", 40.0, 40.0, 100, 1.0)
    with store.transaction() as conn:
        assert store.add_label_period(conn, MODEL, period)
        assert not store.add_label_period(conn, MODEL, period)
        more = LabelPeriod("2026-01-01", "0001", "rmse", 41.0, 41.0, 150, 2.0)
        assert store.add_label_period(conn, MODEL, more)
        assert store.label_periods(conn, MODEL, "0001") == [more]
        assert store.label_periods(conn, MODEL, "0001", after=2.0) == []


def test_retention_prunes_old_results_decisions_and_finished_outbox(store: StateStore) -> None:
    _score(store, "old", drift=True)
    now = time.time()
    day = 86_400.0
    with store.transaction() as conn:
        for outcome in ("no_action", "triggered"):
            store.record_decision(
                conn, model=MODEL, batch_id="old", outcome=outcome, reason="", at=now - 40 * day
            )
        store.record_decision(conn, model=MODEL, batch_id="new", outcome="no_action", reason="")
        store.enqueue(conn, Action("alert", "done-old", MODEL, {}))
        store.enqueue(conn, Action("alert", "pending-old", MODEL, {}))
    done = store.due_actions("alert", now + 1)[0]
    store.mark_done(done.id)
    # Age the batch and the finished outbox row by 40 days.
    with store.transaction() as conn:
        conn.execute("UPDATE batches SET finished_at = ?", (now - 40 * day,))
        conn.execute("UPDATE outbox SET done_at = ?, created_at = ?", (now - 40 * day,) * 2)
    _score(store, "new")
    pruned = store.prune(30 * day)
    assert (pruned.batch_results, pruned.decisions, pruned.outbox) == (1, 1, 1)
    old = store.batch(MODEL, "old")
    assert old is not None
    assert old.result is None
    assert old.status == "scored"
    assert not store.claim_batch(MODEL, "old", "/in/old.parquet")  # the ledger remembers
    assert store.batch(MODEL, "new").result is not None  # type: ignore[union-attr]
    assert sorted(d.outcome for d in store.decisions(MODEL)) == ["no_action", "triggered"]
    assert [i["key"] for i in store.outbox_items()] == ["pending-old"]
    assert store.prune(30 * day).total == 0


def test_concurrent_claims_from_two_connections_never_fail(
    store: StateStore, open_store: Callable[..., StateStore]
) -> None:
    """Two stores (two connections, as two processes have) claim the same batches at once:
    the ledger's unique key decides, no claim fails, one ledger row per batch."""
    other = open_store()
    errors: list[BaseException] = []

    def claim(s: StateStore) -> None:
        try:
            for i in range(40):
                s.claim_batch(MODEL, f"b{i}", "/in")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(s,)) for s in (store, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.transaction() as conn:
        n = conn.execute("SELECT COUNT(*) AS n FROM batches").fetchone()["n"]
    assert n == 40


@pytest.mark.postgres
def test_postgres_connection_lost_then_recovered(state_pg_database: str) -> None:
    """Every connection terminated (as a server restart does): the call in flight fails
    with the driver's error and sets write_error; the next one reconnects; nothing lost."""
    from fixtures_state import pg_backend

    backend: StateBackend = pg_backend(state_pg_database)
    store = backend.open()
    try:
        _score(store, "b1")
        with psycopg.connect(backend.conninfo(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'watcher' AND datname = current_database()"
            )
        with pytest.raises(psycopg.OperationalError):
            store.claim_batch(MODEL, "b2", "/in/b2.parquet")
        assert store.write_error is not None
        _score(store, "b2")
        assert store.write_error is None
        assert store.processed_ids(MODEL) == {"b1", "b2"}
        # A read is asked again on a new connection: a replica starting while PostgreSQL
        # restarts no longer dies on its first query (a write still fails, as above).
        with psycopg.connect(backend.conninfo(), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'watcher' AND datname = current_database()"
            ).fetchall()
        assert killed
        assert store.processed_ids(MODEL) == {"b1", "b2"}
        assert store.reference_version(MODEL) is None
    finally:
        store.close()


def test_retention_worker_of_the_daemon_prunes(store: StateStore) -> None:
    import asyncio

    from watcher.state.retention import RetentionWorker

    with store.transaction() as conn:
        store.record_decision(
            conn, model=MODEL, batch_id="b", outcome="no_action", reason="", at=1_000.0
        )
        store.record_decision(conn, model=MODEL, batch_id="b", outcome="no_action", reason="")
    worker = RetentionWorker(store, retention_days=30, interval_seconds=3600)
    asyncio.run(worker.run_once())
    assert len(store.decisions(MODEL)) == 1


def test_a_closed_store_refuses_work_instead_of_reconnecting(store: StateStore) -> None:
    """A scoring thread that a shutdown abandoned keeps running; when it reaches its final
    transaction the store its daemon closed must refuse it (on PostgreSQL a closed
    connection otherwise looks like a lost one and would be opened again)."""
    from watcher.state import StateUnavailable

    _score(store, "b1")
    store.close()
    with pytest.raises(StateUnavailable, match="is closed"):
        store.claim_batch(MODEL, "b2", "/in/b2.parquet")
    with pytest.raises(StateUnavailable, match="is closed"), store.transaction():
        pass
