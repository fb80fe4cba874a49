"""watcher.incidents: an alert goes with the incident's opening or resolution, once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher import incidents
from watcher.alerts import alert_action
from watcher.errors import SourceError
from watcher.sources.base import Outage
from watcher.state import Action, StateStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


def alert(key: str) -> Action:
    return alert_action("source_silent", key=key, model="m", title=key, severity="warning")


def queued(store: StateStore) -> list[str]:
    return [i["key"] for i in store.outbox_items("m")]


def test_open_queues_its_alert_once_and_resolve_queues_its_own(store: StateStore) -> None:
    for n in range(3):
        with store.transaction() as conn:
            opened = incidents.open_incident(
                conn, "k", "source_silent", "m", {"n": n}, alert=alert(f"open{n}")
            )
        assert opened == (n == 0)
    assert incidents.is_open(store, "k")
    assert queued(store) == ["open0"]
    for n in range(2):
        with store.transaction() as conn:
            assert incidents.resolve_incident(conn, "k", alert=alert(f"over{n}")) == (n == 0)
    assert not incidents.is_open(store, "k")
    assert queued(store) == ["open0", "over0"]


class FakeSource:
    """A source that says what its outage is, as DirectorySource and SqlSource do."""

    model = "m"

    def __init__(self) -> None:
        self.down: Outage | None = None

    def outage(self) -> Outage | None:
        return self.down

    def recovery(self) -> Outage:
        return Outage(title="back")


def test_source_outages_page_once_per_outage_and_only_when_the_source_says_so(
    store: StateStore,
) -> None:
    source = FakeSource()
    pages = incidents.SourceOutages(store)
    assert not pages.up("m", source)  # nothing open after a start: no mail
    assert not pages.down("m", source)  # down, but too young to page about
    source.down = Outage(title="gone", details={"error": str(SourceError("gone"))}, since=7.0)
    assert pages.down("m", source)
    assert not pages.down("m", source)  # the same outage: no second alert
    assert pages.up("m", source)
    assert not pages.up("m", source)  # checked once per recovery, not per poll
    kinds = [i["payload"]["alert"] for i in store.outbox_items("m")]
    assert kinds == ["source_down", "source_recovered"]
    assert queued(store)[0] == "source:m:down:7"
