"""Labels from a second table, joined to predictions by id; the DAG's training read.

The labels table holds one row per label: ``(id, label, labelled_at)`` (names set by
``source.labels_id_column`` / ``labels_label_column`` / ``labels_time_column``). When an id
was labelled more than once, the newest label wins. Predictions without a label yet have
no row in `load_labels` and a missing target in `read_training_window`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from watcher.config import ColumnsConfig, SqlSourceConfig
from watcher.errors import SourceError
from watcher.sources.sql.connection import (
    Column,
    build_url,
    db_message,
    is_transient,
    make_engine,
    quote_ident,
    quote_table,
    redacted,
    retrying,
    schema_error,
    select_expr,
    table_columns,
    unreachable,
)
from watcher.sources.sql.reader import plan_read, read_range


def load_labels(
    engine: Engine,
    cfg: SqlSourceConfig,
    columns: ColumnsConfig,
    start: datetime,
    end: datetime,
    *,
    labelled_before: datetime | None = None,
) -> pd.DataFrame:
    """Labelled predictions whose timestamp is in [start, end), for performance metrics.

    Columns: the id, the timestamp (as ``source.timestamp_column``), the prediction and the
    score (when configured), the label (named ``columns.target``, else ``target``) and
    ``labelled_at``.
    Only labels given at or before `labelled_before` count, when it is set. Raises
    SourceError when the tables do not fit the config; database errors pass through.
    """
    if not cfg.labels_table or not columns.id:
        raise schema_error(
            "labels need source.labels_table and columns.id",
            hint="set both to join labels to predictions by id",
        )
    lid, llabel, lat = cfg.labels_id_column, cfg.labels_label_column, cfg.labels_time_column
    with engine.connect() as conn:
        cols = table_columns(conn, cfg.table)
        lcols = table_columns(conn, cfg.labels_table)
        for table, have, need in (
            (
                cfg.table,
                cols,
                [columns.id, cfg.timestamp_column, columns.prediction, columns.score],
            ),
            (cfg.labels_table, lcols, [lid, llabel, lat]),
        ):
            if have is None:
                raise schema_error(
                    f"table {table} does not exist (or the user cannot see it)",
                    hint="create it or fix the source config",
                )
            missing = [c for c in need if c and c not in have]
            if missing:
                raise schema_error(
                    f"{table} has no column {', '.join(missing)}; it has {', '.join(have)}",
                    hint="fix columns.* or source.labels_*_column in the config",
                )
        assert cols is not None
        assert lcols is not None
        ts = quote_ident(cfg.timestamp_column)
        items = [
            select_expr(cols[columns.id], as_number=False),
            f"t.{ts} AS {ts}",
        ]
        if columns.prediction:
            pred = cols[columns.prediction]
            items.append(select_expr(pred, as_number=pred.kind == "numeric"))
        if columns.score:
            items.append(select_expr(cols[columns.score], as_number=True))
        label = Column("label", lcols[llabel].type, lcols[llabel].kind)
        items.append(
            select_expr(
                label,
                as_number=label.kind == "numeric",
                alias=columns.target or "target",
                relation="lb",
            )
        )
        items.append(f"lb.labelled_at AS {quote_ident('labelled_at')}")
        table = quote_table(cfg.table)
        where = f"t.{ts} >= :start AND t.{ts} < :end"
        cutoff = f" AND l.{quote_ident(lat)} <= :before" if labelled_before else ""
        sql = (
            f"SELECT {', '.join(items)} FROM {table} AS t JOIN ("
            f"SELECT DISTINCT ON (l.{quote_ident(lid)}) l.{quote_ident(lid)} AS lid, "
            f"l.{quote_ident(llabel)} AS label, l.{quote_ident(lat)} AS labelled_at "
            f"FROM {quote_table(cfg.labels_table)} AS l WHERE l.{quote_ident(lid)} IN "
            f"(SELECT t.{quote_ident(columns.id)} FROM {table} AS t WHERE {where}){cutoff} "
            f"ORDER BY l.{quote_ident(lid)}, l.{quote_ident(lat)} DESC) AS lb "
            f"ON lb.lid = t.{quote_ident(columns.id)} WHERE {where} ORDER BY t.{ts}"
        )
        result = conn.execute(text(sql), {"start": start, "end": end, "before": labelled_before})
        frame = pd.DataFrame.from_records([tuple(r) for r in result], columns=list(result.keys()))
    for c in (cfg.timestamp_column, "labelled_at"):
        frame[c] = pd.to_datetime(frame[c], utc=True)
    return frame


def read_training_window(
    cfg: SqlSourceConfig,
    columns: ColumnsConfig,
    start: datetime | str,
    end: datetime | str,
    *,
    labelled_before: datetime | str | None = None,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """Rows of [start, end) for training: id, timestamp, features, prediction and target.

    The target is the table's `columns.target` column when it has one, otherwise the
    newest label from `source.labels_table` joined by id (missing where no label yet).
    Timestamps may be ISO strings (as in a DAG run's conf); naive ones are UTC. With
    `max_rows`, a uniform deterministic sample of that many rows (``attrs["sampled_from"]``
    then holds the rows in the range). Opens and closes its own connection pool.

    Raises SourceError (unreachable database, a table that does not fit the config, a
    query that fails); connection errors are retried briefly first.
    """
    lo, hi = _utc(start), _utc(end)
    before = None if labelled_before is None else _utc(labelled_before)
    url = build_url(cfg)
    engine = make_engine(cfg, "watcher:training")
    try:
        seed = f"training:{lo.isoformat()}/{hi.isoformat()}"

        def read() -> pd.DataFrame:
            with engine.connect() as conn:
                conn = conn.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
                with conn.begin():
                    join = bool(cfg.labels_table and columns.id)
                    plan = plan_read(
                        table_columns(conn, cfg.table),
                        cfg,
                        columns,
                        include_timestamp=True,
                        join_labels=join,
                        labelled_before=before,
                        label_cols=table_columns(conn, cfg.labels_table)
                        if join and cfg.labels_table
                        else None,
                    )
                    got = read_range(
                        conn,
                        plan,
                        lo,
                        hi,
                        chunk_rows=cfg.chunk_rows,
                        cap=max_rows,
                        seed=seed,
                    )
            frame = got.frame
            frame.attrs["window_rows"] = got.rows
            if got.sampled_out:
                frame.attrs["sampled_from"] = got.rows
            return frame

        try:
            return retrying(read, "the training window")
        except DBAPIError as exc:
            if is_transient(exc):
                raise unreachable(exc, url, cfg.table) from exc
            raise SourceError(
                f"reading [{lo.isoformat()}, {hi.isoformat()}) from {cfg.table} "
                f"({redacted(url)}) failed: {db_message(exc)}",
                hint=f"run the same SELECT on {cfg.table} to see what fails",
            ) from exc
    finally:
        engine.dispose()


def _utc(value: datetime | str) -> datetime:
    dt = datetime.fromisoformat(value) if isinstance(value, str) else value
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
