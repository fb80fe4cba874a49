"""The mail dispatcher: delivers alert actions from the outbox, at least once, without floods.

Each round (a `PeriodicWorker` named "mail-dispatcher"):

1. **Reminders.** An open incident (`StateStore.open_incidents`) whose last mail is older
   than ``alerts.reminder_interval_seconds`` gets a "reminder" alert, keyed by the
   incident, its open time and the reminder number, unless a mail about it is still waiting.
2. **Digest.** When more than ``alerts.digest_threshold`` alerts are due (counting the mails
   sent in the last ``alerts.digest_window_seconds``), the due alerts are held until the
   oldest has waited one window, so a burst collects, and then folded into one digest per
   recipient list. The digest is written to the outbox and its members marked done in one
   transaction: each alert is mailed exactly once, alone or in a digest.
3. **Delivery.** Each due mail is sent with its deterministic Message-ID. Transient SMTP
   errors are retried in place with stamina (bounded by ``smtp.retry_attempts`` and
   ``smtp.retry_timeout_seconds``), then the mail is rescheduled with jittered exponential
   backoff (``smtp.retry_backoff_seconds`` doubling up to ``smtp.retry_backoff_max_seconds``)
   and the round stops (the server is down; the rest waits). After
   ``smtp.max_delivery_rounds`` rounds, or when the server refuses the message itself (5xx),
   the mail is parked as a dead letter: `watcher_dead_letters_total{kind="alert"}` and an
   error log line. Configuration errors (login refused, untrusted certificate) are not
   retried in place but rescheduled: the message is fine, the settings are not.

While no mail is due, the server is probed (connect, TLS, login, NOOP) once a minute, so
`watcher_smtp_up` says whether mail would work before an alert needs it.

A sent mail touches its incident (`StateStore.touch_incident`), which restarts the
reminder clock. Right before its SMTP transaction a mail is marked in flight in a commit of
its own (`StateStore.mark_sending`), and done right after: a crash in between re-sends that
one mail on restart, first, alone (never folded into a digest, which would reach people a
second time under another Message-ID) and with the same Message-ID. A mail whose drift
report is still being rendered waits for it until ``report_wait_until`` (see
`watcher.reports`).

The state must be writable for any of this: when the mark before sending fails, nothing
is sent; when marking a sent mail done fails (disk full), the mail is remembered as sent
in memory and no further mail goes out until the state takes writes again
(`watcher_state_writable` 0, /readyz 503). A mail is never sent again because its
delivery could not be recorded.

After an outage mails go out in the order they were enqueued: mails behind one that is
backing off wait for it.

Size: reminders, digests and delivery share one round over the outbox and one SMTP
session; what a mail says is `alerts.compose`'s, when it is retried `state.backoff`'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import stamina

from watcher.alerts import Severity, alert_action
from watcher.alerts.compose import compose
from watcher.alerts.kinds import KINDS, SEVERITY_ORDER
from watcher.alerts.render import format_duration, label
from watcher.alerts.smtp import MessageRefused, SmtpSender
from watcher.config import Settings
from watcher.errors import MailError
from watcher.metrics import Metrics
from watcher.periodic import PeriodicWorker
from watcher.secrets import Scrubber, secret_values
from watcher.state import DB_ERRORS, Action, OutboxItem, StateStore, backoff

log = logging.getLogger(__name__)


def _severity(value: object) -> Severity:
    return value if value in ("critical", "warning", "info") else "warning"


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, MailError) and exc.transient


class MailDispatcher:
    """Delivers due outbox items of kind "alert" by email. See the module docstring."""

    name = "mail-dispatcher"

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        metrics: Metrics,
        *,
        interval_seconds: float | None = None,
        backoff_initial_seconds: float = 30.0,
        backoff_max_seconds: float = 1800.0,
        probe_interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.interval_seconds = (
            interval_seconds
            if interval_seconds is not None
            else settings.daemon.poll_interval_seconds
        )
        self.backoff_initial = backoff_initial_seconds
        self.backoff_max = backoff_max_seconds
        self.clock = clock
        self.sender = SmtpSender(settings.smtp)
        self._scrub = Scrubber(secret_values(settings))
        # When single mails went out recently: a burst counts them against the threshold.
        self._sent_at: deque[float] = deque()
        # While no mail is due, the server is probed this often so watcher_smtp_up is true.
        self.probe_interval = probe_interval_seconds
        self._last_contact = float("-inf")
        self._up: bool | None = None
        # Mails handed to the server whose delivery the state could not record (disk full):
        # never sent again by this process; recorded as soon as the state takes writes.
        self._unrecorded: dict[int, OutboxItem] = {}
        self._state_broken = False  # the last state write failed (logged once)

    def _set_up(self, up: bool, why: str = "") -> None:
        self._last_contact = self.clock()
        self.metrics.smtp_up.set(1 if up else 0)
        if up and self._up is False:
            log.info(
                "SMTP server %s:%s works again", self.settings.smtp.host, self.settings.smtp.port
            )
        elif not up and self._up is not False:
            log.warning(
                "SMTP server %s:%s does not take mail: %s",
                self.settings.smtp.host,
                self.settings.smtp.port,
                why,
            )
        self._up = up

    async def _probe(self) -> None:
        try:
            await self.sender.probe()
        except MailError as exc:
            self._set_up(False, self._scrub(str(exc)))
        else:
            self._set_up(True)

    async def run_once(self) -> None:
        now = self.clock()
        if not self._record_unrecorded():
            return  # the state takes no writes: sending now could only repeat mails
        self._enqueue_reminders(now)
        due = [i for i in self.store.due_actions("alert", now, limit=1000) if _ready(i, now)]
        waiting = self.store.earliest_backing_off("alert", now)
        if waiting is not None:
            # Keep the order: nothing enqueued after a mail that waits for its next try.
            due = [i for i in due if i.id < waiting]
        # A mail whose delivery began before a crash goes first and alone, never folded into
        # a digest: it may have reached people already, under its own Message-ID.
        inflight = [i for i in due if i.sending_at is not None]
        planned = self._plan([i for i in due if i.sending_at is None], now)
        for item in [*inflight, *planned]:
            if not await self._deliver(item):
                break  # the server is down or misconfigured: the rest waits for a later round
        if now - self._last_contact >= self.probe_interval:
            await self._probe()
        self.metrics.outbox_pending_now({"alert": self.store.pending_counts()["alert"]})

    async def close(self) -> None:
        return  # one SMTP connection per mail: nothing stays open between rounds

    # ---- reminders ------------------------------------------------------------------------

    def _enqueue_reminders(self, now: float) -> None:
        interval = self.settings.alerts.reminder_interval_seconds
        incidents = self.store.open_incidents()
        if not incidents:
            return
        waiting = self._incidents_with_pending_mail()
        for inc in incidents:
            key = str(inc["key"])
            opened = float(inc["opened_at"])
            last = inc["last_notified_at"]
            if key in waiting or now - float(last if last is not None else opened) < interval:
                continue
            number = max(1, int((now - opened) // interval))
            kind = str(inc["kind"])
            what = KINDS[kind].headline if kind in KINDS else label(kind)
            details: dict[str, Any] = dict(inc["details"] or {})
            details |= {
                "reminder": number,
                "incident_kind": what,
                "opened_at": opened,
                "open_seconds": round(now - opened),
                "last_notified_at": last,
            }
            action = alert_action(
                "reminder",
                # The open time tells a reopened incident's reminders from the last episode's.
                key=f"reminder:{key}:{opened:.3f}:{number}",
                model=inc["model"],
                title=f"still open after {format_duration(now - opened)}: {what}",
                severity=_severity(details.get("severity")),
                details=details,
                incident=key,
            )
            with self.store.transaction() as conn:
                if StateStore.enqueue(conn, action, not_before=now):
                    log.info("reminder %d for open incident %s enqueued", number, key)

    def _incidents_with_pending_mail(self) -> set[str]:
        waiting: set[str] = set()
        for row in self.store.outbox_items(status="pending"):
            if row["kind"] != "alert":
                continue
            payload = row["payload"]
            waiting.add(str(payload.get("incident")))
            for member in payload.get("members") or []:
                waiting.add(str(member["payload"].get("incident")))
        return waiting

    # ---- digest -----------------------------------------------------------------------------

    def _plan(self, due: list[OutboxItem], now: float) -> list[OutboxItem]:
        """The mails to send this round: single alerts, or digests that replace them."""
        cfg = self.settings.alerts
        while self._sent_at and self._sent_at[0] < now - cfg.digest_window_seconds:
            self._sent_at.popleft()
        singles = [i for i in due if i.payload.get("alert") != "digest"]
        digests = [i for i in due if i.payload.get("alert") == "digest"]
        if len(singles) < 2 or len(singles) + len(self._sent_at) <= cfg.digest_threshold:
            return due
        if now - min(i.created_at for i in singles) < cfg.digest_window_seconds:
            return digests  # a burst is building up: let it collect for one window
        groups: dict[tuple[str, ...], list[OutboxItem]] = {}
        for item in singles:
            groups.setdefault(tuple(self.settings.recipients(item.model)), []).append(item)
        planned = list(digests)
        for recipients, members in groups.items():
            if len(members) == 1:
                planned.append(members[0])
                continue
            planned.append(self._fold(members, list(recipients), now))
        return planned

    def _fold(self, members: list[OutboxItem], recipients: list[str], now: float) -> OutboxItem:
        keys = sorted(m.key for m in members)
        key = "digest:" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]
        severities = [str(m.payload.get("severity")) for m in members]
        severity = min(severities, key=lambda s: SEVERITY_ORDER.get(s, 9))
        payload = {
            "alert": "digest",
            "severity": severity,
            "model": None,
            "title": f"{len(members)} alerts",
            "recipients": recipients,
            "incident": None,
            "members": [
                {"key": m.key, "created_at": m.created_at, "payload": m.payload} for m in members
            ],
        }
        with self.store.transaction() as conn:
            StateStore.enqueue(conn, Action("alert", key, None, payload), not_before=now)
            StateStore.complete_actions(conn, [m.id for m in members])
        for m in members:
            self.metrics.alert_mailed(str(m.payload.get("alert")), "digested")
        log.info("folded %d alerts for %s into digest %s", len(members), ", ".join(recipients), key)
        item = next(i for i in self.store.due_actions("alert", now, limit=1000) if i.key == key)
        return item

    # ---- delivery ---------------------------------------------------------------------------

    def _recipients(self, item: OutboxItem) -> list[str]:
        if item.payload.get("alert") == "digest":
            return list(item.payload.get("recipients") or [])
        return self.settings.recipients(item.model)

    async def _deliver(self, item: OutboxItem) -> bool:
        """Send one mail. False when the round should stop (server-level failure)."""
        kind = str(item.payload.get("alert"))
        recipients = self._recipients(item)
        if not recipients:
            self._dead(
                item,
                kind,
                f"no recipients for model {item.model!r}: set smtp.recipients or "
                f"models.{item.model}.recipients",
            )
            return True
        try:
            message = await asyncio.to_thread(compose, item, self.settings, recipients)
        except Exception as exc:
            # A payload that cannot be rendered will not render next round either; park it
            # rather than block every mail behind it.
            log.exception("cannot compose alert %s", item.key)
            self._dead(item, kind, f"cannot compose the mail: {exc!r}")
            return True

        if item.sending_at is not None:
            self.metrics.alert_mailed(kind, "redelivered")
            log.warning(
                "alert %s was being mailed when watcher stopped; sending it again with the "
                "same Message-ID (a mail client shows one copy)",
                item.key,
                extra={"model": item.model},
            )
        # Its own durable step right before the SMTP transaction: a crash from here to
        # mark_done can repeat this one mail, never another.
        try:
            if not self.store.hold_claim(item.id):
                # Claimed with a long list this round; the claim ran out before its turn
                # and another replica may be mailing it now. Sending it too would repeat it.
                log.info(
                    "claim on alert %s ran out before its turn; left to the replica "
                    "that holds it now",
                    item.key,
                    extra={"model": item.model},
                )
                return True
            self.store.mark_sending(item.id)
        except DB_ERRORS as exc:
            self._state_failed(item, exc, sent=False)
            return False
        self._state_works()

        cfg = self.settings.smtp
        try:
            async for attempt in stamina.retry_context(
                on=_is_transient,
                attempts=cfg.retry_attempts,
                timeout=cfg.retry_timeout_seconds,
            ):
                with attempt:
                    await self.sender.send(message, recipients)
        except MessageRefused as exc:
            self._set_up(True)  # the server answered; it refuses this message only
            self._dead(item, kind, str(exc))
            return True
        except MailError as exc:
            self._set_up(False, self._scrub(str(exc)))
            self._failed_round(item, kind, exc)
            return False

        now = self.clock()
        self._set_up(True)
        try:
            self.store.mark_done(item.id)
        except DB_ERRORS as exc:
            self._unrecorded[item.id] = item
            self._state_failed(item, exc, sent=True)
            return False
        self.metrics.alert_mailed(kind, "sent")
        if kind != "digest":
            self._sent_at.append(now)
        members = item.payload.get("members") or [{"payload": item.payload}]
        for incident in {m["payload"].get("incident") for m in members} - {None}:
            self.store.touch_incident(str(incident), now)
        log.info(
            "mailed %s %s (%s) to %d recipient(s)",
            kind,
            item.key,
            message["Message-ID"],
            len(recipients),
            extra={"model": item.model},
        )
        return True

    def _state_failed(self, item: OutboxItem, exc: Exception, *, sent: bool) -> None:
        self.metrics.problem(item.model or "", "state_write")
        if self._state_broken and not sent:
            return  # said already; /readyz and watcher_state_writable keep saying it
        self._state_broken = True
        log.error(
            "the state store takes no writes (%s): %s; no mail is sent until it does "
            "(free disk space, or bring the database back: %s)",
            exc,
            f"mail {item.key} was sent and will not be sent again"
            if sent
            else f"mail {item.key} was not sent",
            self.store.target.where,
            extra={"model": item.model},
        )

    def _record_unrecorded(self) -> bool:
        """Record sent-but-unrecorded mails as done. False while the state refuses writes."""
        for item_id in list(self._unrecorded):
            try:
                self.store.mark_done(item_id)
            except DB_ERRORS:
                return False
            item = self._unrecorded.pop(item_id)
            log.info("recorded mail %s as sent now that the state takes writes", item.key)
        return True

    def _state_works(self) -> None:
        if self._state_broken:
            self._state_broken = False
            log.info("the state store takes writes again; mail delivery goes on")

    def _failed_round(self, item: OutboxItem, kind: str, exc: MailError) -> None:
        rounds = item.attempts + 1
        error = self._scrub(str(exc))
        if rounds >= self.settings.smtp.max_delivery_rounds:
            self._dead(item, kind, f"gave up after {rounds} delivery rounds: {error}")
            return
        delay = backoff(rounds, self.backoff_initial, self.backoff_max)
        self.store.reschedule(item.id, self.clock() + delay, error)
        self.metrics.alert_mailed(kind, "retry")
        log.warning(
            "could not mail %s %s (round %d of %d), next try in %.0fs: %s",
            kind,
            item.key,
            rounds,
            self.settings.smtp.max_delivery_rounds,
            delay,
            error,
            extra={"model": item.model},
        )

    def _dead(self, item: OutboxItem, kind: str, error: str) -> None:
        error = self._scrub(error)
        self.store.mark_dead(item.id, error)
        self.metrics.dead_letter("alert")
        self.metrics.alert_mailed(kind, "dead")
        log.error(
            "alert %s (%s) parked as a dead letter: %s; it will not be mailed "
            "(the outbox keeps it with status 'dead')",
            item.key,
            kind,
            error,
            extra={"model": item.model},
        )


def _ready(item: OutboxItem, now: float) -> bool:
    """False while the mail waits for its drift report (rendered in the background), for
    at most until `report_wait_until`; then it goes out with a link instead."""
    path = item.payload.get("report_path")
    until = item.payload.get("report_wait_until")
    if not path or until is None or now >= float(until):
        return True
    return Path(str(path)).exists()


def build_mail_workers(
    settings: Settings, store: StateStore, metrics: Metrics
) -> list[PeriodicWorker]:
    """The workers that deliver alert mails; the daemon starts them when smtp.enabled."""
    metrics.outbox_pending_now({"alert": store.pending_counts()["alert"]})
    return [
        MailDispatcher(
            settings,
            store,
            metrics,
            backoff_initial_seconds=settings.smtp.retry_backoff_seconds,
            backoff_max_seconds=settings.smtp.retry_backoff_max_seconds,
        )
    ]
