"""Delivers retrain triggers from the outbox to Airflow, at least once.

Each due trigger is delivered with its deterministic ``dag_run_id``, so delivering it twice
(a crash after the POST, before `mark_done`) gets a 409 from Airflow, which counts as
delivered: the effect is exactly one DAG run. Every state change is written so that a crash
between two writes repeats an idempotent step rather than losing one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from watcher import incidents
from watcher.airflow.gateway import AirflowGateway
from watcher.alerts import alert_action
from watcher.config import Settings
from watcher.errors import AirflowError, AirflowLoginError
from watcher.metrics import Metrics
from watcher.state import OutboxItem, StateStore, backoff

log = logging.getLogger(__name__)

LOGIN_INCIDENT = "airflow:login"


def paused_incident(dag_id: str) -> str:
    return f"dag_paused:{dag_id}"


class TriggerDispatcher:
    """A PeriodicWorker: one round delivers every due trigger action."""

    name = "airflow-trigger-dispatcher"

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        metrics: Metrics,
        gateway: AirflowGateway,
        *,
        interval_seconds: float | None = None,
        backoff_base: float = 10.0,
        backoff_max: float = 900.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.gateway = gateway
        self.interval_seconds = (
            interval_seconds
            if interval_seconds is not None
            else min(settings.daemon.poll_interval_seconds, settings.airflow.poll_interval_seconds)
        )
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max

    async def run_once(self) -> None:
        for item in self.store.due_actions("trigger", time.time()):
            if not await self._deliver(item):
                # Airflow is down or refuses our login: the other items would only wait out
                # the same retries. They stay due and go first in the next round.
                break
        self._sync_login_incident()
        self.metrics.outbox_pending_now({"trigger": self.store.pending_counts()["trigger"]})

    async def close(self) -> None:
        self.gateway.close()

    # ---- one delivery ---------------------------------------------------------------------

    async def _deliver(self, item: OutboxItem) -> bool:
        """Deliver one trigger. False when Airflow cannot take any trigger right now."""
        model = item.model or "unknown"
        try:
            dag_id = str(item.payload["dag_id"])
            run_id = str(item.payload["run_id"])
            conf: dict[str, Any] = dict(item.payload.get("conf") or {})
            note = item.payload.get("note")
        except (KeyError, TypeError, ValueError) as exc:
            self._refuse(item, model, "?", item.key, f"malformed trigger payload: {exc!r}", None)
            return True
        try:
            dag = await self.gateway.get_dag(dag_id)
            if dag.is_paused and not await self._paused(item, model, dag_id, run_id):
                return True
            result = await self.gateway.trigger(
                dag_id, run_id, conf, None if note is None else str(note)
            )
        except AirflowLoginError as exc:
            self._defer(item, exc, at_least=self.gateway.login_retry_in())
            return False
        except AirflowError as exc:
            if exc.transient:
                self._defer(item, exc)
                return False
            if exc.status == 404 and self._dag_may_come_back(item, exc):
                return True
            self._refuse(item, model, dag_id, run_id, str(exc), exc.status)
            return True
        # Run row first, then done: a crash in between redelivers, gets 409, and both
        # writes are no-ops the second time.
        self.store.add_run(run_id, model, dag_id, conf, result.state)
        self.store.mark_done(item.id)
        if incidents.is_open(self.store, paused_incident(dag_id)):
            with self.store.transaction() as conn:
                incidents.resolve_incident(conn, paused_incident(dag_id), alert=None)
        outcome = "duplicate" if result.duplicate else "delivered"
        self.metrics.trigger_delivered(model, outcome)
        log.info(
            "retrain trigger %s for %s %s (run state %s)", run_id, dag_id, outcome, result.state
        )
        return True

    async def _paused(self, item: OutboxItem, model: str, dag_id: str, run_id: str) -> bool:
        """A paused DAG takes a trigger and leaves the run queued forever. True: go on."""
        self.metrics.dag_paused.labels(model=model).inc()
        refused = ""
        if self.settings.airflow.unpause_paused_dags:
            try:
                await self.gateway.unpause(dag_id)
            except AirflowError as exc:
                if exc.transient or isinstance(exc, AirflowLoginError):
                    raise
                # Not allowed to unpause (403): fall back to telling people.
                refused = f" (watcher could not unpause it: {exc})"
        if self.settings.airflow.unpause_paused_dags and not refused:
            log.warning("DAG %s was paused; unpaused it (airflow.unpause_paused_dags)", dag_id)
            with self.store.transaction() as conn:
                self.store.record_decision(
                    conn,
                    model=model,
                    batch_id=None,
                    outcome="dag_unpaused",
                    reason=f"DAG {dag_id} was paused; watcher unpaused it to deliver {run_id}",
                    run_id=run_id,
                )
            return True
        reason = (
            f"DAG {dag_id} is paused in Airflow{refused}; retrain {run_id} waits in the outbox "
            "until someone unpauses it (or set airflow.unpause_paused_dags)"
        )
        with self.store.transaction() as conn:
            incident = paused_incident(dag_id)
            if incidents.open_incident(
                conn,
                incident,
                "dag_paused",
                model,
                {"dag_id": dag_id},
                alert=alert_action(
                    "dag_paused",
                    key=f"dag_paused:{dag_id}:{run_id}",
                    model=model,
                    title=f"Retraining DAG {dag_id} is paused",
                    severity="warning",
                    details={"dag_id": dag_id, "run_id": run_id, "reason": reason},
                    incident=incident,
                ),
            ):
                self.store.record_decision(
                    conn,
                    model=model,
                    batch_id=None,
                    outcome="dag_paused",
                    reason=reason,
                    run_id=run_id,
                )
        log.warning("%s", reason)
        # Look again soon: someone may unpause it any minute, and a look is one cheap GET.
        self._defer(
            item,
            AirflowError(reason, transient=True),
            cap=4 * self.settings.airflow.poll_interval_seconds,
        )
        return False

    def _dag_may_come_back(self, item: OutboxItem, exc: AirflowError) -> bool:
        """Within `airflow.missing_dag_grace_seconds` of queueing, a 404 is asked again
        soon (the DAG may be back once its file is parsed): True, deferred. After that the
        trigger is refused; with a wrong `dag_id` that is the grace period late, and the
        warnings logged meanwhile name the DAG."""
        grace = self.settings.airflow.missing_dag_grace_seconds
        left = item.created_at + grace - time.time()
        if left <= 0:
            return False
        reason = (
            f"{exc}; the DAG file may be being parsed or redeployed: asked again for "
            f"{left:.0f}s more (airflow.missing_dag_grace_seconds), then refused for good"
        )
        poll = self.settings.airflow.poll_interval_seconds
        self._defer(item, AirflowError(reason, status=404), cap=min(4 * poll, left))
        return True

    # ---- outcomes ---------------------------------------------------------------------------

    def _defer(
        self,
        item: OutboxItem,
        exc: AirflowError,
        *,
        at_least: float = 0.0,
        cap: float | None = None,
    ) -> None:
        """Leave the trigger pending; try again after a jittered, growing delay."""
        cap = self.backoff_max if cap is None else min(cap, self.backoff_max)
        delay = max(at_least, backoff(item.attempts + 1, self.backoff_base, cap))
        self.store.reschedule(item.id, time.time() + delay, str(exc))
        log.warning("trigger %s not delivered (%s); next try in %.0fs", item.key, exc, delay)

    def _refuse(
        self,
        item: OutboxItem,
        model: str,
        dag_id: str,
        run_id: str,
        message: str,
        status: int | None,
    ) -> None:
        """Airflow refused the trigger for good: dead letter plus an alert saying why."""
        with self.store.transaction() as conn:
            # Alert first: a crash before mark_dead redelivers, is refused again, and the
            # second enqueue of the same key is a no-op.
            self.store.enqueue(
                conn,
                alert_action(
                    "trigger_refused",
                    key=f"trigger_refused:{run_id}",
                    model=model,
                    title=f"Airflow refused retrain trigger {run_id}",
                    severity="critical",
                    details={
                        "dag_id": dag_id,
                        "run_id": run_id,
                        "status": status,
                        "message": message,
                    },
                ),
            )
        self.store.mark_dead(item.id, message)
        self.metrics.dead_letter("trigger")
        self.metrics.trigger_delivered(model, "failed")
        log.error("trigger %s refused for good: %s", run_id, message)

    def _sync_login_incident(self) -> None:
        """One alert per episode of refused logins, whichever worker met it; resolved on the
        next successful login."""
        error = self.gateway.login_error
        is_open = incidents.is_open(self.store, LOGIN_INCIDENT)
        if error is None:
            if is_open and self.gateway.logged_in:
                with self.store.transaction() as conn:
                    incidents.resolve_incident(conn, LOGIN_INCIDENT, alert=None)
            return
        if is_open:
            return
        details = {"url": self.gateway.config.url, "status": error.status, "message": str(error)}
        with self.store.transaction() as conn:
            incidents.open_incident(
                conn,
                LOGIN_INCIDENT,
                "trigger_refused",
                None,
                details,
                alert=alert_action(
                    "trigger_refused",
                    key=f"{LOGIN_INCIDENT}:{time.time():.0f}",
                    model=None,
                    title="Airflow refuses watcher's login; retrain triggers are on hold",
                    severity="critical",
                    details=details,
                    incident=LOGIN_INCIDENT,
                ),
            )
