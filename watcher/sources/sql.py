"""The `sql` source: a live prediction-log table (or view) in PostgreSQL, cut into windows.

Windows
    Tumbling windows ``[origin + k·w, origin + (k+1)·w)`` with ``w = window_seconds`` and
    ``origin = source.start``, else the Unix epoch, so hourly windows start on the hour.
    The first window holds the oldest row (or starts at ``source.start``). A window is ready
    once ``now >= end + allowed_lateness_seconds``. Its batch id is
    ``<start ISO>/<seconds>`` (``2011-01-03T00:00:00+00:00/3600``), stable across restarts.

Progress
    A watermark in the state store (key ``sql:<model>``): the end of the last finished
    window. `commit` writes it inside the transaction that records the batch's result
    (scored or rejected), so a restart neither skips nor repeats a window. The daemon
    processes one model's batches in order, oldest first.

Empty windows
    Produce no batch: there is nothing to score, and a "too few rows" rejection per quiet
    hour would only be noise. They are skipped and recorded: the watermark moves past them
    (with the next window's commit, or at a poll when only empty windows are ready), the
    state counts them (``empty_windows``) and the skip is logged.

Late rows
    Rows whose timestamp falls in a window that was already finished. Detected by counting,
    so no ingestion-time column is needed and views work: the row count of each finished
    window is remembered (read at load, in the same snapshot as the rows), and the last
    ``late_check_windows`` windows are recounted at most every
    ``late_check_interval_seconds``. Growth is late rows: ``watcher_late_rows_total``, a
    warning, and with ``rescore_late`` the window is offered again as
    ``<batch id>#rev<N>`` with all its rows. Limits: a deletion and a late insert in the same
    window between two checks cancel out; rows later than ``late_check_windows`` windows
    are not seen. The rows a window had when scored (and the windows later found late) are
    in the watermark's ``recent`` map.

NULL timestamps
    Such rows belong to no window: they are ignored and counted (``null_timestamps`` in the
    state); when their number grows, a warning says how many and
    ``watcher_data_quality_violations_total{check="null_timestamp"}`` goes up by one.

Bad input
    A schema problem (table or view gone, a configured column missing, a numeric feature
    whose type changed to something else, a timestamp that is not one) belongs to the table,
    not to a window: poll and load raise SourceError naming the table, the column and what
    to change. The watermark stays put, nothing is lost, the daemon keeps polling and
    carries on once it is fixed. A query that fails on one window's data (a view dividing
    by zero, a bad cast inside a view) rejects that window only (BatchRejected
    ``read_error``); it is quarantined in the ledger and the watermark moves on.

Connection loss
    Retried briefly with backoff (stamina; connection errors only), then SourceError:
    ``watcher_source_up`` drops to 0, `down_since` is set, and the daemon tries again next
    round from the watermark. The DSN in messages has its password replaced by ``***``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from watcher.config import ColumnsConfig, SqlSourceConfig
from watcher.errors import ConfigError, SourceError
from watcher.metrics import Metrics
from watcher.sources.base import BatchRef
from watcher.sources.labels import load_labels
from watcher.sources.sqlconn import (
    build_url,
    db_message,
    is_transient,
    make_engine,
    quote_ident,
    quote_table,
    read_failed,
    redacted,
    retrying,
    table_columns,
    unreachable,
)
from watcher.sources.sqlread import RangeRead, plan_read, read_range
from watcher.state import StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# A long backlog is handed out in slices so one poll stays cheap; the next poll continues.
MAX_WINDOWS_PER_POLL = 500
_REV = "#rev"


def utc_now() -> datetime:
    return datetime.now(UTC)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _iso(epoch: float) -> str:
    return _dt(epoch).isoformat()


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
        return f"{_iso(self.start(k))}/{int(w) if float(w).is_integer() else w}"


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
                "end": None if self.end is None else _iso(self.end),
                "first": None if self.first is None else _iso(self.first),
                "empty_windows": self.empty_windows,
                "null_timestamps": self.null_timestamps,
                "late_rows": self.late_rows,
                "recent": self.recent,
            },
            sort_keys=True,
        )


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def _parse_start(value: str) -> float:
    dt = datetime.fromisoformat(value)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def split_revision(batch_id: str) -> tuple[str, int]:
    """`<window id>#rev<N>` -> (window id, N); a first scoring is revision 0."""
    base, sep, rev = batch_id.partition(_REV)
    return (base, int(rev)) if sep else (batch_id, 0)


class SqlSource:
    """Windows of a PostgreSQL prediction-log table for one model (see the module doc)."""

    def __init__(
        self,
        model: str,
        cfg: SqlSourceConfig,
        columns: ColumnsConfig,
        store: StateStore,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if columns.timestamp and columns.timestamp != cfg.timestamp_column:
            raise ConfigError(
                f"model {model}: columns.timestamp is {columns.timestamp!r} but "
                f"source.timestamp_column is {cfg.timestamp_column!r}",
                hint="windows are cut on source.timestamp_column; make the two the same",
            )
        self.model = model
        self.cfg = cfg
        self.columns = columns
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.url = build_url(cfg)
        self.dsn = redacted(self.url)  # for messages: the password is never shown
        self.engine = make_engine(cfg, f"watcher:{model}")
        origin = _parse_start(cfg.start) if cfg.start else 0.0
        self.windows = Windows(origin, cfg.window_seconds)
        self.key = f"sql:{model}"
        self.down_since: float | None = None
        self._table = quote_table(cfg.table)
        self._ts = quote_ident(cfg.timestamp_column)
        self._rows_read: dict[str, int] = {}  # batch id -> rows in the window when loaded
        self._last_check = -math.inf
        self._types: dict[str, str] = {}

    # ---- Source protocol ------------------------------------------------------------------

    async def poll(self) -> list[BatchRef]:
        try:
            refs = await asyncio.to_thread(self._poll)
        except SourceError:
            self._mark_down()
            raise
        self._mark_up()
        return refs

    def load(self, ref: BatchRef) -> pd.DataFrame:
        """The window's rows (a uniform sample beyond `max_rows_per_window`).

        `df.attrs`: ``window_rows`` (rows in the window), and when sampled
        ``sampled_from`` (same number) and ``sample`` (how).
        """
        if ref.window is None:
            raise ValueError(f"{ref.batch_id} is not a window of {self.cfg.table}")
        read = self._guard(lambda: self._read(ref), f"window {ref.batch_id}")
        self._rows_read[ref.batch_id] = read.rows
        frame = read.frame
        frame.attrs["window_rows"] = read.rows
        if read.sampled_out:
            self.metrics.sampled_rows.labels(self.model).inc(read.sampled_out)
            frame.attrs["sampled_from"] = read.rows
            frame.attrs["sample"] = (
                f"uniform {len(frame)} of {read.rows} rows (max_rows_per_window), "
                "deterministic per window"
            )
            log.info(
                "%s/%s: %d rows, over max_rows_per_window; scoring a uniform sample of %d",
                self.model,
                ref.batch_id,
                read.rows,
                len(frame),
            )
        return frame

    def set_aside(self, ref: BatchRef, reason: str) -> str | None:
        return None  # rows stay in the table; the ledger keeps the window and its reason

    def archive(self, ref: BatchRef) -> None:
        return None

    def commit(self, conn: sqlite3.Connection, ref: BatchRef) -> None:
        """Move the watermark past `ref` (or record a rescore) in the batch's transaction."""
        assert ref.window is not None
        start, end = ref.window[0].timestamp(), ref.window[1].timestamp()
        _, rev = split_revision(ref.batch_id)
        rows = self._rows_read.pop(ref.batch_id, None)
        p = Progress.parse(_watermark(conn, self.key))
        key = _iso(start)
        if rev == 0:
            if p.end is not None and start > p.end:
                skipped = self.windows.index(start) - self.windows.index_at_or_after(p.end)
                if skipped > 0:
                    p.empty_windows += skipped
                    log.info("%s: %d empty window(s) before %s skipped", self.model, skipped, key)
            p.end = end if p.end is None else max(p.end, end)
            p.first = start if p.first is None else p.first
            p.recent[key] = {"rows": rows, "seen": rows, "rev": 0}
        else:
            entry = p.recent.setdefault(key, {"rows": None, "seen": None, "rev": 0})
            seen = entry.get("seen")
            entry["rows"] = rows if rows is not None else seen
            entry["seen"] = rows if seen is None or (rows is not None and rows > seen) else seen
            entry["rev"] = rev
        self._prune(p)
        StateStore.set_watermark(conn, self.key, p.dump())

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.dispose)

    # ---- labels ---------------------------------------------------------------------------

    def load_labels(
        self, start: datetime, end: datetime, *, labelled_before: datetime | None = None
    ) -> pd.DataFrame:
        """Newest label per prediction of [start, end), joined by id (see labels.load_labels)."""
        return self._guard(
            lambda: load_labels(
                self.engine, self.cfg, self.columns, start, end, labelled_before=labelled_before
            ),
            f"labels for [{start.isoformat()}, {end.isoformat()})",
        )

    @property
    def progress(self) -> Progress:
        """The durable state: watermark, empty windows skipped, late rows found."""
        return Progress.parse(self.store.watermark(self.key))

    # ---- polling --------------------------------------------------------------------------

    def _poll(self) -> list[BatchRef]:
        return self._guard(self._poll_once, "the window list", reject=False)

    def _poll_once(self) -> list[BatchRef]:
        now = self.clock().timestamp()
        p = self.progress
        refs: list[BatchRef] = []
        with self.engine.connect() as conn:
            self._check_schema(conn)
            start = p.end if p.end is not None else self._oldest(conn)
            if start is not None:
                refs = self._ready_windows(conn, p, start, now)
            if time.monotonic() - self._last_check >= self.cfg.late_check_interval_seconds:
                self._check_late(conn)
                self._last_check = time.monotonic()
        return self._rescores() + refs

    def _check_schema(self, conn: Connection) -> None:
        cols = table_columns(conn, self.cfg.table)
        for name, col in (cols or {}).items():
            before = self._types.get(name)
            if before is not None and before != col.type:
                log.warning(
                    "%s: column %s.%s changed type from %s to %s",
                    self.model,
                    self.cfg.table,
                    name,
                    before,
                    col.type,
                )
            self._types[name] = col.type
        plan_read(
            cols,
            self.cfg,
            self.columns,
            include_timestamp=bool(self.columns.timestamp),
            join_labels=self._join_labels,
            label_cols=self._label_cols(conn),
        )

    @property
    def _join_labels(self) -> bool:
        return bool(self.cfg.labels_table and self.columns.target and self.columns.id)

    def _label_cols(self, conn: Connection) -> Any:
        if not self._join_labels:
            return None
        assert self.cfg.labels_table is not None
        return table_columns(conn, self.cfg.labels_table)

    def _oldest(self, conn: Connection) -> float | None:
        """Start of the window holding the oldest row (at or after `source.start`)."""
        sql = f"SELECT min({self._ts}) FROM {self._table}"
        params: dict[str, Any] = {}
        if self.cfg.start:
            sql += f" WHERE {self._ts} >= :origin"
            params["origin"] = _dt(self.windows.origin)
        oldest = conn.execute(text(sql), params).scalar_one()
        if oldest is None:
            return None
        t = _as_utc(oldest).timestamp()
        return self.windows.start(self.windows.index(t))

    def _counts(self, conn: Connection, lo: int, hi: int, limit: int | None) -> dict[int, int]:
        """Rows per window index for windows lo..hi-1 (non-empty windows only)."""
        sql = (
            f"SELECT CAST(floor((extract(epoch FROM {self._ts}) - CAST(:origin AS numeric)) "
            f"/ CAST(:width AS numeric)) AS bigint) AS k, count(*) AS n FROM {self._table} "
            f"WHERE {self._ts} >= :start AND {self._ts} < :end GROUP BY 1 ORDER BY 1"
        )
        params: dict[str, Any] = {
            "origin": repr(self.windows.origin),
            "width": repr(self.windows.width),
            "start": _dt(self.windows.start(lo)),
            "end": _dt(self.windows.start(hi)),
        }
        if limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = limit
        return {int(r.k): int(r.n) for r in conn.execute(text(sql), params)}

    def _ready_windows(
        self, conn: Connection, p: Progress, start: float, now: float
    ) -> list[BatchRef]:
        w = self.windows
        lo = w.index_at_or_after(start)
        hi = w.index(now - self.cfg.allowed_lateness_seconds)  # windows k < hi are ready
        if lo >= hi:
            return []
        counts = self._counts(conn, lo, hi, MAX_WINDOWS_PER_POLL)
        if not counts:
            self._skip_empty(p.end, w.start(lo), w.start(hi), hi - lo)
            return []
        refs = []
        for k in sorted(counts):
            s, e = w.start(k), w.start(k + 1)
            refs.append(
                BatchRef(
                    model=self.model,
                    batch_id=w.batch_id(k),
                    uri=f"{self.cfg.table}@[{_iso(s)},{_iso(e)})",
                    window=(_dt(s), _dt(e)),
                )
            )
        return refs

    def _skip_empty(self, seen_end: float | None, start: float, new_end: float, n: int) -> None:
        """Only empty windows are ready: move the watermark past them and say so."""
        with self.store.transaction() as conn:
            p = Progress.parse(_watermark(conn, self.key))
            if p.end != seen_end:
                return  # a commit moved it meanwhile; the next poll decides again
            p.end = new_end
            p.first = start if p.first is None else p.first
            p.empty_windows += n
            self._prune(p)
            StateStore.set_watermark(conn, self.key, p.dump())
        log.info(
            "%s: %d empty window(s) [%s, %s) skipped, nothing to score",
            self.model,
            n,
            _iso(start),
            _iso(new_end),
        )

    # ---- late rows ------------------------------------------------------------------------

    def _check_late(self, conn: Connection) -> None:
        p = self.progress
        nulls = conn.execute(
            text(f"SELECT count(*) FROM {self._table} WHERE {self._ts} IS NULL")
        ).scalar_one()
        counts: dict[int, int] = {}
        lo = hi = 0
        revs = {k: v.get("rev") for k, v in p.recent.items()}
        if p.end is not None and self.cfg.late_check_windows > 0:
            w = self.windows
            hi = w.index_at_or_after(p.end)
            lo = max(hi - self.cfg.late_check_windows, w.index_at_or_after(p.first or p.end))
            if lo < hi:
                counts = self._counts(conn, lo, hi, None)
        late: dict[str, int] = {}
        new_nulls = 0
        with self.store.transaction() as sconn:
            q = Progress.parse(_watermark(sconn, self.key))
            horizon = (q.end or 0.0) - self.cfg.late_check_windows * self.windows.width
            for k in range(lo, hi):
                key = _iso(self.windows.start(k))
                n = counts.get(k, 0)
                entry = q.recent.get(key)
                if self.windows.start(k) < horizon or (
                    entry is not None and entry.get("rev") != revs.get(key)
                ):
                    continue  # pruned or rescored since it was counted: count it next time
                if entry is None:  # skipped as empty: it had no rows
                    if n > 0:
                        q.recent[key] = {"rows": 0, "seen": n, "rev": 0}
                        late[key] = n
                    continue
                seen = entry.get("seen")
                if seen is not None and n > seen:
                    late[key] = n - seen
                entry["seen"] = n  # also after deletions: the new baseline
            q.late_rows += sum(late.values())
            if nulls > q.null_timestamps:
                new_nulls = nulls - q.null_timestamps
            q.null_timestamps = nulls
            self._prune(q)
            StateStore.set_watermark(sconn, self.key, q.dump())
        for key, n in late.items():
            log.warning(
                "%s: %d late row(s) in window %s of %s, which was already scored%s",
                self.model,
                n,
                key,
                self.cfg.table,
                "; rescoring it" if self.cfg.rescore_late else "",
            )
        if late:
            self.metrics.late_rows.labels(self.model).inc(sum(late.values()))
        if new_nulls:
            self.metrics.quality_violations.labels(self.model, "null_timestamp").inc()
            log.warning(
                "%s: %d more row(s) of %s have a NULL %s (%d in all); they belong to no "
                "window and are not scored. Fix the writer, or add NOT NULL to the column",
                self.model,
                new_nulls,
                self.cfg.table,
                self.cfg.timestamp_column,
                nulls,
            )

    def _rescores(self) -> list[BatchRef]:
        if not self.cfg.rescore_late:
            return []
        refs = []
        for key, entry in sorted(self.progress.recent.items()):
            rows, seen, rev = entry.get("rows"), entry.get("seen"), entry.get("rev") or 0
            if rows is None or seen is None or seen <= rows:
                continue
            s = datetime.fromisoformat(key).timestamp()
            k = self.windows.index(s)
            e = self.windows.start(k + 1)
            refs.append(
                BatchRef(
                    model=self.model,
                    batch_id=f"{self.windows.batch_id(k)}{_REV}{rev + 1}",
                    uri=f"{self.cfg.table}@[{key},{_iso(e)}) rev {rev + 1}",
                    window=(_dt(s), _dt(e)),
                )
            )
        return refs

    def _prune(self, p: Progress) -> None:
        if p.end is None:
            return
        oldest = p.end - self.cfg.late_check_windows * self.windows.width
        p.recent = {
            k: v for k, v in p.recent.items() if datetime.fromisoformat(k).timestamp() >= oldest
        }

    # ---- reading --------------------------------------------------------------------------

    def _read(self, ref: BatchRef) -> RangeRead:
        assert ref.window is not None
        with self.engine.connect() as conn:
            # One snapshot for the schema, the count and the rows: the count remembered for
            # late-row detection is exactly what was read.
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            with conn.begin():
                plan = plan_read(
                    table_columns(conn, self.cfg.table),
                    self.cfg,
                    self.columns,
                    include_timestamp=bool(self.columns.timestamp),
                    join_labels=self._join_labels,
                    label_cols=self._label_cols(conn),
                )
                return read_range(
                    conn,
                    plan,
                    ref.window[0],
                    ref.window[1],
                    chunk_rows=self.cfg.chunk_rows,
                    cap=self.cfg.max_rows_per_window,
                    seed=split_revision(ref.batch_id)[0],
                )

    def _guard(self, fn: Callable[[], T], what: str, *, reject: bool = True) -> T:
        """Run a database call with retries and turn failures into watcher errors."""
        try:
            result = retrying(fn, what)
        except SourceError:
            self._mark_down()
            raise
        except DBAPIError as exc:
            if is_transient(exc):
                self._mark_down()
                raise unreachable(exc, self.url, self.cfg.table) from exc
            if isinstance(exc, ProgrammingError) or not reject:
                # Permissions, a column dropped under us, a view that no longer compiles:
                # the table's problem, not the window's.
                self._mark_down()
                raise SourceError(
                    f"reading {what} from {self.cfg.table} ({self.dsn}) failed: {db_message(exc)}",
                    hint="fix the table or view (or the config); watcher resumes from its "
                    "watermark once the query works",
                ) from exc
            raise read_failed(exc, self.cfg.table, what) from exc
        return result

    def _mark_down(self) -> None:
        self.metrics.source_up.labels(self.model).set(0)
        if self.down_since is None:
            self.down_since = time.time()

    def _mark_up(self) -> None:
        self.metrics.source_up.labels(self.model).set(1)
        self.down_since = None


def _watermark(conn: sqlite3.Connection, key: str) -> str | None:
    # Read through the caller's transaction, so a read-modify-write cannot lose an update.
    row = conn.execute("SELECT value FROM watermarks WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    # A `date` column: midnight UTC.
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


__all__ = ["MAX_WINDOWS_PER_POLL", "Progress", "SqlSource", "Windows", "split_revision"]
