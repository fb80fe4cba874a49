"""Incidents and the alerts that go with them: one home for "open it, then page once".

An incident is an outage or a condition that lasts (drift, a source down, Airflow
unreachable, a paused DAG, refused logins); its key names it (``drift:<model>``,
``source:<model>:down``...). Opening an incident that is already open and resolving one that
is not are no-ops, and the alert passed along is queued only when the call changed
something, in the caller's transaction: one mail per episode, however often the condition
is seen, and never a mail without its incident (or the reverse) after a crash.

Whatever sees something go down says so (a source through `Source.outage`, the health
probe through its own state); only the daemon, the pipeline and the Airflow workers call
here, so nothing that reads data sends mail itself.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from watcher.alerts import alert_action
from watcher.sources.base import Source
from watcher.state import Action, StateStore
from watcher.state.db import StateConn

log = logging.getLogger(__name__)


def open_incident(
    conn: StateConn,
    key: str,
    kind: str,
    model: str | None,
    details: dict[str, Any],
    *,
    alert: Action | None,
) -> bool:
    """Open the incident `key` and queue `alert`, unless it is open already. True when opened."""
    if not StateStore.open_incident(conn, key, kind, model, details):
        return False
    if alert is not None:
        StateStore.enqueue(conn, alert)
    return True


def resolve_incident(conn: StateConn, key: str, *, alert: Action | None) -> bool:
    """Resolve the incident `key` and queue `alert`, if it was open. True when resolved."""
    if not StateStore.resolve_incident(conn, key):
        return False
    if alert is not None:
        StateStore.enqueue(conn, alert)
    return True


def open_keys(store: StateStore) -> set[str]:
    """The keys of every open incident (one read)."""
    return {str(i["key"]) for i in store.open_incidents()}


def is_open(store: StateStore, key: str) -> bool:
    return key in open_keys(store)


# ---- a source up or down: the same incident and mails for every kind of source -----------


def source_incident(model: str) -> str:
    return f"source:{model}:down"


class SourceOutages:
    """Pages about sources that go down and come back, as the sources describe it
    (`Source.outage`, `Source.recovery`): one alert per outage, one when it ends."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        # Models whose source was seen up with no outage left open: nothing to read per poll.
        self._checked: set[str] = set()

    def down(self, model: str, source: Source) -> bool:
        """After a poll or a load raised SourceError. True when an alert was queued."""
        self._checked.discard(model)
        outage = source.outage()
        if outage is None:
            return False
        key = source_incident(model)
        with self.store.transaction(model=model) as conn:
            return open_incident(
                conn,
                key,
                "source_down",
                model,
                outage.details,
                alert=alert_action(
                    "source_down",
                    key=f"{key}:{outage.since:.0f}",
                    model=model,
                    title=outage.title[:300],
                    severity="critical",
                    details=outage.details,
                    incident=key,
                ),
            )

    def up(self, model: str, source: Source) -> bool:
        """After a poll that worked: resolve the outage, once per recovery (and once after a
        start, as the outage may have begun before it). True when an alert was queued."""
        if model in self._checked:
            return False
        self._checked.add(model)
        key = source_incident(model)
        if not is_open(self.store, key):
            source.recovery()  # forget the outage that ended without a page
            return False
        recovery = source.recovery()
        log.info("%s: %s", model, recovery.title)
        with self.store.transaction(model=model) as conn:
            return resolve_incident(
                conn,
                key,
                alert=alert_action(
                    "source_recovered",
                    key=f"{key}:recovered:{time.time():.0f}",
                    model=model,
                    title=recovery.title,
                    severity="info",
                    details=recovery.details,
                    incident=key,
                ),
            )
