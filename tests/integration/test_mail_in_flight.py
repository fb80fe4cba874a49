"""The mail window is one mail wide, and a mail waits (a bounded time) for its drift report.

Real SMTP (aiosmtpd) and a real state file; the crash is the state a kill -9 leaves behind
between `mark_sending` and `mark_done` (the chaos test in test_chaos.py makes real ones).
"""

from __future__ import annotations

import time
from pathlib import Path

from fixtures_smtp import SmtpServer
from test_alerts_mail import dispatcher, drift_alert, enqueue, make_settings, run_round

from watcher.alerts.compose import message_id
from watcher.metrics import Metrics
from watcher.state import StateStore


def test_each_mail_is_marked_in_flight_before_smtp_and_cleared_after(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    settings = make_settings(smtp_server, tmp_path)
    store = StateStore(tmp_path / "state.db")
    seen: list[tuple[str, float | None]] = []
    original = store.mark_sending

    def spy(item_id: int) -> None:
        original(item_id)
        [row] = [r for r in store.outbox_items() if r["id"] == item_id]
        seen.append((row["key"], row["sending_at"]))
        assert smtp_server.messages == [] or len(smtp_server.messages) == len(seen) - 1

    store.mark_sending = spy  # type: ignore[method-assign]
    try:
        enqueue(store, drift_alert("bikes", "b1"), drift_alert("bikes", "b2"))
        run_round(dispatcher(settings, store, Metrics()))
        assert [k for k, at in seen if at is not None] == [
            "drift:bikes:opened:b1",
            "drift:bikes:opened:b2",
        ]
        assert len(smtp_server.wait_for(2)) == 2
        assert all(r["sending_at"] is None for r in store.outbox_items())
        assert {r["status"] for r in store.outbox_items()} == {"done"}
    finally:
        store.close()


def test_a_mail_in_flight_at_a_crash_goes_again_first_alone_same_message_id(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    # A burst that would be folded into a digest, one of whose mails was in flight when the
    # daemon died: that one goes alone under its own Message-ID, the rest as a digest.
    settings = make_settings(smtp_server, tmp_path, alerts={"digest_threshold": 2})
    store = StateStore(tmp_path / "state.db")
    metrics = Metrics()
    try:
        enqueue(store, *(drift_alert("bikes", f"b{i}") for i in range(4)))
        first = store.due_actions("alert", time.time())[0]
        store.mark_sending(first.id)  # ... and then kill -9
        run_round(dispatcher(settings, store, metrics))
        mails = smtp_server.wait_for(2)
        ids = [str(m.message["Message-ID"]) for m in mails]
        assert ids[0] == message_id(first.key, settings.smtp.sender)
        assert "digest" in ids[1]
        assert len(mails) == 2
        assert (
            metrics.registry.get_sample_value(
                "watcher_alerts_total", {"kind": "drift_persisting", "outcome": "redelivered"}
            )
            == 1
        )
        assert {r["status"] for r in store.outbox_items()} == {"done"}
    finally:
        store.close()


def test_a_mail_waits_for_its_report_then_links_it(smtp_server: SmtpServer, tmp_path: Path) -> None:
    settings = make_settings(smtp_server, tmp_path)
    store = StateStore(tmp_path / "state.db")
    report = tmp_path / "reports" / "bikes" / "b1.html"
    try:
        action = drift_alert("bikes", "b1", str(report))
        action.payload["report_wait_until"] = time.time() + 0.6
        enqueue(store, action)
        d = dispatcher(settings, store, Metrics())
        run_round(d)
        assert smtp_server.messages == []  # waiting for the report
        time.sleep(0.7)
        run_round(d)
        [mail] = smtp_server.wait_for(1)
        text = mail.message.get_body(("plain",))
        assert text is not None
        assert "not ready" in text.get_content()
        assert report.resolve().as_uri() in text.get_content()
    finally:
        store.close()
