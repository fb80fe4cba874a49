"""The webhook channel against a real local HTTP server (http.server in a thread).

The daemon runs for real (`watcher run` in a subprocess where it is SIGKILLed); the
dispatcher alone where the test is about payloads and digests.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DaemonProcess
from support import drop, frame, wait_for, write_config
from webhook_support import Receiver

from watcher.alerts import alert_action
from watcher.alerts.webhook import WebhookDispatcher, build_webhook_workers
from watcher.config import Settings, load_config
from watcher.dev.localservices import free_port
from watcher.errors import ConfigError
from watcher.metrics import Metrics
from watcher.state import StateStore


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.stop()


def webhook_toml(url: str, **extra: Any) -> str:
    lines = ["[webhooks.oncall]", f'url = "{url}"']
    for key, value in extra.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n[alerts]\ndigest_window_seconds = 0\n"


def outbox(state_dir: Path, kind: str) -> list[dict[str, Any]]:
    if not (state_dir / "state.db").exists():
        return []
    conn = sqlite3.connect(state_dir / "state.db")
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM outbox WHERE kind = ? ORDER BY id", (kind,))
        return [dict(r) for r in rows]
    except sqlite3.OperationalError:  # the daemon is still creating its schema
        return []
    finally:
        conn.close()


def test_delivered_once_across_a_receiver_outage_and_a_sigkill(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Fast rounds: one try per round, the next round 0.2-0.4 s later.
    hook = webhook_toml(
        receiver.url,
        retry_attempts=1,
        retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=0.4,
        timeout_seconds=2,
    )
    cfg = write_config(tmp_path, extra_top=hook)
    state = tmp_path / "state"
    daemon = DaemonProcess(cfg, tmp_path / "daemon1.log")
    try:
        # The receiver is down; a rejected batch raises an alert for it.
        drop(tmp_path / "incoming", "bad.csv", frame(300, seed=5).drop(columns=["b"]))

        def failed_rounds() -> int:
            rows = outbox(state, "webhook")
            return int(rows[0]["attempts"]) if rows else 0

        wait_for(lambda: failed_rounds() >= 2, 60, what="two failed delivery rounds")
        [row] = outbox(state, "webhook")
        assert row["status"] == "pending"
        assert "ConnectError" in row["last_error"]
        daemon.kill()  # SIGKILL: no shutdown code runs
    finally:
        daemon.kill()

    receiver.start()
    daemon = DaemonProcess(cfg, tmp_path / "daemon2.log")
    try:
        wait_for(lambda: receiver.posts, 60, what="the webhook post after the restart")
        wait_for(lambda: outbox(state, "webhook")[0]["status"] == "done", 30, what="marked done")
        time.sleep(1.5)  # several more rounds: nothing is posted twice
    finally:
        assert daemon.stop() == 0
    [post] = receiver.posts
    assert post["path"] == "/hooks/watcher"
    assert post["headers"]["Content-Type"] == "application/json"
    [row] = outbox(state, "webhook")
    assert post["headers"]["Idempotency-Key"] == row["key"]
    body = post["body"]
    assert body["source"] == "watcher"
    assert body["kind"] == "batch_rejected"
    assert body["model"] == "m"
    assert body["severity"] in ("warning", "critical", "info")
    assert "bad.csv" in json.dumps(body["batch"])
    [alert] = outbox(state, "alert")  # the mail channel is off here: the alert is still pending
    assert row["key"] == f"webhook:oncall:{alert['key']}"


def test_a_4xx_is_a_dead_letter_carrying_the_receivers_message(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.status = 404
    receiver.answer = b"no_service: this webhook was deleted"
    receiver.start()
    cfg = write_config(tmp_path, extra_top=webhook_toml(receiver.url, retry_attempts=3))
    state = tmp_path / "state"
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        drop(tmp_path / "incoming", "bad.csv", frame(300, seed=5).drop(columns=["b"]))
        wait_for(
            lambda: [r for r in outbox(state, "webhook") if r["status"] == "dead"],
            60,
            what="a dead letter",
        )
        time.sleep(1.0)
    finally:
        assert daemon.stop() == 0
    [row] = outbox(state, "webhook")
    assert row["status"] == "dead"
    assert row["attempts"] == 1
    assert "HTTP 404: no_service: this webhook was deleted" in row["last_error"]
    assert len(receiver.posts) == 1  # a 4xx is not retried
    log = (tmp_path / "daemon.log").read_text()
    assert "parked as a dead letter" in log
    assert "no_service: this webhook was deleted" in log


# ---- the dispatcher alone: payload formats, per-model routing, digests --------------------


def _settings(tmp_path: Path, webhooks: dict[str, Any], **alerts: Any) -> Settings:
    models = {
        m: {
            "source": {"kind": "directory", "path": str(tmp_path / "in" / m)},
            "columns": {"numeric": ["x"]},
        }
        for m in ("bikes", "taxis")
    }
    return Settings(
        daemon={"state_dir": str(tmp_path / "state")},
        alerts={"digest_threshold": 100, "digest_window_seconds": 0, **alerts},
        webhooks=webhooks,
        models=models,
    )


def _alert(model: str, n: int) -> Any:
    return alert_action(
        "drift_persisting",
        key=f"drift:{model}:{n}",
        model=model,
        title=f"dataset drift in {n} consecutive batches",
        severity="warning",
        details={"streak": n, "drift_share": 0.75},
    )


def _enqueue(store: StateStore, *actions: Any) -> None:
    with store.transaction() as conn:
        for a in actions:
            StateStore.enqueue(conn, a)


def test_slack_and_json_payloads_and_per_model_routing(tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    settings = _settings(
        tmp_path,
        {
            "everything": {"url": receiver.url + "/json"},
            "bikes-chat": {"url": receiver.url + "/slack", "format": "slack", "models": ["bikes"]},
        },
    )
    store = StateStore(tmp_path / "state" / "state.db")
    metrics = Metrics()
    [d] = build_webhook_workers(settings, store, metrics)
    assert isinstance(d, WebhookDispatcher)
    asyncio.run(d.run_once())  # first round: the watermark starts here
    _enqueue(store, _alert("bikes", 3), _alert("taxis", 4))
    asyncio.run(d.run_once())
    asyncio.run(d.run_once())  # nothing twice

    by_path: dict[str, list[dict[str, Any]]] = {}
    for post in receiver.posts:
        by_path.setdefault(post["path"].rsplit("/", 1)[-1], []).append(post["body"])
    assert sorted(b["model"] for b in by_path["json"]) == ["bikes", "taxis"]
    [slack] = by_path["slack"]  # taxis is not routed to the bikes channel
    assert set(slack) == {"text", "blocks"}
    assert "bikes" in slack["text"]
    assert "dataset drift in 3 consecutive batches" in slack["text"]
    assert slack["blocks"][0]["text"]["type"] == "mrkdwn"
    assert "drift_share: 0.75" in slack["blocks"][0]["text"]["text"]
    sent = metrics.registry.get_sample_value
    assert sent("watcher_webhook_posts_total", {"webhook": "everything", "outcome": "sent"}) == 2
    assert sent("watcher_webhook_posts_total", {"webhook": "bikes-chat", "outcome": "sent"}) == 1
    assert store.pending_counts()["webhook"] == 0
    store.close()


def test_a_burst_becomes_one_digest_post(tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    settings = _settings(
        tmp_path,
        {"everything": {"url": receiver.url}},
        digest_threshold=3,
        digest_window_seconds=0.3,
    )
    store = StateStore(tmp_path / "state" / "state.db")
    metrics = Metrics()
    d = WebhookDispatcher(settings, store, metrics)
    asyncio.run(d.run_once())
    _enqueue(store, *[_alert(m, n) for n in range(3, 8) for m in ("bikes", "taxis")])
    asyncio.run(d.run_once())  # a burst began: held one window
    assert receiver.posts == []
    time.sleep(0.35)
    asyncio.run(d.run_once())
    [post] = receiver.posts
    body = post["body"]
    assert body["kind"] == "digest"
    assert len(body["alerts"]) == 10
    assert {a["model"] for a in body["alerts"]} == {"bikes", "taxis"}
    assert post["headers"]["Idempotency-Key"].startswith("webhook:everything:digest:")
    time.sleep(0.35)
    asyncio.run(d.run_once())
    assert len(receiver.posts) == 1
    store.close()


def test_a_webhook_needs_a_valid_url(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, extra_top='[webhooks.oncall]\nurl = "hooks.example.com/x"\n')
    with pytest.raises(ConfigError, match="webhook url must start with http"):
        load_config(cfg)
    cfg = write_config(tmp_path, extra_top='[webhooks.oncall]\nformat = "slack"\n')
    with pytest.raises(ConfigError, match="needs `url`"):
        load_config(cfg)
    cfg = write_config(
        tmp_path, extra_top='[webhooks.oncall]\nurl = "http://x/y"\nmodels = ["nope"]\n'
    )
    with pytest.raises(ConfigError, match="unknown model"):
        load_config(cfg)
