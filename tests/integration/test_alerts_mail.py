"""Alert mails end to end: outbox -> dispatcher -> real SMTP server (aiosmtpd) -> `email`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd
import pytest
from fixtures_smtp import SmtpServer
from prometheus_client import generate_latest

from watcher.alerts import AlertKind, alert_action
from watcher.alerts.compose import message_id
from watcher.alerts.dispatcher import MailDispatcher, build_mail_workers
from watcher.alerts.kinds import (
    GRAFANA_MODEL_DASHBOARD,
    GRAFANA_OPERATIONS_DASHBOARD,
    GRAFANA_OVERVIEW_DASHBOARD,
)
from watcher.alerts.report import write_drift_report
from watcher.config import ColumnsConfig, Settings
from watcher.metrics import Metrics
from watcher.state import Action, StateStore

GRAFANA = "http://grafana.example:3000"
AIRFLOW_UI = "https://airflow.example.org"
COLUMNS = {"numeric": ["temp", "hum"], "categorical": ["season"], "prediction": "pred"}


# ---- helpers ------------------------------------------------------------------------------


def make_settings(
    server: SmtpServer,
    tmp_path: Path,
    *,
    models: tuple[str, ...] = ("bikes",),
    smtp: dict[str, Any] | None = None,
    alerts: dict[str, Any] | None = None,
    airflow: dict[str, Any] | None = None,
) -> Settings:
    return Settings(
        daemon={"state_dir": str(tmp_path / "state")},
        smtp=server.smtp_settings(**(smtp or {})),
        alerts={
            "grafana_url": GRAFANA,
            "digest_threshold": 100,
            "digest_window_seconds": 0,
            **(alerts or {}),
        },
        airflow={"url": "http://airflow.internal:8080", "ui_url": AIRFLOW_UI, **(airflow or {})},
        models={
            m: {
                "source": {"kind": "directory", "path": str(tmp_path / "in" / m)},
                "columns": COLUMNS,
            }
            for m in models
        },
    )


def enqueue(store: StateStore, *actions: Action) -> None:
    with store.transaction() as conn:
        for action in actions:
            assert store.enqueue(conn, action)


def dispatcher(settings: Settings, store: StateStore, metrics: Metrics) -> MailDispatcher:
    # Short backoff so an outage test does not wait minutes between delivery rounds.
    return MailDispatcher(
        settings, store, metrics, backoff_initial_seconds=0.05, backoff_max_seconds=0.2
    )


def run_round(d: MailDispatcher) -> None:
    asyncio.run(d.run_once())


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def subject_of(msg: EmailMessage) -> str:
    # A long subject is folded onto the next line; Python's parser keeps the space that
    # follows "Subject:" where mail clients drop it.
    return str(msg["Subject"]).strip()


def html_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def by_kind(mails: list[EmailMessage]) -> dict[str, EmailMessage]:
    return {str(m["X-Watcher-Alert"]): m for m in mails}


FEATURES = [
    {
        "feature": "temp",
        "stattest": "wasserstein",
        "score": 0.4213,
        "threshold": 0.1,
        "drifted": True,
    },
    {
        "feature": "season",
        "stattest": "chisquare",
        "score": 1.2e-09,
        "threshold": 0.05,
        "drifted": True,
    },
    {
        "feature": "hum",
        "stattest": "wasserstein",
        "score": 0.02,
        "threshold": 0.1,
        "drifted": False,
    },
]


def drift_alert(model: str, batch: str, report: str | None = None) -> Action:
    """The shape the pipeline enqueues when a drift incident opens."""
    return alert_action(
        "drift_persisting",
        key=f"drift:{model}:opened:{batch}",
        model=model,
        title="dataset drift in 3 consecutive batches (2/3 features drifted)",
        severity="warning",
        details={
            "drift_share": 0.6667,
            "streak": 3,
            "reference_version": "v3",
            "decision": "triggered",
            "decision_reason": "3 drifted batches in a row",
        },
        features=FEATURES,
        batch={"batch_id": batch, "uri": f"file:///data/{model}/{batch}.parquet"},
        report_path=report,
        incident=f"drift:{model}",
    )


def every_kind(report: str) -> list[Action]:
    run = {"dag_id": "retrain_bikes", "run_id": "watcher__bikes__2011-03-01T00:00:00+00:00"}
    now = time.time()
    m = "bikes"
    return [
        drift_alert(m, "2011-03-01", report),
        alert_action(
            "drift_resolved",
            key="drift:bikes:resolved:b9",
            model=m,
            title="dataset drift over: 0 drifted, 2 clean batches in a row",
            severity="info",
            incident="drift:bikes",
            details={"reference_version": "v3"},
            batch={"batch_id": "b9", "uri": "x"},
        ),
        alert_action(
            "retrain_triggered",
            key="trig:1",
            model=m,
            title="retraining started",
            severity="info",
            run=run,
            details={"reason": "3 drifted batches"},
        ),
        alert_action(
            "retrain_deployed",
            key="dep:1",
            model=m,
            title="model v4 deployed",
            severity="info",
            run=run,
            details={
                "version": "v4",
                "previous_version": "v3",
                "primary_metric": "mae",
                "champion": {"mae": 42.5, "r2": 0.71},
                "challenger": {"mae": 38.25, "r2": 0.77},
            },
        ),
        alert_action(
            "retrain_not_deployed",
            key="nodep:1",
            model=m,
            title="challenger v5 not deployed",
            severity="warning",
            run=run,
            details={
                "reason": "challenger mae 44.1 is not 2% better than 42.5",
                "primary_metric": "mae",
                "margin": 0.02,
                "champion": {"mae": 42.5},
                "challenger": {"mae": 44.1},
            },
        ),
        alert_action(
            "retrain_failed",
            key="fail:1",
            model=m,
            title="retrain run failed",
            severity="critical",
            run=run,
            details={"state": "failed", "failed_task": "train", "error": "MemoryError"},
        ),
        alert_action(
            "retrain_task_failed",
            key="task:1:failed",
            model=m,
            title="retrain task validate failed",
            severity="critical",
            run=run,
            details={"failed_task": "validate", "try_number": 1, "error": "too few rows: 657"},
        ),
        alert_action(
            "retrain_task_retried",
            key="task:1:retried",
            model=m,
            title="retrain task ingest will be retried",
            severity="warning",
            run=run,
            details={"failed_task": "ingest", "try_number": 1, "error": "folder does not exist"},
        ),
        alert_action(
            "trigger_refused",
            key="refused:1",
            model=m,
            title="Airflow refused the trigger",
            severity="critical",
            details={"dag_id": "retrain_bikes", "status": 404, "error": "DAG not found"},
        ),
        alert_action(
            "dag_paused",
            key="paused:1",
            model=m,
            title="retrain_bikes is paused",
            severity="warning",
            details={"dag_id": "retrain_bikes", "unpaused": False},
            incident="airflow:paused:retrain_bikes",
        ),
        alert_action(
            "airflow_unreachable",
            key="af:down:1",
            model=None,
            title="Airflow unreachable for 6 min",
            severity="critical",
            details={"down_since": now - 360, "down_seconds": 360, "error": "connection refused"},
            incident="airflow:down",
        ),
        alert_action(
            "airflow_recovered",
            key="af:up:1",
            model=None,
            title="Airflow is back",
            severity="info",
            details={"down_seconds": 900},
            incident="airflow:down",
        ),
        alert_action(
            "source_down",
            key="source:bikes:down:1",
            model=m,
            title="sql source predictions down for 6 min: connection refused",
            severity="critical",
            details={
                "down_seconds": 360,
                "table": "predictions",
                "dsn": "postgresql+psycopg://watcher:***@db/prod",
                "error": "connection refused",
                "what_to_do": "check the database",
            },
            incident="source:bikes:down",
        ),
        alert_action(
            "source_silent",
            key="source:bikes:silent:1",
            model=m,
            title="no batch for 45 min",
            severity="warning",
            details={"silent_seconds": 2700, "limit_seconds": 1800},
            incident="source:bikes:silent",
        ),
        alert_action(
            "source_recovered",
            key="source:bikes:silent:recovered:1",
            model=m,
            title="batches are arriving again",
            severity="info",
            incident="source:bikes:silent",
        ),
        alert_action(
            "batch_rejected",
            key="rejected:bikes:b7",
            model=m,
            title="batch b7 rejected: all_missing",
            severity="warning",
            details={
                "check": "all_missing",
                "reason": "column temp is entirely missing",
                "what_to_do": "fix the producer",
                "custom_thing": 7,
            },
            batch={"batch_id": "b7", "uri": "file:///data/bikes/b7.csv"},
        ),
        alert_action(
            "label_file_rejected",
            key="labels:bikes:week1.csv:rejected",
            model=m,
            title="label file week1.csv set aside",
            severity="warning",
            details={"file": "/data/labels/week1.csv", "reason": "week1.csv is empty (0 bytes)"},
        ),
        alert_action(
            "reminder",
            key="reminder:drift:bikes:2",
            model=m,
            title="still open after 12.0 h: Dataset drift persists",
            severity="warning",
            details={
                "reminder": 2,
                "incident_kind": "Dataset drift persists",
                "opened_at": now - 43200,
                "open_seconds": 43200,
            },
            incident="drift:bikes",
        ),
    ]


@pytest.fixture(scope="module")
def drift_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real evidently report of one small drifted batch, as the pipeline writes it."""
    rng = np.random.default_rng(7)
    n = 300
    reference = pd.DataFrame(
        {
            "temp": rng.normal(15, 5, n),
            "hum": rng.uniform(0.3, 0.9, n),
            "season": rng.choice(["spring", "summer", "fall"], n),
            "pred": rng.normal(100, 20, n),
        }
    )
    current = pd.DataFrame(
        {
            "temp": rng.normal(25, 5, n),
            "hum": rng.uniform(0.3, 0.9, n),
            "season": rng.choice(["summer", "winter"], n),  # "winter" is new
            "pred": rng.normal(130, 20, n),
        }
    )
    path = tmp_path_factory.mktemp("reports") / "bikes" / "2011-03-01.html"
    written = write_drift_report(reference, current, ColumnsConfig(**COLUMNS), path)
    assert written == path
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state" / "watcher.db")
    yield s
    s.close()


# ---- tests ----------------------------------------------------------------------------------


def test_drift_report_is_evidently_html_of_the_configured_columns(drift_report: Path) -> None:
    html = drift_report.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    # temp, season and pred drifted in the fixture; hum did not.
    assert "Drift is detected for 75.0% of columns (3 out of 4)." in html
    for col in ("temp", "season", "pred"):
        assert col in html
    assert not list(drift_report.parent.glob(".*.tmp"))  # written atomically


def test_every_alert_kind_arrives_with_subject_parts_table_links_and_report(
    smtp_server: SmtpServer, tmp_path: Path, store: StateStore, drift_report: Path
) -> None:
    # The 3.9 MB evidently report takes 5.3 MB in a mail: above the default limit.
    settings = make_settings(smtp_server, tmp_path, alerts={"attach_report_max_bytes": 6_000_000})
    metrics = Metrics()
    actions = every_kind(str(drift_report))
    enqueue(store, *actions)

    run_round(dispatcher(settings, store, metrics))

    received = smtp_server.wait_for(len(actions))
    # Every kind the daemon can raise, one mail each.
    assert len(received) == len(actions) == len(get_args(AlertKind))
    mails = by_kind([r.message for r in received])
    assert set(mails) == {a.payload["alert"] for a in actions}
    for action in actions:
        msg = mails[action.payload["alert"]]
        p = action.payload
        subject = subject_of(msg)
        assert subject.startswith(f"[watcher] {p['severity'].upper()}")
        if p["model"]:
            assert f" {p['model']}: " in subject
        assert p["title"] in subject
        assert msg["Message-ID"] == message_id(action.key, settings.smtp.sender)
        assert msg["From"] == "watcher@example.org"
        assert msg["To"] == "oncall@example.org"
        assert msg["Auto-Submitted"] == "auto-generated"
        text, html = text_of(msg), html_of(msg)
        assert p["title"] in text
        assert GRAFANA in text
        assert "<html" in html
        assert "</table>" in html
        if p["incident"]:
            assert msg["References"] == message_id(
                f"incident:{p['incident']}", "watcher@example.org"
            )
    for r in received:
        assert r.rcpt_tos == ["oncall@example.org"]
        assert r.mail_from == "watcher@example.org"

    # Drift: feature table (drifted only), Grafana link for the model, the report attached.
    drift = mails["drift_persisting"]
    text, html = text_of(drift), html_of(drift)
    assert "Drifted features (2 of 3)" in text
    assert [ln.split() for ln in text.splitlines() if ln.strip().startswith("temp ")] == [
        ["temp", "wasserstein", "0.4213", "0.1"]
    ]
    assert "season" in text
    assert "chisquare" in text
    assert "1.200e-09" in text
    assert "hum " not in text.split("Drifted features")[1].split("Details")[0]
    assert "<td" in html
    assert ">wasserstein<" in html
    assert ">0.4213<" in html
    grafana = f"{GRAFANA}/d/watcher-model-detail?var-model=bikes"
    assert grafana in text
    assert f'href="{grafana}"' in html
    assert "67%" in text  # drift_share shown as a share
    [attachment] = list(drift.iter_attachments())
    assert attachment.get_content_type() == "text/html"
    assert attachment.get_filename() == "drift-report-bikes-2011-03-01.html"
    assert attachment.get_payload(decode=True) == drift_report.read_bytes()

    # Retrain kinds link the Airflow run; deployed shows champion vs challenger.
    run_url = (
        f"{AIRFLOW_UI}/dags/retrain_bikes/runs/watcher__bikes__2011-03-01T00%3A00%3A00%2B00%3A00"
    )
    for kind in (
        "retrain_triggered",
        "retrain_deployed",
        "retrain_not_deployed",
        "retrain_failed",
        "retrain_task_failed",
        "retrain_task_retried",
    ):
        assert run_url in text_of(mails[kind]), kind
        assert f'href="{run_url}"' in html_of(mails[kind]), kind
    deployed = text_of(mails["retrain_deployed"])
    assert "Champion vs challenger" in deployed
    row = next(ln for ln in deployed.splitlines() if "mae (primary" in ln)
    assert "42.5" in row
    assert "38.25" in row
    assert "-10.0%" in row
    assert "v4" in deployed
    assert "v3" in deployed
    assert "not 2% better" in text_of(mails["retrain_not_deployed"])
    assert "train" in text_of(mails["retrain_failed"])
    assert "MemoryError" in text_of(mails["retrain_failed"])
    task_failed = text_of(mails["retrain_task_failed"])
    assert "Failed task" in task_failed
    assert "too few rows: 657" in task_failed
    assert "folder does not exist" in text_of(mails["retrain_task_retried"])
    assert "DAG not found" in text_of(mails["trigger_refused"])
    assert f"{AIRFLOW_UI}/dags/retrain_bikes" in text_of(mails["dag_paused"])
    assert "6 min" in text_of(mails["airflow_unreachable"])  # down_seconds as a duration
    assert f"{GRAFANA}/d/watcher-operations" in text_of(mails["airflow_unreachable"])
    assert f"{GRAFANA}/d/watcher-operations" in text_of(mails["retrain_failed"])
    assert "watcher-operations" not in text_of(mails["drift_persisting"])
    assert "45 min" in text_of(mails["source_silent"])
    assert "Source unreachable" in str(mails["source_down"]["Subject"]) + text_of(
        mails["source_down"]
    )
    assert "connection refused" in text_of(mails["source_down"])
    rejected = text_of(mails["batch_rejected"])
    assert "column temp is entirely missing" in rejected
    assert "all_missing" in rejected
    assert "Custom thing" in rejected  # unknown details keys still shown
    assert "b7.csv" in rejected
    assert "Reminder number" in text_of(mails["reminder"])
    assert "week1.csv is empty" in text_of(mails["label_file_rejected"])

    # Delivered items are done, and metrics say so.
    assert store.pending_counts()["alert"] == 0
    assert metrics.registry.get_sample_value("watcher_smtp_up") == 1
    assert (
        metrics.registry.get_sample_value(
            "watcher_alerts_total", {"kind": "drift_persisting", "outcome": "sent"}
        )
        == 1
    )
    assert metrics.registry.get_sample_value("watcher_outbox_pending", {"kind": "alert"}) == 0

    # Another round sends nothing again.
    run_round(dispatcher(settings, store, metrics))
    time.sleep(0.2)
    assert len(smtp_server.messages) == len(get_args(AlertKind))


def test_report_too_large_is_linked_not_attached(
    smtp_server: SmtpServer, tmp_path: Path, store: StateStore, drift_report: Path
) -> None:
    settings = make_settings(smtp_server, tmp_path, alerts={"attach_report_max_bytes": 1000})
    enqueue(store, drift_alert("bikes", "b1", str(drift_report)))
    run_round(dispatcher(settings, store, Metrics()))
    [mail] = smtp_server.wait_for(1)
    msg = mail.message
    assert list(msg.iter_attachments()) == []
    assert drift_report.resolve().as_uri() in text_of(msg)
    assert "larger than alerts.attach_report_max_bytes" in " ".join(text_of(msg).split())


def test_smtp_down_then_up_every_alert_arrives_exactly_once(
    smtp_server: SmtpServer, tmp_path: Path, store: StateStore
) -> None:
    settings = make_settings(smtp_server, tmp_path, models=("bikes", "taxis"))
    metrics = Metrics()
    d = dispatcher(settings, store, metrics)
    smtp_server.stop()
    actions = [drift_alert("bikes", "b1"), drift_alert("taxis", "t1"), drift_alert("bikes", "b2")]
    enqueue(store, *actions)

    for _ in range(3):
        run_round(d)
    assert metrics.registry.get_sample_value("watcher_smtp_up") == 0
    assert (
        metrics.registry.get_sample_value(
            "watcher_alerts_total", {"kind": "drift_persisting", "outcome": "retry"}
        )
        >= 1
    )
    pending = store.outbox_items(status="pending")
    assert len(pending) == 3
    assert any(p["last_error"] and "unavailable" in p["last_error"] for p in pending)
    assert metrics.registry.get_sample_value("watcher_outbox_pending", {"kind": "alert"}) == 3

    smtp_server.start()
    deadline = time.monotonic() + 20
    while store.pending_counts()["alert"] and time.monotonic() < deadline:
        run_round(d)
        time.sleep(0.1)
    assert store.pending_counts()["alert"] == 0
    received = smtp_server.wait_for(3)
    run_round(d)
    time.sleep(0.3)
    assert len(smtp_server.messages) == 3
    ids = sorted(str(r.message["Message-ID"]) for r in received)
    assert ids == sorted(message_id(a.key, settings.smtp.sender) for a in actions)
    assert metrics.registry.get_sample_value("watcher_smtp_up") == 1


def test_recipient_refused_550_is_parked_as_dead_letter(
    smtp_server: SmtpServer, tmp_path: Path, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(smtp_server, tmp_path)
    metrics = Metrics()
    smtp_server.refuse["oncall@example.org"] = 550
    enqueue(store, drift_alert("bikes", "b1"))

    with caplog.at_level(logging.ERROR, logger="watcher"):
        run_round(dispatcher(settings, store, metrics))

    [dead] = store.outbox_items(status="dead")
    assert "550" in dead["last_error"]
    assert metrics.registry.get_sample_value("watcher_dead_letters_total", {"kind": "alert"}) == 1
    assert (
        metrics.registry.get_sample_value(
            "watcher_alerts_total", {"kind": "drift_persisting", "outcome": "dead"}
        )
        == 1
    )
    assert any(
        "dead letter" in r.getMessage() and "drift:bikes:opened:b1" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )
    assert smtp_server.messages == []
    # Refusing one message says nothing about the server.
    assert metrics.registry.get_sample_value("watcher_smtp_up") == 1


def test_outage_longer_than_max_delivery_rounds_becomes_dead_letter(
    smtp_server: SmtpServer, tmp_path: Path, store: StateStore
) -> None:
    settings = make_settings(
        smtp_server, tmp_path, smtp={"max_delivery_rounds": 2, "retry_attempts": 1}
    )
    metrics = Metrics()
    d = dispatcher(settings, store, metrics)
    smtp_server.stop()
    enqueue(store, drift_alert("bikes", "b1"))
    deadline = time.monotonic() + 10
    while not store.outbox_items(status="dead") and time.monotonic() < deadline:
        run_round(d)
        time.sleep(0.1)
    [dead] = store.outbox_items(status="dead")
    assert dead["attempts"] == 2
    assert "gave up after 2 delivery rounds" in dead["last_error"]
    assert metrics.registry.get_sample_value("watcher_dead_letters_total", {"kind": "alert"}) == 1


def test_burst_of_50_drift_alerts_across_5_models_becomes_one_digest(
    smtp_server: SmtpServer, tmp_path: Path, store: StateStore
) -> None:
    models = ("bikes", "taxis", "rides", "trains", "buses")
    settings = make_settings(
        smtp_server,
        tmp_path,
        models=models,
        alerts={"digest_threshold": 5, "digest_window_seconds": 0.5},
    )
    metrics = Metrics()
    [d] = build_mail_workers(settings, store, metrics)
    assert isinstance(d, MailDispatcher)
    actions = [drift_alert(m, f"b{i:02d}") for i in range(10) for m in models]
    enqueue(store, *actions)

    run_round(d)  # a burst just began: held for one window so it can collect
    assert smtp_server.messages == []
    time.sleep(0.55)
    run_round(d)

    [mail] = smtp_server.wait_for(1)
    msg = mail.message
    assert subject_of(msg) == "[watcher] WARNING: 50 alerts for 5 model(s)"
    assert msg["X-Watcher-Alert"] == "digest"
    text, html = text_of(msg), html_of(msg)
    for m in models:
        assert f"{GRAFANA}/d/watcher-model-detail?var-model={m}" in text
        assert text.count(f" {m} ") >= 10
    assert text.count("dataset drift in 3 consecutive batches") == 50
    assert html.count("<tr>") >= 50
    assert "temp, season" in text  # the drifted features of each alert
    assert store.pending_counts()["alert"] == 0
    assert len(store.outbox_items(status="done")) == 51  # 50 folded + the digest
    assert (
        metrics.registry.get_sample_value(
            "watcher_alerts_total", {"kind": "drift_persisting", "outcome": "digested"}
        )
        == 50
    )
    assert (
        metrics.registry.get_sample_value(
            "watcher_alerts_total", {"kind": "digest", "outcome": "sent"}
        )
        == 1
    )
    # Every incident got its "last mail" time, so reminders start from the digest.
    assert all(i["last_notified_at"] for i in store.open_incidents())

    time.sleep(0.55)
    run_round(d)
    time.sleep(0.2)
    assert len(smtp_server.messages) == 1


def test_few_alerts_go_out_one_by_one(
    smtp_server: SmtpServer, tmp_path: Path, store: StateStore
) -> None:
    settings = make_settings(
        smtp_server, tmp_path, alerts={"digest_threshold": 5, "digest_window_seconds": 30}
    )
    enqueue(store, *[drift_alert("bikes", f"b{i}") for i in range(5)])
    run_round(dispatcher(settings, store, Metrics()))
    assert len(smtp_server.wait_for(5)) == 5
    assert all(r.message["X-Watcher-Alert"] == "drift_persisting" for r in smtp_server.messages)


def test_reminders_for_an_open_incident_until_it_is_resolved(
    smtp_server: SmtpServer, tmp_path: Path, store: StateStore
) -> None:
    settings = make_settings(smtp_server, tmp_path, alerts={"reminder_interval_seconds": 0.4})
    d = dispatcher(settings, store, Metrics())
    with store.transaction() as conn:
        assert store.open_incident(conn, "drift:bikes", "drift", "bikes", {"batch_id": "b1"})
        store.enqueue(conn, drift_alert("bikes", "b1"))

    run_round(d)
    [first] = smtp_server.wait_for(1)
    assert first.message["X-Watcher-Alert"] == "drift_persisting"
    [incident] = store.open_incidents()
    assert incident["last_notified_at"] is not None

    run_round(d)  # too early for a reminder
    time.sleep(0.45)
    run_round(d)
    mails = smtp_server.wait_for(2)
    reminder = mails[1].message
    assert reminder["X-Watcher-Alert"] == "reminder"
    assert "still open after" in subject_of(reminder)
    assert "bikes" in subject_of(reminder)
    assert reminder["References"] == first.message["References"]  # same thread
    keys = [i["key"] for i in store.outbox_items() if i["payload"]["alert"] == "reminder"]
    [incident] = store.open_incidents()
    assert keys == [f"reminder:drift:bikes:{incident['opened_at']:.3f}:1"]

    time.sleep(0.45)
    run_round(d)
    assert smtp_server.wait_for(3)[2].message["X-Watcher-Alert"] == "reminder"

    with store.transaction() as conn:
        assert store.resolve_incident(conn, "drift:bikes")
    time.sleep(0.45)
    run_round(d)
    time.sleep(0.2)
    assert len(smtp_server.messages) == 3

    # The same incident opens again later: its reminders count from 1 again.
    with store.transaction() as conn:
        assert store.open_incident(conn, "drift:bikes", "drift", "bikes", {"batch_id": "b9"})
    time.sleep(0.45)
    run_round(d)
    again = smtp_server.wait_for(4)[3].message
    assert again["X-Watcher-Alert"] == "reminder"
    [reopened] = store.open_incidents()
    assert again["Message-ID"] == message_id(
        f"reminder:drift:bikes:{reopened['opened_at']:.3f}:1", settings.smtp.sender
    )


def test_secrets_never_appear_in_logs_metrics_or_mails(
    smtp_server_factory: Callable[..., SmtpServer],
    tmp_path: Path,
    store: StateStore,
    drift_report: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    smtp_password = "Smtp-Pa55-7f3c9e"
    airflow_password = "Airflow-Pa55-b81d"
    server = smtp_server_factory(security="starttls", users={"watcher": smtp_password})
    secrets_file = tmp_path / "smtp_password"
    secrets_file.write_text(smtp_password + "\n", encoding="utf-8")
    settings = make_settings(
        server,
        tmp_path,
        smtp={"username": "watcher", "password_file": str(secrets_file)},
        airflow={"password": airflow_password},
    )
    metrics = Metrics()
    actions = every_kind(str(drift_report))
    # A careless caller puts secrets into a payload: they are still not mailed.
    careless = alert_action(
        "trigger_refused",
        key="careless",
        model="bikes",
        title=f"login failed with {airflow_password}",
        severity="critical",
        details={
            "error": f"401 for admin:{airflow_password}",
            "password": "plain-value-in-payload",
            "dsn": f"postgresql://watcher:{smtp_password}@db/metrics",
        },
    )
    enqueue(store, *actions, careless)

    caplog.set_level(logging.DEBUG)
    run_round(dispatcher(settings, store, metrics))
    received = server.wait_for(len(actions) + 1)
    assert {r.login for r in received} == {"watcher"}

    # And a failing login round, whose errors are logged and stored.
    bad = make_settings(
        server, tmp_path, smtp={"username": "watcher", "password": "Wrong-Pa55-0000"}
    )
    bad_store = StateStore(tmp_path / "bad.db")
    enqueue(bad_store, drift_alert("bikes", "b1"))
    run_round(dispatcher(bad, bad_store, metrics))
    [failed] = bad_store.outbox_items(status="pending")
    assert "refused the login" in failed["last_error"]
    bad_store.close()

    # The test server's own protocol log (mail.log) is aiosmtpd's, not watcher's.
    logs = "\n".join(
        f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.name != "mail.log"
    )
    assert "refused the login" in logs
    metrics_text = generate_latest(metrics.registry).decode()
    bodies = []
    for r in received:
        bodies.append(r.data.decode("utf-8", "replace"))
        for part in r.message.walk():
            if part.get_content_maintype() == "text":
                bodies.append(str(part.get_content()))
    stored = "\n".join(str(i) for i in store.outbox_items())
    haystacks = {"logs": logs, "metrics": metrics_text, "mail": "\n".join(bodies)}
    for where, text in haystacks.items():
        for secret in (
            smtp_password,
            airflow_password,
            "Wrong-Pa55-0000",
            "plain-value-in-payload",
        ):
            assert secret not in text, f"{secret!r} leaked into {where}"
    # The payload in the state file is what the caller wrote; only mails are scrubbed.
    assert airflow_password in stored
    careless_mail = next(r.message for r in received if "careless" in str(r.message["Message-ID"]))
    assert "********" in text_of(careless_mail)


def test_idle_dispatcher_probes_the_server_so_smtp_up_tells_the_truth(
    smtp_server_factory: Callable[..., SmtpServer],
    tmp_path: Path,
    store: StateStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = smtp_server_factory(security="starttls", users={"watcher": "Right-Pa55"})
    metrics = Metrics()
    good = make_settings(server, tmp_path, smtp={"username": "watcher", "password": "Right-Pa55"})
    d = MailDispatcher(good, store, metrics, probe_interval_seconds=0)
    run_round(d)
    assert metrics.registry.get_sample_value("watcher_smtp_up") == 1
    assert server.messages == []  # a probe sends nothing

    server.stop()
    with caplog.at_level(logging.WARNING, logger="watcher"):
        run_round(d)
        run_round(d)
    assert metrics.registry.get_sample_value("watcher_smtp_up") == 0
    # One line when the state changes, not one per probe.
    assert sum("does not take mail" in r.getMessage() for r in caplog.records) == 1

    server.start()
    run_round(d)
    assert metrics.registry.get_sample_value("watcher_smtp_up") == 1

    wrong = make_settings(server, tmp_path, smtp={"username": "watcher", "password": "Wrong-Pa55"})
    run_round(MailDispatcher(wrong, store, metrics, probe_interval_seconds=0))
    assert metrics.registry.get_sample_value("watcher_smtp_up") == 0


def test_grafana_links_point_at_provisioned_dashboards() -> None:
    """The uids mails link to are the ones dashboards/ provisions (and model-detail has `model`)."""
    folder = Path(__file__).parents[2] / "dashboards" / "grafana" / "dashboards"
    boards = {}
    for path in folder.glob("*.json"):
        board = json.loads(path.read_text(encoding="utf-8"))
        boards[board["uid"]] = [v["name"] for v in board.get("templating", {}).get("list", [])]
    assert GRAFANA_OVERVIEW_DASHBOARD in boards
    assert GRAFANA_OPERATIONS_DASHBOARD in boards
    assert "model" in boards[GRAFANA_MODEL_DASHBOARD]


def test_digest_per_recipient_list(
    smtp_server: SmtpServer, tmp_path: Path, store: StateStore
) -> None:
    settings = make_settings(
        smtp_server,
        tmp_path,
        models=("bikes", "taxis", "rides"),
        alerts={"digest_threshold": 2, "digest_window_seconds": 0},
    )
    settings.models["taxis"].recipients = ["taxi-team@example.org"]
    enqueue(
        store, *[drift_alert(m, f"b{i}") for i in range(3) for m in ("bikes", "taxis", "rides")]
    )
    run_round(dispatcher(settings, store, Metrics()))
    mails = smtp_server.wait_for(2)
    time.sleep(0.2)
    assert len(smtp_server.messages) == 2
    by_rcpt = {tuple(m.rcpt_tos): m.message for m in mails}
    assert subject_of(by_rcpt[("oncall@example.org",)]).endswith("6 alerts for 2 model(s)")
    assert subject_of(by_rcpt[("taxi-team@example.org",)]).endswith("3 alerts for 1 model(s)")
    assert "taxis" not in text_of(by_rcpt[("oncall@example.org",)])
