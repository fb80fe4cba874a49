"""Alert mails through the whole daemon: `watcher run` as a subprocess, a real aiosmtpd
server that goes down and up, and SIGKILL. The dispatcher, composer and transport have
tests of their own (test_alerts_mail.py, test_alerts_smtp.py); these check what survives
an SMTP outage and a killed daemon, and what a real daemon process lets out of itself.

Two drifted batches (policy.consecutive = 2) open the drift incident: its
"drift_persisting" alert is written to the outbox in the second batch's transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from fixtures_smtp import SmtpServer
from harness import DaemonProcess
from prometheus_client.parser import text_string_to_metric_families
from support import drop, frame, wait_for, write_config

from watcher.alerts.compose import message_id
from watcher.config import toml_value
from watcher.dev.localservices import free_port
from watcher.state import StateStore

SCORED_TIMEOUT = 90.0  # start, two batches scored and an evidently report, on a busy CI
DRIFT_KEY = "drift:m:opened:d2.parquet"  # the outbox key of the drift alert


# ---- helpers ---------------------------------------------------------------------------------


def mail_toml(server: SmtpServer, **smtp: Any) -> str:
    """[smtp] for `server` with quick redelivery, and [alerts] without digest delay."""
    cfg = server.smtp_settings(
        retry_attempts=1,  # in-place retries only slow an outage down; the rounds retry
        retry_backoff_seconds=0.3,
        retry_backoff_max_seconds=1.0,
        max_delivery_rounds=1000,  # an outage of this test never makes a dead letter
        **smtp,
    )
    return (
        "[smtp]\n"
        + "".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.items())
        + "[alerts]\ndigest_window_seconds = 0\n"
    )


@contextmanager
def daemon(cfg: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(cfg, log, env)
    try:
        yield proc
    finally:
        if proc.alive():
            proc.kill()


@contextmanager
def store_at(tmp: Path) -> Iterator[StateStore]:
    store = StateStore(tmp / "state" / "state.db")
    try:
        yield store
    finally:
        store.close()


def alerts_in_outbox(tmp: Path) -> list[dict[str, Any]]:
    if not (tmp / "state" / "state.db").exists():
        return []
    with store_at(tmp) as store:
        return [i for i in store.outbox_items("m") if i["kind"] == "alert"]


def metrics_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return ""  # not listening yet


def sample(port: int, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics_text(port)):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def drop_drift_streak(tmp: Path, seed: int) -> None:
    """Two drifted batches: the second one opens the drift incident."""
    drop(tmp / "incoming", "d1.parquet", frame(300, seed=seed, shift=2.0))
    drop(tmp / "incoming", "d2.parquet", frame(300, seed=seed + 1, shift=2.0))


def drift_alert_pending(tmp: Path) -> dict[str, Any] | None:
    """The drift alert, once the dispatcher has failed to deliver it at least once."""
    for item in alerts_in_outbox(tmp):
        if item["payload"]["alert"] == "drift_persisting" and item["attempts"] >= 1:
            assert item["status"] == "pending", item
            return item
    return None


def ledger(tmp: Path) -> list[tuple[Any, ...]]:
    """Every batch and decision row: a batch scored again would change or add rows."""
    with closing(sqlite3.connect(tmp / "state" / "state.db")) as db:
        batches = db.execute(
            "SELECT 'batch', seq, batch_id, status, finished_at FROM batches ORDER BY seq"
        ).fetchall()
        decisions = db.execute(
            "SELECT 'decision', id, batch_id, outcome, at FROM decisions ORDER BY id"
        ).fetchall()
    return batches + decisions


def assert_one_drift_mail(server: SmtpServer) -> None:
    """Exactly one mail arrived, and it is the drift alert of the d2 batch."""
    mails = server.parsed()
    assert len(mails) == 1, [str(m["Subject"]) for m in mails]
    assert str(mails[0]["Subject"]).startswith(
        "[watcher] WARNING m: dataset drift in 2 consecutive batches"
    )
    assert mails[0]["Message-ID"] == message_id(DRIFT_KEY, "watcher@example.org")
    assert mails[0]["X-Watcher-Alert"] == "drift_persisting"


# ---- 1: SMTP down while drift happens --------------------------------------------------------


def test_smtp_down_during_drift_then_up_delivers_the_alert_exactly_once(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    smtp_server.stop()
    port = free_port()
    cfg = write_config(tmp_path, metrics_port=port, extra_top=mail_toml(smtp_server))
    with daemon(cfg, tmp_path / "daemon.log") as proc:
        drop_drift_streak(tmp_path, seed=20)
        pending = wait_for(
            lambda: drift_alert_pending(tmp_path),
            SCORED_TIMEOUT,
            interval=0.2,
            what="the drift alert in the outbox after a failed delivery",
        )
        assert pending["key"] == DRIFT_KEY
        assert sample(port, "watcher_smtp_up") == 0
        assert (sample(port, "watcher_outbox_pending", kind="alert") or 0) >= 1
        assert (
            sample(port, "watcher_alerts_total", kind="drift_persisting", outcome="retry") or 0
        ) >= 1

        smtp_server.start()
        # Within seconds: smtp.retry_backoff_max_seconds = 1 (the default backoff would
        # next look after 15-30 s).
        smtp_server.wait_for(1, timeout=10)
        wait_for(lambda: sample(port, "watcher_smtp_up") == 1, 10, what="watcher_smtp_up 1")
        # More dispatcher rounds (0.1 s each) must not send it again.
        time.sleep(1.5)
        assert proc.stop() == 0

    assert_one_drift_mail(smtp_server)
    [item] = [i for i in alerts_in_outbox(tmp_path) if i["payload"]["alert"] == "drift_persisting"]
    assert item["status"] == "done"
    assert item["attempts"] >= 2  # failed at least once, then delivered
    log = (tmp_path / "daemon.log").read_text()
    assert "does not take mail" in log
    assert "works again" in log


# ---- 2: SIGKILL between the outbox write and the send ----------------------------------------


def test_sigkill_while_the_alert_waits_then_restart_mails_it_once(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    # With the server down the alert stays in the outbox, written and not sent, as long as
    # the test likes: the daemon is killed in exactly the window this test is about.
    smtp_server.stop()
    port = free_port()
    cfg = write_config(tmp_path, metrics_port=port, extra_top=mail_toml(smtp_server))
    with daemon(cfg, tmp_path / "daemon.log") as first:
        drop_drift_streak(tmp_path, seed=30)
        wait_for(
            lambda: drift_alert_pending(tmp_path),
            SCORED_TIMEOUT,
            interval=0.2,
            what="the drift alert in the outbox after a failed delivery",
        )
        first.kill()
    before = ledger(tmp_path)
    assert [(r[2], r[3]) for r in before if r[0] == "batch"] == [
        ("d1.parquet", "scored"),
        ("d2.parquet", "scored"),
    ]
    assert [r[3] for r in before if r[0] == "decision"] == ["streak_building", "dry_run"]
    assert smtp_server.messages == []

    smtp_server.start()
    with daemon(cfg, tmp_path / "daemon.log") as second:
        smtp_server.wait_for(1, timeout=SCORED_TIMEOUT)
        scored = sample(port, "watcher_batches_total", model="m", outcome="scored")
        time.sleep(1.5)  # more dispatcher rounds (0.1 s each): no second copy
        assert second.stop() == 0

    assert_one_drift_mail(smtp_server)
    assert scored == 0  # the restarted daemon scored nothing
    assert ledger(tmp_path) == before  # same rows, same finish times: nothing re-scored
    [item] = alerts_in_outbox(tmp_path)
    assert (item["key"], item["status"]) == (DRIFT_KEY, "done")
    assert sorted(p.name for p in (tmp_path / "incoming" / "processed").iterdir()) == [
        "d1.parquet",
        "d2.parquet",
    ]


# ---- 3: secrets from the environment ---------------------------------------------------------


def test_secrets_from_the_environment_stay_out_of_logs_metrics_and_mails(
    tmp_path: Path, smtp_server_factory: Callable[..., SmtpServer]
) -> None:
    smtp_password = "Smtp-Env-Pa55-3c1e"
    airflow_password = "Airflow-Env-Pa55-9d2a"  # Airflow is disabled; it is still a secret
    # At first the server wants another password: the refused logins are the error path
    # where a password is most likely to be echoed into a log line or a stored error.
    server = smtp_server_factory(security="starttls", users={"watcher": "Other-Pa55-0000"})
    port = free_port()
    cfg = write_config(tmp_path, metrics_port=port, extra_top=mail_toml(server, username="watcher"))
    cfg.write_text(cfg.read_text().replace("[daemon]\n", '[daemon]\nlog_format = "json"\n', 1))
    env = {"WATCHER_SMTP__PASSWORD": smtp_password, "WATCHER_AIRFLOW__PASSWORD": airflow_password}
    log = tmp_path / "daemon.log"
    with daemon(cfg, log, env) as proc:
        drop_drift_streak(tmp_path, seed=40)
        drop(tmp_path / "incoming", "bad.csv", frame(50, seed=42).drop(columns="a"))
        # Both alerts wait; mails keep their order, so the second waits behind the first,
        # which is refused at every round.
        wait_for(
            lambda: (
                len(alerts := alerts_in_outbox(tmp_path)) == 2
                and sum(i["attempts"] for i in alerts) >= 2
            ),
            SCORED_TIMEOUT,
            interval=0.2,
            what="the drift and rejection alerts waiting, refused at login twice",
        )
        assert server.messages == []
        server.users["watcher"] = smtp_password  # the server now takes the env password
        mails = server.wait_for(2, timeout=30)
        metrics = metrics_text(port)
        assert proc.stop() == 0

    assert server.failed_logins >= 2
    assert {m.login for m in mails} == {"watcher"}  # logged in with the env password
    assert sorted(str(m.message["X-Watcher-Alert"]) for m in mails) == [
        "batch_rejected",
        "drift_persisting",
    ]
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(e["level"] == "warning" and "does not take mail" in e["msg"] for e in entries), (
        "the refused login was not logged"
    )
    texts = {"log": log.read_text(), "metrics": metrics}
    for i, mail in enumerate(mails):
        texts[f"mail {i} (raw)"] = mail.data.decode(errors="replace")
        for part in mail.message.walk():
            if not part.is_multipart():
                content = part.get_content()
                texts[f"mail {i} {part.get_content_type()}"] = (
                    content if isinstance(content, str) else content.decode(errors="replace")
                )
    texts["outbox"] = json.dumps(alerts_in_outbox(tmp_path))
    assert "watcher_smtp_up 1.0" in metrics
    for where, text in texts.items():
        for secret in (smtp_password, airflow_password):
            assert secret not in text, f"{secret!r} leaked into {where}"
