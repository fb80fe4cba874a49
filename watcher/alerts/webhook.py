"""The webhook channel: every alert the mail channel gets, POSTed as JSON, at least once.

Each round (a `PeriodicWorker` named "webhook-dispatcher"):

1. **Fan-out.** Alert actions written to the outbox since the last round (whatever their
   mail status: the mail channel may be disabled, or have sent them already) are copied
   into one "webhook" action per configured webhook whose `models` match, keyed
   ``webhook:NAME:ALERT_KEY``; the copy and the advance of the fan-out watermark are one
   transaction, so each alert reaches each webhook exactly once into the outbox. Mail
   digests are not copied: their members already were. On the very first round only
   alerts still pending are copied, so enabling a webhook does not replay history.
2. **Digest.** Per webhook, as for mail: more than ``alerts.digest_threshold`` due alerts
   (counting those posted in the last ``alerts.digest_window_seconds``) wait one window and
   are folded into one digest post, written and its members marked done in one transaction.
3. **Delivery.** Each due post carries ``Idempotency-Key: <outbox key>`` so a receiver
   can drop the duplicate a crash between its 2xx and our commit would cause. Connection
   errors, timeouts, 5xx and 429 are retried in place with stamina (bounded by
   ``retry_attempts`` and ``retry_timeout_seconds``), then rescheduled with jittered
   exponential backoff; after ``max_delivery_rounds`` rounds, or at once on any other 4xx,
   the post is a dead letter whose error holds the receiver's answer.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx
import stamina

from watcher import __version__
from watcher.config import Settings, WebhookConfig
from watcher.errors import WatcherError
from watcher.metrics import Metrics
from watcher.periodic import PeriodicWorker
from watcher.state import Action, OutboxItem, StateStore, backoff

log = logging.getLogger(__name__)

_FANOUT_WATERMARK = "webhook:fanout"
_EMOJI = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}
_SHOWN_ANSWER = 500  # characters of a receiver's error answer kept in the dead letter


class WebhookError(WatcherError):
    """A webhook post failed. `transient` errors are worth another try."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, WebhookError) and exc.transient


# ---- payloads -------------------------------------------------------------------------------


def _alert_document(key: str, created_at: float, alert: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": key,
        "kind": alert.get("alert"),
        "severity": alert.get("severity"),
        "model": alert.get("model"),
        "title": alert.get("title"),
        "created_at": created_at,
        "incident": alert.get("incident"),
        "details": alert.get("details") or {},
        "features": alert.get("features") or [],
        "batch": alert.get("batch"),
        "run": alert.get("run"),
    }


def json_payload(item: OutboxItem) -> dict[str, Any]:
    """watcher's own document: one alert, or a digest with its alerts in order."""
    body: dict[str, Any] = {"source": "watcher", "version": __version__, "key": item.key}
    members = item.payload.get("members")
    if members is not None:
        alerts = [_alert_document(m["key"], m["created_at"], m["alert"]) for m in members]
        return body | {"kind": "digest", "severity": item.payload["severity"], "alerts": alerts}
    return body | _alert_document(item.key, item.created_at, item.payload["alert"])


def _line(alert: dict[str, Any]) -> str:
    model = f"*{alert['model']}*: " if alert.get("model") else ""
    return f"{_EMOJI.get(str(alert.get('severity')), '')} {model}{alert.get('title')}".strip()


def slack_payload(item: OutboxItem) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (notifications) and mrkdwn `blocks`."""
    members = item.payload.get("members")
    alerts = [m["alert"] for m in members] if members is not None else [item.payload["alert"]]
    if members is not None:
        text = f"watcher: {len(alerts)} alerts"
        lines = [_line(a) for a in alerts]
    else:
        alert = alerts[0]
        text = f"watcher [{alert.get('severity')}] " + _line(alert).split(" ", 1)[-1]
        lines = [_line(alert)]
        details = alert.get("details") or {}
        lines += [f"• {k}: {v}" for k, v in details.items() if isinstance(v, str | int | float)]
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}],
    }


# ---- dispatcher -----------------------------------------------------------------------------


class WebhookDispatcher:
    """Fans alerts out to the configured webhooks and delivers them. See the module doc."""

    name = "webhook-dispatcher"

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        metrics: Metrics,
        *,
        interval_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.interval_seconds = (
            interval_seconds
            if interval_seconds is not None
            else settings.daemon.poll_interval_seconds
        )
        self.clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._sent_at: dict[str, deque[float]] = {name: deque() for name in settings.webhooks}
        for name in settings.webhooks:
            metrics.init_webhook(name)

    async def run_once(self) -> None:
        now = self.clock()
        self._fan_out(now)
        due = self.store.due_actions("webhook", now, limit=1000)
        down: set[str] = set()
        # A client per round: rounds are seconds apart, and a pool must not outlive its loop.
        async with httpx.AsyncClient(
            transport=self._transport,
            follow_redirects=False,
            headers={"User-Agent": f"watcher/{__version__}"},
        ) as self._client:
            for item in self._plan(due, now):
                hook = str(item.payload.get("webhook"))
                if hook in down:
                    continue
                if not await self._deliver(item):
                    down.add(hook)  # this receiver is down: its other posts wait
        self._client = None
        self.metrics.outbox_pending_now({"webhook": self.store.pending_counts()["webhook"]})

    async def close(self) -> None:
        return  # one client per round: nothing stays open between rounds

    # ---- fan-out ---------------------------------------------------------------------------

    def _fan_out(self, now: float) -> None:
        mark = self.store.watermark(_FANOUT_WATERMARK)
        if mark is None:
            alerts = self.store.alerts_after(0, pending_only=True)
            every = self.store.alerts_after(0, pending_only=False)
            last = every[-1].id if every else 0
        else:
            alerts = self.store.alerts_after(int(mark), pending_only=False)
            if not alerts:
                return
            last = alerts[-1].id
        with self.store.transaction() as conn:
            for alert in alerts:
                if alert.payload.get("alert") == "digest":
                    continue  # a mail digest: its members were copied one by one
                for name in self.settings.webhooks_for(alert.model):
                    payload = {"webhook": name, "alert": alert.payload}
                    action = Action("webhook", f"webhook:{name}:{alert.key}", alert.model, payload)
                    StateStore.enqueue(conn, action, not_before=now)
            StateStore.set_watermark(conn, _FANOUT_WATERMARK, str(last))

    # ---- digest ----------------------------------------------------------------------------

    def _plan(self, due: list[OutboxItem], now: float) -> list[OutboxItem]:
        window = self.settings.alerts.digest_window_seconds
        threshold = self.settings.alerts.digest_threshold
        by_hook: dict[str, list[OutboxItem]] = {}
        for item in due:
            by_hook.setdefault(str(item.payload.get("webhook")), []).append(item)
        planned: list[OutboxItem] = []
        for hook, items in by_hook.items():
            sent = self._sent_at.setdefault(hook, deque())
            while sent and sent[0] < now - window:
                sent.popleft()
            singles = [i for i in items if "members" not in i.payload]
            digests = [i for i in items if "members" in i.payload]
            if len(singles) < 2 or len(singles) + len(sent) <= threshold:
                planned += items
            elif now - min(i.created_at for i in singles) < window:
                planned += digests  # a burst is building up: let it collect for one window
            else:
                planned += [*digests, self._fold(hook, singles, now)]
        return planned

    def _fold(self, hook: str, members: list[OutboxItem], now: float) -> OutboxItem:
        digest = hashlib.sha256("\n".join(sorted(m.key for m in members)).encode()).hexdigest()
        key = f"webhook:{hook}:digest:{digest[:20]}"
        order = {"critical": 0, "warning": 1, "info": 2}
        severity = min(
            (str(m.payload["alert"].get("severity")) for m in members),
            key=lambda s: order.get(s, 9),
        )
        payload = {
            "webhook": hook,
            "severity": severity,
            "members": [
                {"key": m.key, "created_at": m.created_at, "alert": m.payload["alert"]}
                for m in members
            ],
        }
        with self.store.transaction() as conn:
            StateStore.enqueue(conn, Action("webhook", key, None, payload), not_before=now)
            StateStore.complete_actions(conn, [m.id for m in members])
        self.metrics.webhook_posted(hook, "digested", len(members))
        log.info("folded %d alerts for webhook %s into digest %s", len(members), hook, key)
        return next(i for i in self.store.due_actions("webhook", now, limit=1000) if i.key == key)

    # ---- delivery --------------------------------------------------------------------------

    async def _post(self, cfg: WebhookConfig, item: OutboxItem) -> None:
        assert cfg.url is not None  # the config refuses a webhook without one
        body = slack_payload(item) if cfg.format == "slack" else json_payload(item)
        headers = cfg.headers | {"Idempotency-Key": item.key}
        assert self._client is not None  # set for the duration of run_once
        try:
            resp = await self._client.post(
                cfg.url.get_secret_value(), json=body, headers=headers, timeout=cfg.timeout_seconds
            )
        except httpx.TransportError as exc:  # connection refused/reset, timeouts
            raise WebhookError(f"{type(exc).__name__}: {exc}", transient=True) from exc
        if resp.is_success:
            return
        answer = resp.text.strip()[:_SHOWN_ANSWER] or resp.reason_phrase
        transient = resp.status_code >= 500 or resp.status_code in (408, 429)
        raise WebhookError(
            f"HTTP {resp.status_code}: {answer}", transient=transient, status=resp.status_code
        )

    async def _deliver(self, item: OutboxItem) -> bool:
        """Post one item. False when the receiver is down (its other posts should wait)."""
        hook = str(item.payload.get("webhook"))
        cfg = self.settings.webhooks.get(hook)
        if cfg is None:
            self._dead(item, hook, f"webhook {hook!r} is no longer configured")
            return True
        if not self.store.hold_claim(item.id):
            return True  # its claim ran out before its turn: another replica posts it
        try:
            async for attempt in stamina.retry_context(
                on=_is_transient, attempts=cfg.retry_attempts, timeout=cfg.retry_timeout_seconds
            ):
                with attempt:
                    await self._post(cfg, item)
        except WebhookError as exc:
            if exc.transient:
                self._failed_round(item, hook, cfg, exc)
                return False
            self._dead(item, hook, f"the receiver refused it: {exc}")
            return True
        self.store.mark_done(item.id)
        self.metrics.webhook_posted(hook, "sent")
        if "members" not in item.payload:
            self._sent_at.setdefault(hook, deque()).append(self.clock())
        log.info("posted %s to webhook %s", item.key, hook, extra={"model": item.model})
        return True

    def _failed_round(
        self, item: OutboxItem, hook: str, cfg: WebhookConfig, exc: WebhookError
    ) -> None:
        rounds = item.attempts + 1
        if rounds >= cfg.max_delivery_rounds:
            self._dead(item, hook, f"gave up after {rounds} delivery rounds: {exc}")
            return
        delay = backoff(rounds, cfg.retry_backoff_seconds, cfg.retry_backoff_max_seconds)
        self.store.reschedule(item.id, self.clock() + delay, str(exc))
        self.metrics.webhook_posted(hook, "retry")
        log.warning(
            "could not post %s to webhook %s (round %d of %d), next try in %.0fs: %s",
            item.key,
            hook,
            rounds,
            cfg.max_delivery_rounds,
            delay,
            exc,
            extra={"model": item.model},
        )

    def _dead(self, item: OutboxItem, hook: str, error: str) -> None:
        self.store.mark_dead(item.id, error)
        self.metrics.dead_letter("webhook")
        self.metrics.webhook_posted(hook, "dead")
        log.error(
            "webhook post %s parked as a dead letter: %s (the outbox keeps it with status "
            "'dead'; `watcher status` lists it)",
            item.key,
            error,
            extra={"model": item.model},
        )


def build_webhook_workers(
    settings: Settings, store: StateStore, metrics: Metrics
) -> list[PeriodicWorker]:
    """The worker that posts alerts to webhooks; the daemon starts it when any is configured."""
    metrics.outbox_pending_now({"webhook": store.pending_counts()["webhook"]})
    return [WebhookDispatcher(settings, store, metrics)]
