"""A source's health as the daemon sees it: up or down, silent or not; as the
`watcher_source_up` gauge, one log line per cause, and incidents with their alerts.

A source that is down is an incident with one alert per outage, as the source describes it
(`Source.outage`: a folder at once, a sql source after `down_alert_after_seconds`). A model
with no batch for `alerts.source_silent_after_seconds` is an incident of its own, whatever
the source.
"""

from __future__ import annotations

import logging
import time

from watcher import incidents
from watcher.alerts import alert_action
from watcher.config import Settings
from watcher.errors import SourceError
from watcher.metrics import Metrics
from watcher.pipeline import ModelRuntime
from watcher.sources.directory import DirectorySource
from watcher.state import StateStore

log = logging.getLogger(__name__)


class SourceAlerts:
    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        # model -> the last cause logged: a source down for hours is logged once per cause.
        self._down: dict[str, str] = {}
        self._poll_errors: dict[str, str] = {}
        # Sources say what their outage is; this pages about it, one alert per outage.
        self.outages = incidents.SourceOutages(store)

    def down(self, rt: ModelRuntime, exc: SourceError) -> None:
        """The source cannot be read this round (a SourceError): retried every round."""
        self.metrics.source_polled(rt.name, up=False)
        if self._down.get(rt.name) != str(exc):  # once per cause
            self._down[rt.name] = str(exc)
            log.warning("source of %s unavailable: %s; retrying every round", rt.name, exc)
        self.outages.down(rt.name, rt.source)

    def failed(self, rt: ModelRuntime, exc: Exception) -> None:
        """Polling failed in a way nobody foresaw: a source that is down this round (no
        input may stop the daemon). The traceback once per kind of error."""
        self.metrics.source_polled(rt.name, up=False)
        seen = f"{type(exc).__name__}: {exc}"
        if self._poll_errors.get(rt.name) != seen:
            self._poll_errors[rt.name] = seen
            log.error("polling the source of %s failed; retrying next round", rt.name, exc_info=exc)

    def up(self, rt: ModelRuntime) -> None:
        """The source was listed this round."""
        self._poll_errors.pop(rt.name, None)
        self.metrics.source_polled(rt.name, up=True)
        self._down.pop(rt.name, None)
        self.outages.up(rt.name, rt.source)
        if isinstance(rt.source, DirectorySource) and rt.source.reused_names:
            self.metrics.problem(rt.name, "name_reused", rt.source.reused_names)
            rt.source.reused_names = 0

    def check_silence(self, rt: ModelRuntime) -> None:
        """Open the model's silence incident after `source_silent_after_seconds` without a
        batch; resolve it when batches arrive again."""
        limit = self.settings.alerts.source_silent_after_seconds
        if limit <= 0:
            return
        key = f"source:{rt.name}:silent"
        silent_for = time.time() - rt.last_batch_at
        with self.store.transaction(model=rt.name) as conn:
            if silent_for > limit:
                incidents.open_incident(
                    conn,
                    key,
                    "source_silent",
                    rt.name,
                    {},
                    alert=alert_action(
                        "source_silent",
                        key=f"{key}:{int(rt.last_batch_at)}",
                        model=rt.name,
                        title=f"no batch for {silent_for / 60:.0f} min",
                        severity="warning",
                        details={"silent_seconds": round(silent_for), "limit_seconds": limit},
                        incident=key,
                    ),
                )
            else:
                incidents.resolve_incident(
                    conn,
                    key,
                    alert=alert_action(
                        "source_recovered",
                        key=f"{key}:recovered:{int(rt.last_batch_at)}",
                        model=rt.name,
                        title="batches are arriving again",
                        severity="info",
                        incident=key,
                    ),
                )
