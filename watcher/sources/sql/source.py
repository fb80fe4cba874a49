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
    round from the watermark. Down for ``down_alert_after_seconds`` (schema problems
    included), `outage` says so and the daemon sends one alert per outage (incident
    ``source:<model>:down``, `watcher.incidents`), and a ``source_recovered`` one when the
    source answers again; the source itself never sends mail. The DSN in messages and
    alerts has its password replaced by ``***``.

Size: one `SqlSource` whose sections (polling, late rows, reading, up/down) share the
per-window progress and watermark; connections, reads and window arithmetic live beside it in
this package: `connection`, `reader`, `columnar` and `windows`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from watcher.config import ColumnsConfig, SqlSourceConfig
from watcher.errors import ConfigError, SourceError
from watcher.metrics import Metrics
from watcher.sources.base import BatchRef, Outage
from watcher.sources.labels import load_labels
from watcher.sources.sql.connection import (
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
from watcher.sources.sql.reader import RangeRead, plan_read, read_range
from watcher.sources.sql.windows import (
    REV,
    Progress,
    Windows,
    as_datetime,
    as_utc,
    iso,
    parse_start,
    read_progress,
    split_revision,
    utc_now,
)
from watcher.state import StateConn, StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# A long backlog is handed out in slices so one poll stays cheap; the next poll continues.
MAX_WINDOWS_PER_POLL = 500
# The earliest timestamp a window can start at; a day of margin for session time zones.
_FLOOR = datetime(1, 1, 2, tzinfo=UTC).timestamp()


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
        self._reported_ancient = False
        self.url = build_url(cfg)
        self.dsn = redacted(self.url)  # for messages: the password is never shown
        self.engine = make_engine(cfg, f"watcher:{model}")
        origin = parse_start(cfg.start) if cfg.start else 0.0
        self.windows = Windows(origin, cfg.window_seconds)
        self.key = f"sql:{model}"
        self.down_since: float | None = None  # when the current outage began (Unix time)
        self._down_error: SourceError | None = None  # what the current outage's last error said
        self._was_down_since: float | None = None  # the start of the outage that just ended
        self._table = quote_table(cfg.table)
        self._ts = quote_ident(cfg.timestamp_column)
        self._rows_read: dict[str, int] = {}  # batch id -> rows in the window when loaded
        self._last_check = -math.inf
        self._types: dict[str, str] = {}
        self.columnar = True  # big windows into Arrow (sql.columnar); False: rows, the old path

    # ---- Source protocol ------------------------------------------------------------------

    async def poll(self) -> list[BatchRef]:
        refs = await asyncio.to_thread(self._poll)  # SourceError: marked down, raised
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

    def commit(self, conn: StateConn, ref: BatchRef) -> None:
        """Move the watermark past `ref` (or record a rescore) in the batch's transaction."""
        assert ref.window is not None
        start, end = ref.window[0].timestamp(), ref.window[1].timestamp()
        _, rev = split_revision(ref.batch_id)
        rows = self._rows_read.pop(ref.batch_id, None)
        p = read_progress(conn, self.key)
        key = iso(start)
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
        """Start of the window holding the oldest row (at or after `source.start`).

        Rows before year 1 (``-infinity``, BC dates) have no Python datetime: they are
        left out (and reported once), so one such row cannot keep the source down.
        """
        floor = as_datetime(_FLOOR)
        origin = max(floor, as_datetime(self.windows.origin)) if self.cfg.start else floor
        sql = f"SELECT min({self._ts}) FROM {self._table} WHERE {self._ts} >= :origin"
        oldest = conn.execute(text(sql), {"origin": origin}).scalar_one()
        if not self._reported_ancient:
            self._reported_ancient = True
            ancient = conn.execute(
                text(f"SELECT count(*) FROM {self._table} WHERE {self._ts} < :floor"),
                {"floor": floor},
            ).scalar_one()
            if ancient:
                log.warning(
                    "%s: %d row(s) of %s have %s before year 1 (-infinity or BC); they are "
                    "never scored",
                    self.model,
                    ancient,
                    self.cfg.table,
                    self.cfg.timestamp_column,
                )
        if oldest is None:
            return None
        t = as_utc(oldest).timestamp()
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
            "start": as_datetime(self.windows.start(lo)),
            "end": as_datetime(self.windows.start(hi)),
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
                    uri=f"{self.cfg.table}@[{iso(s)},{iso(e)})",
                    window=(as_datetime(s), as_datetime(e)),
                )
            )
        return refs

    def _skip_empty(self, seen_end: float | None, start: float, new_end: float, n: int) -> None:
        """Only empty windows are ready: move the watermark past them and say so."""
        with self.store.transaction() as conn:
            p = read_progress(conn, self.key)
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
            iso(start),
            iso(new_end),
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
            q = read_progress(sconn, self.key)
            horizon = (q.end or 0.0) - self.cfg.late_check_windows * self.windows.width
            for k in range(lo, hi):
                key = iso(self.windows.start(k))
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
            self.metrics.quality_violation(self.model, "null_timestamp")
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
                    batch_id=f"{self.windows.batch_id(k)}{REV}{rev + 1}",
                    uri=f"{self.cfg.table}@[{key},{iso(e)}) rev {rev + 1}",
                    window=(as_datetime(s), as_datetime(e)),
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
                    columnar=self.columnar,
                )

    def _guard(self, fn: Callable[[], T], what: str, *, reject: bool = True) -> T:
        """Run a database call with retries; failures become watcher errors.

        SourceError (the table or the database is the problem) marks the source down;
        with `reject`, a query that fails on the data becomes BatchRejected.
        """
        try:
            try:
                return retrying(fn, what)
            except DBAPIError as exc:
                if is_transient(exc):
                    raise unreachable(exc, self.url, self.cfg.table) from exc
                if isinstance(exc, ProgrammingError) or not reject:
                    # Permissions, a column dropped under us, a view that no longer
                    # compiles: the table's problem, not the window's.
                    raise SourceError(
                        f"reading {what} from {self.cfg.table} ({self.dsn}) failed: "
                        f"{db_message(exc)}",
                        hint="fix the table or view (or the config); watcher resumes from "
                        "its watermark once the query works",
                    ) from exc
                raise read_failed(exc, self.cfg.table, what) from exc
        except SourceError as exc:
            self._mark_down(exc)
            raise

    # ---- up and down ----------------------------------------------------------------------

    def _mark_down(self, exc: SourceError) -> None:
        """source_up=0, and the outage's start and cause, for `outage`."""
        self.metrics.source_polled(self.model, up=False)
        if self.down_since is None:
            self.down_since = time.time()
        self._down_error = exc

    def _mark_up(self) -> None:
        self.metrics.source_polled(self.model, up=True)
        if self.down_since is not None:
            self._was_down_since = self.down_since
        self.down_since = None

    def outage(self) -> Outage | None:
        """Past `down_alert_after_seconds` (schema problems included), the outage to page
        about: one alert per outage, keyed by its start."""
        exc = self._down_error
        if self.down_since is None or exc is None:
            return None
        down_for = time.time() - self.down_since
        if down_for < self.cfg.down_alert_after_seconds:
            return None
        details = {
            "down_since": self.down_since,
            "down_seconds": round(down_for),
            "table": self.cfg.table,
            "dsn": self.dsn,
            "error": exc.message,
            "what_to_do": exc.hint,
        }
        return Outage(
            title=f"sql source {self.cfg.table} down for {down_for / 60:.0f} min: {exc.message}",
            details=details,
            since=self.down_since,
        )

    def recovery(self) -> Outage:
        # After a restart the outage start is unknown here, but its incident may be open.
        since, self._was_down_since = self._was_down_since, None
        return Outage(
            title=f"sql source {self.cfg.table} answers again",
            details={} if since is None else {"down_seconds": time.time() - since},
        )


__all__ = ["MAX_WINDOWS_PER_POLL", "Progress", "SqlSource", "Windows", "split_revision"]
