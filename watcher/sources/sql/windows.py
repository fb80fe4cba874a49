"""Tumbling time windows and the durable progress of the sql source (its watermark).

Times are Unix seconds inside, ISO 8601 (UTC) in batch ids and in the state store, where
the progress is one JSON value under the watermark key ``sql:<model>``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from watcher.state import StateStore

if TYPE_CHECKING:
    from watcher.state.db import StateConn

REV = "#rev"


def utc_now() -> datetime:
    """The default clock of the source."""
    return datetime.now(UTC)


def as_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def iso(epoch: float) -> str:
    return as_datetime(epoch).isoformat()


@dataclass(frozen=True)
class Windows:
    """Tumbling windows of `width` seconds aligned on `origin` (both Unix seconds)."""

    origin: float
    width: float

    def index(self, t: float) -> int:
        return math.floor((t - self.origin) / self.width)

    def index_at_or_after(self, t: float) -> int:
        return math.ceil((t - self.origin) / self.width)

    def start(self, k: int) -> float:
        return self.origin + k * self.width

    def batch_id(self, k: int) -> str:
        w = self.width
        return f"{iso(self.start(k))}/{int(w) if float(w).is_integer() else w}"


@dataclass
class Progress:
    """What the watermark key holds (as JSON)."""

    end: float | None = None  # windows ending at or before this are finished
    first: float | None = None  # start of the first window watched
    empty_windows: int = 0
    null_timestamps: int = 0
    late_rows: int = 0
    # Finished windows still checked for late rows, by start ISO: rows scored, rows seen
    # by the latest count, revision scored. None: not known (the window could not be read).
    recent: dict[str, dict[str, int | None]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> Progress:
        if raw is None:
            return cls()
        d = json.loads(raw)
        return cls(
            end=_epoch(d.get("end")),
            first=_epoch(d.get("first")),
            empty_windows=int(d.get("empty_windows", 0)),
            null_timestamps=int(d.get("null_timestamps", 0)),
            late_rows=int(d.get("late_rows", 0)),
            recent=dict(d.get("recent", {})),
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "end": None if self.end is None else iso(self.end),
                "first": None if self.first is None else iso(self.first),
                "empty_windows": self.empty_windows,
                "null_timestamps": self.null_timestamps,
                "late_rows": self.late_rows,
                "recent": self.recent,
            },
            sort_keys=True,
        )


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def parse_start(value: str) -> float:
    """`source.start` as Unix seconds; without a zone it is UTC."""
    dt = datetime.fromisoformat(value)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def split_revision(batch_id: str) -> tuple[str, int]:
    """`<window id>#rev<N>` -> (window id, N); a first scoring is revision 0."""
    base, sep, rev = batch_id.partition(REV)
    return (base, int(rev)) if sep else (batch_id, 0)


def read_progress(conn: StateConn, key: str) -> Progress:
    """The progress as of the caller's transaction, so a read-modify-write loses nothing."""
    return Progress.parse(StateStore.watermark_in(conn, key))


def as_utc(value: Any) -> datetime:
    """A timestamp read from the table as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    # A `date` column: midnight UTC.
    return datetime(value.year, value.month, value.day, tzinfo=UTC)
