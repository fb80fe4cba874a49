"""Is Airflow able to run a retrain? `watcher_airflow_up` and the unreachable incident.

``GET /api/v2/monitor/health`` needs no login and answers 200 even when parts are down, so
the probe reads each component's ``status``. A component reported with no status at all
(``null``: e.g. no triggerer deployed) is not counted against Airflow; the metadatabase and
the scheduler must be healthy, since without them no triggered run ever starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from watcher import incidents
from watcher.airflow.gateway import AirflowGateway
from watcher.alerts import alert_action
from watcher.config import Settings
from watcher.errors import AirflowError
from watcher.metrics import Metrics
from watcher.state import StateStore

log = logging.getLogger(__name__)

UNREACHABLE_INCIDENT = "airflow:unreachable"
REQUIRED_COMPONENTS = ("metadatabase", "scheduler")


def health_problems(components: dict[str, str | None]) -> list[str]:
    """What keeps Airflow from running retrains, from the health endpoint's answer."""
    problems = [
        f"{name}: {status}"
        for name, status in components.items()
        if status is not None and status != "healthy"
    ]
    problems += [
        f"{name}: not reported" for name in REQUIRED_COMPONENTS if components.get(name) is None
    ]
    return problems


class AirflowHealth:
    """A PeriodicWorker: one round probes the health endpoint once (no retries: the next
    round is the retry)."""

    name = "airflow-health"

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        metrics: Metrics,
        gateway: AirflowGateway,
        *,
        interval_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.gateway = gateway
        self.interval_seconds = (
            interval_seconds
            if interval_seconds is not None
            else settings.airflow.poll_interval_seconds
        )
        self.down_since: float | None = None
        self.problems: list[str] = []
        # With replicas: every one probes (its own watcher_airflow_up), the one on duty pages.
        self.pages: Callable[[], bool] = lambda: True

    async def run_once(self) -> None:
        now = time.time()
        try:
            self.problems = health_problems(await self.gateway.health())
        except AirflowError as exc:
            self.problems = [f"unreachable: {exc}"]
        self.metrics.airflow_up.set(0 if self.problems else 1)
        if not self.pages():
            self.down_since = None if not self.problems else (self.down_since or now)
            return
        if self.problems:
            self._down(now)
        else:
            self._up()

    async def close(self) -> None:
        self.gateway.close()

    def _down(self, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
            log.warning("Airflow at %s is down: %s", self.settings.airflow.url, self.problems)
        down_for = now - self.down_since
        if down_for < self.settings.airflow.unreachable_alert_after_seconds:
            return
        if incidents.is_open(self.store, UNREACHABLE_INCIDENT):
            return
        url = self.settings.airflow.url
        details = {"url": url, "problems": self.problems, "down_since": self.down_since}
        with self.store.transaction() as conn:
            incidents.open_incident(
                conn,
                UNREACHABLE_INCIDENT,
                "airflow_unreachable",
                None,
                details,
                alert=alert_action(
                    "airflow_unreachable",
                    key=f"airflow_unreachable:{self.down_since:.0f}",
                    model=None,
                    title=f"Airflow at {url} is down for {down_for / 60:.0f} min; "
                    "retrain triggers wait in the outbox",
                    severity="critical",
                    details=details,
                    incident=UNREACHABLE_INCIDENT,
                ),
            )

    def _up(self) -> None:
        if self.down_since is not None:
            log.info("Airflow at %s is up again", self.settings.airflow.url)
        self.down_since = None
        if not incidents.is_open(self.store, UNREACHABLE_INCIDENT):
            return
        url = self.settings.airflow.url
        with self.store.transaction() as conn:
            incidents.resolve_incident(
                conn,
                UNREACHABLE_INCIDENT,
                alert=alert_action(
                    "airflow_recovered",
                    key=f"airflow_recovered:{time.time():.0f}",
                    model=None,
                    title=f"Airflow at {url} is reachable again",
                    severity="info",
                    details={"url": url},
                    incident=UNREACHABLE_INCIDENT,
                ),
            )
