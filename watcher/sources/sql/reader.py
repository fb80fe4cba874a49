"""Reading a time range of a prediction table with bounded memory.

Only the columns the model's roles name are selected; rows arrive in server-side chunks of
`chunk_rows` (a named cursor, so the server never sends more than a chunk at a time); and
beyond a row cap the database itself picks a uniform sample: the `cap` rows whose row text,
salted with the window, has the smallest md5. That sample is deterministic (the same window
always gives the same rows, whatever order the server returns them in), and only the
sampled rows cross the wire. `BottomK` does the same in memory (for callers that sample
frames they already hold).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, text

from watcher.config import ColumnsConfig, SqlSourceConfig
from watcher.sources.sql.columnar import arrow_batches, available, conform
from watcher.sources.sql.connection import (
    Column,
    check_schema,
    close_cursor,
    quote_ident,
    quote_table,
    schema_error,
    select_expr,
    yields_float,
)

_POS = "_watcher_pos"  # the read order, kept through the database's sampling
# Below this many rows a window is fetched through the pooled connection: the columnar
# read opens a connection of its own (tens of ms), which only pays off on big windows.
ARROW_MIN_ROWS = 10_000


@dataclass(frozen=True)
class ReadPlan:
    """The SQL that reads a range, and how its columns are typed in the frame."""

    select_sql: str
    float_columns: tuple[str, ...]  # made float64 in every chunk, so chunks hash alike
    timestamp_column: str | None  # output column holding the timestamp, made UTC
    params: dict[str, Any]
    # The Arrow type of each output column for the columnar read: "float64", "int64",
    # "bool" or "string" ("timestamp": as the driver reads it, made UTC after).
    arrow_types: dict[str, str] = field(default_factory=dict)


def plan_read(
    cols: dict[str, Column] | None,
    cfg: SqlSourceConfig,
    columns: ColumnsConfig,
    *,
    include_timestamp: bool,
    join_labels: bool,
    labelled_before: datetime | None = None,
    label_cols: dict[str, Column] | None = None,
) -> ReadPlan:
    """Check the schema and build the range query for the configured roles."""
    table = quote_table(cfg.table)
    ts = cfg.timestamp_column
    target_in_table = bool(columns.target and cols and columns.target in cols)
    use_labels = join_labels and not target_in_table
    check_schema(cols, cfg.table, ts, columns, label_target=use_labels or not columns.target)
    assert cols is not None  # check_schema refused None

    items: list[str] = []
    floats: list[str] = []
    arrow: dict[str, str] = {}

    def add(name: str, *, as_number: bool, alias: str | None = None) -> None:
        col = cols[name]
        items.append(select_expr(col, as_number=as_number, alias=alias))
        arrow[alias or name] = arrow_type(col, as_number=as_number)
        if yields_float(col, as_number=as_number):
            floats.append(alias or name)

    if columns.id:
        add(columns.id, as_number=False)
    ts_out: str | None = None
    if include_timestamp:
        ts_out = columns.timestamp or ts
        items.append(f"t.{quote_ident(ts)} AS {quote_ident(ts_out)}")
        arrow[ts_out] = "timestamp"
    for c in columns.numeric:
        add(c, as_number=True)
    for c in columns.categorical:
        add(c, as_number=False)
    if columns.prediction:
        add(columns.prediction, as_number=cols[columns.prediction].kind == "numeric")
    if columns.score:
        add(columns.score, as_number=True)
    if columns.target and target_in_table:
        add(columns.target, as_number=cols[columns.target].kind == "numeric")

    where = f"t.{quote_ident(ts)} >= :start AND t.{quote_ident(ts)} < :end"
    join = ""
    params: dict[str, Any] = {}
    if use_labels:
        join, label_item, label_col, label_as_number = _labels_join(
            cfg, columns, where, table, label_cols, labelled_before, params
        )
        items.append(label_item)
        arrow[columns.target or "target"] = arrow_type(label_col, as_number=label_as_number)
        if yields_float(label_col, as_number=label_as_number):
            floats.append(columns.target or "target")
    order = f"t.{quote_ident(ts)}" + (f", t.{quote_ident(columns.id)}" if columns.id else "")
    return ReadPlan(
        select_sql=f"SELECT {', '.join(items)} FROM {table} AS t{join} WHERE {where} "
        f"ORDER BY {order}",
        float_columns=tuple(floats),
        timestamp_column=ts_out,
        params=params,
        arrow_types=arrow,
    )


def arrow_type(col: Column, *, as_number: bool) -> str:
    """How the columnar read types what `select_expr` selects for `col`."""
    if yields_float(col, as_number=as_number):
        return "float64"
    if col.kind == "numeric":
        return "int64"  # only integer types are not read as float8
    if col.kind == "boolean":
        return "bool"
    return "timestamp" if col.kind == "datetime" else "string"


def _labels_join(
    cfg: SqlSourceConfig,
    columns: ColumnsConfig,
    where: str,
    table: str,
    label_cols: dict[str, Column] | None,
    labelled_before: datetime | None,
    params: dict[str, Any],
) -> tuple[str, str, Column, bool]:
    """LEFT JOIN of the newest label per id, restricted to the ids of the range."""
    assert cfg.labels_table is not None
    if not columns.id:
        raise schema_error(
            f"labels in {cfg.labels_table} are joined by id, but columns.id is not set",
            hint="set columns.id to the prediction table's id column",
        )
    lid, llabel, lat = cfg.labels_id_column, cfg.labels_label_column, cfg.labels_time_column
    if label_cols is None:
        raise schema_error(
            f"labels table {cfg.labels_table} does not exist (or the user cannot see it)",
            hint="create it with columns (id, label, labelled_at), fix source.labels_table, "
            "or GRANT SELECT on it",
        )
    missing = [c for c in (lid, llabel, lat) if c not in label_cols]
    if missing:
        raise schema_error(
            f"labels table {cfg.labels_table} has no column {', '.join(missing)}; "
            f"it has {', '.join(label_cols)}",
            hint="set source.labels_id_column / labels_label_column / labels_time_column",
        )
    cutoff = ""
    if labelled_before is not None:
        cutoff = f" AND l.{quote_ident(lat)} <= :labelled_before"
        params["labelled_before"] = labelled_before
    join = (
        f" LEFT JOIN (SELECT DISTINCT ON (l.{quote_ident(lid)}) l.{quote_ident(lid)} AS lid, "
        f"l.{quote_ident(llabel)} AS label FROM {quote_table(cfg.labels_table)} AS l "
        f"WHERE l.{quote_ident(lid)} IN (SELECT t.{quote_ident(columns.id)} FROM {table} AS t "
        f"WHERE {where}){cutoff} ORDER BY l.{quote_ident(lid)}, l.{quote_ident(lat)} DESC) AS lb "
        f"ON lb.lid = t.{quote_ident(columns.id)}"
    )
    label = Column("label", label_cols[llabel].type, label_cols[llabel].kind)
    as_number = label.kind == "numeric"
    item = select_expr(label, as_number=as_number, alias=columns.target or "target", relation="lb")
    return join, item, label, as_number


@dataclass
class RangeRead:
    frame: pd.DataFrame
    rows: int  # rows in the range (before sampling)

    @property
    def sampled_out(self) -> int:
        return self.rows - len(self.frame)


def read_range(
    conn: Connection,
    plan: ReadPlan,
    start: datetime,
    end: datetime,
    *,
    chunk_rows: int,
    cap: int | None,
    seed: str,
    columnar: bool = True,
) -> RangeRead:
    """Stream [start, end) in chunks; keep everything, or a uniform sample of `cap` rows.

    `rows` of the result counts every row streamed, so within one transaction it is the
    window's row count in the same snapshot as the rows. `columnar` reads a capped range
    of at least ARROW_MIN_ROWS rows into Arrow with ADBC (`columnar`); otherwise (and
    without the ADBC driver) rows come through a server-side cursor, as before
    (`benchmarks/bench_sql_memory.py` compares the two).
    """
    params = {"start": start, "end": end, **plan.params}
    sql = plan.select_sql
    total: int | None = None
    if cap is not None:
        # The cap is applied by the database: count the window, and when it holds more
        # rows than the cap, let the server pick them (the smallest hashes of each row's
        # text salted with the window: deterministic and uniform) so only `cap` rows cross
        # the wire. Same transaction, same snapshot: the count is what the sample is of.
        total = int(conn.execute(text(f"SELECT count(*) FROM ({sql}) AS w"), params).scalar_one())
        if total > cap:
            sql = (
                "SELECT s.* FROM (SELECT w.* FROM (SELECT q.*, row_number() OVER () AS "
                f"{_POS} FROM ({sql}) AS q) AS w ORDER BY md5(CAST(w AS text) || :_salt) "
                f"LIMIT :_cap) AS s ORDER BY s.{_POS}"
            )
            params |= {"_salt": hashlib.sha256(seed.encode()).hexdigest()[:16], "_cap": cap}
    fetched = None if total is None or cap is None else min(total, cap)
    if columnar and fetched is not None and fetched >= ARROW_MIN_ROWS and available():
        frame, seen = _read_columns(conn, plan, sql, params, seed)
    else:
        frame, seen = _read_rows(conn, plan, sql, params, seed, chunk_rows)
    if plan.timestamp_column is not None:
        frame[plan.timestamp_column] = pd.to_datetime(frame[plan.timestamp_column], utc=True)
    return RangeRead(frame, seen if total is None else total)


def _read_columns(
    conn: Connection, plan: ReadPlan, sql: str, params: dict[str, Any], seed: str
) -> tuple[pd.DataFrame, int]:
    sample = BottomK(None, seed)  # the database already capped the rows: only collects
    names: list[str] = list(plan.arrow_types)
    for batch in arrow_batches(conn, sql, params):
        chunk = conform(batch, plan.arrow_types).to_pandas(coerce_temporal_nanoseconds=True)
        if _POS in chunk.columns:
            chunk = chunk.drop(columns=_POS)
        names = list(chunk.columns)
        sample.add(chunk)
    return sample.result(names), sample.seen


def _read_rows(
    conn: Connection,
    plan: ReadPlan,
    sql: str,
    params: dict[str, Any],
    seed: str,
    chunk_rows: int,
) -> tuple[pd.DataFrame, int]:
    # stream_results: a named (server-side) cursor; yield_per on the result: FETCH that many
    # rows at a time (as an execution option alone it does not size Core partitions).
    streamed = (
        conn.execution_options(stream_results=True).execute(text(sql), params).yield_per(chunk_rows)
    )
    fetched = list(streamed.keys())
    names = [n for n in fetched if n != _POS]
    cursor = streamed.cursor  # the server-side (named) DBAPI cursor
    # The database already capped the rows; BottomK only collects the chunks.
    sample = BottomK(None, seed)
    try:
        for part in streamed.partitions():
            chunk = pd.DataFrame.from_records([tuple(r) for r in part], columns=fetched)
            if _POS in fetched:
                chunk = chunk.drop(columns=_POS)
            for c in plan.float_columns:
                chunk[c] = chunk[c].astype("float64")
            sample.add(chunk)
    finally:
        streamed.close()
        # When the connection dies mid-read (or just before the cursor's CLOSE), SQLAlchemy
        # lets go of the named cursor without it being closed: close it for good here.
        if not getattr(cursor, "closed", True):
            close_cursor(cursor)
    return sample.result(names), sample.seen


class BottomK:
    """The `cap` rows with the smallest salted hash: a uniform sample without replacement.

    Rows are hashed on their values (pandas' hash_pandas_object, keyed by the seed), so the
    sample depends on the window and its rows, not on their order. Memory: at most
    `cap` kept rows plus one chunk.
    """

    def __init__(self, cap: int | None, seed: str) -> None:
        self.cap = cap
        self.hash_key = hashlib.sha256(seed.encode()).hexdigest()[:16]
        self.seen = 0
        self._parts: list[pd.DataFrame] = []
        self._keys: list[np.ndarray[Any, Any]] = []
        self._pos: list[np.ndarray[Any, Any]] = []
        self._kept = 0
        self._threshold: Any = None

    def add(self, chunk: pd.DataFrame) -> None:
        n = len(chunk)
        pos = np.arange(self.seen, self.seen + n, dtype=np.int64)
        self.seen += n
        if self.cap is None or n == 0:
            self._parts.append(chunk)
            self._pos.append(pos)
            return
        keys = pd.util.hash_pandas_object(chunk, index=False, hash_key=self.hash_key).to_numpy(
            dtype=np.uint64
        )
        if self._threshold is not None:
            # Once the sample is full, only rows hashing below its largest key can get in.
            mask = keys < self._threshold
            chunk, keys, pos = chunk[mask], keys[mask], pos[mask]
        self._parts.append(chunk)
        self._keys.append(keys)
        self._pos.append(pos)
        self._kept += len(chunk)
        if self._kept > self.cap:
            self._compact(self.cap)

    def _compact(self, cap: int) -> None:
        frame = pd.concat(self._parts, ignore_index=True)
        keys = np.concatenate(self._keys)
        pos = np.concatenate(self._pos)
        keep = np.argpartition(keys, cap - 1)[:cap]
        self._parts = [frame.iloc[keep]]
        self._keys = [keys[keep]]
        self._pos = [pos[keep]]
        self._kept = cap
        self._threshold = keys[keep].max()

    def result(self, names: list[str]) -> pd.DataFrame:
        """The kept rows in the order they were read, with a fresh index."""
        parts = [p for p in self._parts if len(p)]
        if not parts:
            return pd.DataFrame({n: pd.Series(dtype=object) for n in names})
        frame = pd.concat(parts, ignore_index=True)
        order = np.argsort(np.concatenate(self._pos), kind="stable")
        return frame.iloc[order].reset_index(drop=True)
