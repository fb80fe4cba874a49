"""The contract every batch source fulfils."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

if TYPE_CHECKING:
    from watcher.state.db import StateConn


@dataclass(frozen=True)
class BatchRef:
    """One unit of production data to score: a file, or a closed time window of a table."""

    model: str
    batch_id: str  # unique per model and stable across restarts: the ledger key
    uri: str  # where the data is (a path, or table + window), shown to people
    window: tuple[datetime, datetime] | None = None


@dataclass(frozen=True)
class Outage:
    """What a source says about its own outage or recovery; the daemon pages with it
    (`watcher.incidents`), the source never does."""

    title: str
    details: dict[str, Any] = field(default_factory=dict)
    since: float = 0.0  # when the outage began (Unix time): one alert per outage


class Source(Protocol):
    """A source lists new complete batches and loads them.

    `poll` runs on the event loop and must be cheap or hand its I/O to a thread; `load`,
    `set_aside` and `commit` are called from a worker thread next to the scoring.
    """

    model: str

    async def poll(self) -> list[BatchRef]:
        """New, complete batches not yet processed, oldest first."""
        ...

    def load(self, ref: BatchRef) -> pd.DataFrame:
        """Read a batch. Raises `BatchRejected` when it cannot be read at all."""
        ...

    def set_aside(self, ref: BatchRef, reason: str) -> str | None:
        """Keep a rejected batch apart with its reason; returns where it went, if anywhere."""
        ...

    def archive(self, ref: BatchRef) -> None:
        """Called after a scored batch was committed (e.g. move the file to processed/)."""
        ...

    def commit(self, conn: StateConn, ref: BatchRef) -> None:
        """Record progress (e.g. a watermark) inside the transaction that finishes the batch."""
        ...

    def outage(self) -> Outage | None:
        """The outage to page about, after a poll or a load raised SourceError; None while
        the source is up or its outage is too young to page about."""
        ...

    def recovery(self) -> Outage:
        """What the "source recovered" alert says (its `since` is unused)."""
        ...

    async def close(self) -> None: ...
