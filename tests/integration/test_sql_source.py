"""The sql source against the real PostgreSQL: windows, watermark, empty windows, row cap,
late rows, labels, bad input and connection loss. Each test gets its own database."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
from fixtures_postgres import CATEGORICAL, NUMERIC, PgDatabase, PredictionLog, day
from harness import run_daemon, thread_stacks
from prometheus_client import CollectorRegistry

from watcher.config import ColumnsConfig, Settings, SqlSourceConfig, load_config
from watcher.errors import BatchRejected, ConfigError, SourceError
from watcher.incidents import SourceOutages
from watcher.metrics import Metrics
from watcher.sources.base import BatchRef
from watcher.sources.labels import read_training_window
from watcher.sources.sql.source import Progress, SqlSource
from watcher.state import StateStore

pytestmark = pytest.mark.postgres

DAY = 86400
COLUMNS = ColumnsConfig(
    numeric=NUMERIC,
    categorical=CATEGORICAL,
    prediction="predicted",
    id="id",
    timestamp="ts",
    target="bikers",
)
WINDOW_COLUMNS = ["id", "ts", *NUMERIC, *CATEGORICAL, "predicted", "bikers"]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "state.db")
    yield s  # type: ignore[misc]
    s.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def sql_cfg(db: PgDatabase, **overrides: Any) -> SqlSourceConfig:
    values: dict[str, Any] = {
        "dsn": db.url,
        "table": "predictions",
        "window_seconds": DAY,
        "allowed_lateness_seconds": 3600,
        "late_check_interval_seconds": 0,
        "labels_table": "labels",
    }
    return SqlSourceConfig(**(values | overrides))


class Harness:
    """A source plus what the daemon and the pipeline do around it (page about its outages;
    claim, record, commit)."""

    def __init__(
        self,
        db: PgDatabase,
        store: StateStore,
        metrics: Metrics,
        clock: Clock,
        columns: ColumnsConfig = COLUMNS,
        **overrides: Any,
    ) -> None:
        self.store, self.metrics, self.clock = store, metrics, clock
        self.source = SqlSource(
            "bikes", sql_cfg(db, **overrides), columns, store, metrics, clock=clock
        )
        self.outages = SourceOutages(store)

    def poll(self) -> list[BatchRef]:
        try:
            refs = asyncio.run(self.source.poll())
        except SourceError:
            self.outages.down("bikes", self.source)
            raise
        self.outages.up("bikes", self.source)
        return refs

    def finish(self, ref: BatchRef) -> pd.DataFrame:
        assert self.store.claim_batch("bikes", ref.batch_id, ref.uri)
        frame = self.source.load(ref)
        with self.store.transaction() as conn:
            StateStore.finish_batch(
                conn,
                model="bikes",
                batch_id=ref.batch_id,
                status="scored",
                rows=len(frame),
                reference_version="test",
            )
            self.source.commit(conn, ref)
        return frame

    def reject(self, ref: BatchRef, exc: BatchRejected) -> None:
        with self.store.transaction() as conn:
            StateStore.finish_batch(
                conn,
                model="bikes",
                batch_id=ref.batch_id,
                status="rejected",
                rows=None,
                reference_version="test",
                reason=str(exc),
            )
            self.source.commit(conn, ref)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"model": "bikes", **labels})
        return 0.0 if value is None else value

    def close(self) -> None:
        asyncio.run(self.source.close())


@pytest.fixture
def harness(pg_db: PgDatabase, store: StateStore, metrics: Metrics) -> Callable[..., Harness]:
    made: list[Harness] = []

    def make(clock: Clock, **overrides: Any) -> Harness:
        h = Harness(pg_db, store, metrics, clock, **overrides)
        made.append(h)
        return h

    yield make  # type: ignore[misc]
    for h in made:
        h.close()


def days(frame: pd.DataFrame, *numbers: int) -> pd.DataFrame:
    keep = frame["ts"].dt.floor("D").isin([pd.Timestamp(day(n)) for n in numbers])
    return frame[keep]


def wid(d: int) -> str:
    return f"{day(d).isoformat()}/{DAY}"


# ---- windows, watermark, restart ------------------------------------------------------------


def test_ready_windows_oldest_first_with_stable_ids_and_only_needed_columns(
    prediction_log: PredictionLog, bikeshare: pd.DataFrame, harness: Callable[..., Harness]
) -> None:
    prediction_log.log(days(bikeshare, 1, 2, 3))
    clock = Clock(day(4) + timedelta(minutes=30))
    h = harness(clock)

    refs = h.poll()
    # Day 3 closed at midnight but gets an hour of lateness allowance first.
    assert [r.batch_id for r in refs] == [wid(1), wid(2)]
    assert refs[0].uri == ("predictions@[2011-01-01T00:00:00+00:00,2011-01-02T00:00:00+00:00)")
    assert refs[0].window == (day(1), day(2))
    clock.now = day(4) + timedelta(hours=1)
    assert [r.batch_id for r in h.poll()] == [wid(1), wid(2), wid(3)]

    frame = h.source.load(refs[0])
    expected = days(bikeshare, 1)
    assert list(frame.columns) == WINDOW_COLUMNS  # not `request`, not `inserted_at`
    assert len(frame) == len(expected) == frame.attrs["window_rows"]
    assert frame["id"].tolist() == expected["id"].tolist()
    assert frame["temp"].tolist() == expected["temp"].tolist()
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"
    assert frame["temp"].dtype == "float64"
    assert frame["season"].dtype == "int64"
    assert frame["bikers"].isna().all()  # no labels yet
    assert "sampled_from" not in frame.attrs
    assert h.metric("watcher_source_up") == 1


def test_restart_neither_skips_nor_repeats_a_window(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    pg_db: PgDatabase,
    store: StateStore,
    harness: Callable[..., Harness],
) -> None:
    prediction_log.log(days(bikeshare, 1, 2, 3, 4))
    clock = Clock(day(10))
    h = harness(clock)
    first, second, *_ = h.poll()
    h.finish(first)

    # A crash inside the batch's transaction: its result and the watermark roll back together.
    h.store.claim_batch("bikes", second.batch_id, second.uri)
    h.source.load(second)

    def crash_before_commit() -> None:
        with h.store.transaction() as conn:
            h.source.commit(conn, second)
            raise RuntimeError("killed before COMMIT")

    with pytest.raises(RuntimeError):
        crash_before_commit()
    assert h.source.progress.end == day(2).timestamp()

    restarted = harness(clock)  # a new process: same state file, fresh source
    assert [r.batch_id for r in restarted.poll()] == [wid(2), wid(3), wid(4)]
    restarted.finish(second)
    restarted.finish(restarted.poll()[0])
    again = harness(clock)
    assert [r.batch_id for r in again.poll()] == [wid(4)]
    assert sorted(store.processed_ids("bikes")) == [wid(1), wid(2), wid(3)]


def test_empty_windows_are_skipped_and_recorded(
    prediction_log: PredictionLog, bikeshare: pd.DataFrame, harness: Callable[..., Harness]
) -> None:
    prediction_log.log(days(bikeshare, 1, 2, 4))  # nothing was served on Jan 3
    clock = Clock(day(6))
    h = harness(clock)
    refs = h.poll()
    assert [r.batch_id for r in refs] == [wid(1), wid(2), wid(4)]
    for ref in refs:
        h.finish(ref)
    progress = h.source.progress
    assert progress.end == day(5).timestamp()
    assert progress.empty_windows == 1

    # Only quiet days are ready: no batch, but the watermark moves past them.
    clock.now = day(8)
    assert h.poll() == []
    progress = h.source.progress
    assert progress.end == day(7).timestamp()
    assert progress.empty_windows == 3

    prediction_log.log(days(bikeshare, 7))
    clock.now = day(9)
    assert [r.batch_id for r in h.poll()] == [wid(7)]


def test_window_start_from_config_and_naive_timestamps_read_as_utc(
    pg_db: PgDatabase, store: StateStore, metrics: Metrics
) -> None:
    pg_db.execute(
        "CREATE TABLE plog (ts timestamp, x double precision);"
        "INSERT INTO plog VALUES ('2011-01-01 05:59', 1), ('2011-01-01 06:00', 2), "
        "('2011-01-02 05:59:59', 3), ('2011-01-02 06:00', 4)"
    )
    cfg = SqlSourceConfig(
        dsn=pg_db.url,
        table="plog",
        window_seconds=DAY,
        allowed_lateness_seconds=0,
        start="2011-01-01T06:00:00+00:00",
    )
    src = SqlSource(
        "plog",
        cfg,
        ColumnsConfig(numeric=["x"]),
        store,
        metrics,
        clock=Clock(day(3) + timedelta(hours=6)),
    )
    try:
        refs = asyncio.run(src.poll())
        assert [r.batch_id for r in refs] == [
            "2011-01-01T06:00:00+00:00/86400",
            "2011-01-02T06:00:00+00:00/86400",
        ]
        assert src.load(refs[0])["x"].tolist() == [2.0, 3.0]
        assert list(src.load(refs[0]).columns) == ["x"]
    finally:
        asyncio.run(src.close())


# ---- bounded reads -------------------------------------------------------------------------


def test_row_cap_keeps_a_uniform_deterministic_sample_and_records_it(
    prediction_log: PredictionLog, pg_db: PgDatabase, harness: Callable[..., Harness]
) -> None:
    # 2,000 requests on Jan 1, one every 40 s, written server-side.
    pg_db.execute(
        "INSERT INTO predictions (id, ts, temp, atemp, hum, windspeed, season, weathersit, "
        "workingday, predicted) SELECT 'g' || i, timestamptz '2011-01-01 00:00+00' "
        "+ i * interval '40 seconds', i, i / 2.0, 0.5, 0.1, 1, 'clear', 1, 100 "
        "FROM generate_series(0, 1999) AS i"
    )
    h = harness(Clock(day(3)), max_rows_per_window=100, chunk_rows=100)
    (ref,) = h.poll()
    frame = h.source.load(ref)
    assert len(frame) == 100
    assert frame.attrs["sampled_from"] == frame.attrs["window_rows"] == 2000
    assert "uniform 100 of 2000" in frame.attrs["sample"]
    assert h.metric("watcher_sampled_out_rows_total") == 1900
    assert frame["ts"].is_monotonic_increasing
    # Uniform over the window: every quarter of the day is represented about equally.
    quarters = (frame["temp"] // 500).value_counts()
    assert sorted(quarters.index) == [0, 1, 2, 3]
    assert quarters.min() >= 12
    assert abs(frame["temp"].mean() - 999.5) < 4 * 577 / 10
    # Deterministic: the same window gives the same rows.
    again = h.source.load(ref)
    assert again["id"].tolist() == frame["id"].tolist()
    assert h.metric("watcher_sampled_out_rows_total") == 3800


def test_reads_in_chunks_so_memory_follows_the_cap_not_the_window(
    prediction_log: PredictionLog, pg_db: PgDatabase, harness: Callable[..., Harness]
) -> None:
    pg_db.execute(
        "INSERT INTO predictions (id, ts, temp, atemp, hum, windspeed, season, weathersit, "
        "workingday, predicted) SELECT 'g' || i, timestamptz '2011-01-01 00:00+00' "
        "+ i * interval '2 seconds', random(), random(), random(), random(), 1, 'clear', 1, "
        "random() FROM generate_series(0, 39999) AS i"
    )

    def peak_of_load(**overrides: Any) -> tuple[int, int]:
        h = harness(Clock(day(3)), chunk_rows=1000, **overrides)
        (ref,) = h.poll()
        tracemalloc.start()
        try:
            frame = h.source.load(ref)
            return len(frame), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole, whole_peak = peak_of_load(max_rows_per_window=100_000)
    capped, capped_peak = peak_of_load(max_rows_per_window=1000)
    assert (whole, capped) == (40_000, 1000)
    # The capped read holds about 2,000 rows (the sample and one chunk) at any time, the
    # uncapped one all 40,000: were the rows fetched all at once, both would peak alike.
    assert capped_peak < whole_peak / 4, (capped_peak, whole_peak)


# ---- late rows -----------------------------------------------------------------------------


def late_rows(bikeshare: pd.DataFrame, d: int, n: int, tag: str) -> pd.DataFrame:
    rows = days(bikeshare, d).head(n).copy()
    rows["id"] = [f"{tag}-{i}" for i in range(n)]
    rows["ts"] = rows["ts"] + pd.Timedelta(minutes=30)
    return rows


def test_late_rows_are_counted_once_across_polls_and_restarts(
    prediction_log: PredictionLog, bikeshare: pd.DataFrame, harness: Callable[..., Harness]
) -> None:
    prediction_log.log(days(bikeshare, 1, 2, 3))
    clock = Clock(day(3) + timedelta(hours=2))
    h = harness(clock)
    for ref in h.poll():
        h.finish(ref)
    assert h.poll() == []

    prediction_log.log(late_rows(bikeshare, 1, 5, "late"))  # a retried upload, a day late
    assert h.poll() == []  # counted, not rescored (rescore_late is off)
    assert h.metric("watcher_late_rows_total") == 5
    assert h.poll() == []
    assert h.metric("watcher_late_rows_total") == 5
    assert h.source.progress.late_rows == 5
    assert h.source.progress.recent[day(1).isoformat()] == {"rows": 24, "seen": 29, "rev": 0}

    restarted = harness(clock)
    restarted.poll()
    assert restarted.source.progress.late_rows == 5  # not counted again after a restart


def test_late_rows_rescore_the_window_with_a_revision(
    prediction_log: PredictionLog, bikeshare: pd.DataFrame, harness: Callable[..., Harness]
) -> None:
    prediction_log.log(days(bikeshare, 1, 3))  # Jan 2 empty at first
    clock = Clock(day(4) + timedelta(hours=2))
    h = harness(clock, rescore_late=True)
    for ref in h.poll():
        h.finish(ref)

    prediction_log.log(late_rows(bikeshare, 1, 4, "late1"))
    prediction_log.log(late_rows(bikeshare, 2, 20, "late2"))  # the empty day gets rows late
    refs = h.poll()
    assert [r.batch_id for r in refs] == [f"{wid(1)}#rev1", f"{wid(2)}#rev1"]
    assert refs[0].window == (day(1), day(2))
    assert h.metric("watcher_late_rows_total") == 24
    frames = [h.finish(r) for r in refs]
    assert [len(f) for f in frames] == [28, 20]
    assert h.poll() == []

    prediction_log.log(late_rows(bikeshare, 1, 2, "late3"))
    assert [r.batch_id for r in h.poll()] == [f"{wid(1)}#rev2"]
    assert h.metric("watcher_late_rows_total") == 26


def test_null_timestamps_are_ignored_counted_and_reported(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    harness: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    prediction_log.log(days(bikeshare, 1))
    broken = days(bikeshare, 2).head(3).copy()
    broken["ts"] = None
    prediction_log.log(broken)
    h = harness(Clock(day(3)))
    with caplog.at_level(logging.WARNING, logger="watcher.sources.sql"):
        (ref,) = h.poll()
    assert len(h.source.load(ref)) == 24
    assert h.source.progress.null_timestamps == 3
    assert h.metric("watcher_data_quality_violations_total", check="null_timestamp") == 1
    assert "3 more row(s) of predictions have a NULL ts" in caplog.text
    assert h.poll() == [ref]  # not yet scored; nothing counted twice
    assert h.metric("watcher_data_quality_violations_total", check="null_timestamp") == 1


# ---- bad input -----------------------------------------------------------------------------


def test_missing_column_is_a_source_error_naming_it_then_resumes(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    pg_db: PgDatabase,
    harness: Callable[..., Harness],
) -> None:
    prediction_log.log(days(bikeshare, 1, 2))
    columns = COLUMNS.model_copy(update={"numeric": [*NUMERIC, "pressure"]})
    h = harness(Clock(day(3) + timedelta(hours=1)), columns=columns, down_alert_after_seconds=0)
    with pytest.raises(SourceError) as err:
        h.poll()
    assert "predictions has no column pressure (a numeric feature (columns.numeric))" in str(
        err.value
    )
    assert "remove it from the model's columns" in err.value.hint
    assert h.metric("watcher_source_up") == 0
    assert h.source.down_since is not None
    with pytest.raises(SourceError):
        h.poll()
    (alert,) = h.store.outbox_items("bikes")  # one alert per outage, not one per poll
    assert alert["payload"]["incident"] == "source:bikes:down"
    assert "no column pressure" in alert["payload"]["title"]
    assert alert["payload"]["details"]["what_to_do"] == err.value.hint

    pg_db.execute("ALTER TABLE predictions ADD COLUMN pressure double precision")
    assert [r.batch_id for r in h.poll()] == [wid(1), wid(2)]
    assert h.metric("watcher_source_up") == 1
    assert h.source.down_since is None
    _, recovered = h.store.outbox_items("bikes")
    assert recovered["payload"]["alert"] == "source_recovered"
    assert h.store.open_incidents() == []


def test_type_change_is_reported_with_the_fix_and_nothing_is_lost(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    pg_db: PgDatabase,
    harness: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    prediction_log.log(days(bikeshare, 1, 2))
    h = harness(Clock(day(3) + timedelta(hours=1)))
    first, second = h.poll()
    h.finish(first)

    pg_db.execute("ALTER TABLE predictions ALTER COLUMN hum TYPE text")
    with caplog.at_level(logging.WARNING), pytest.raises(SourceError) as err:
        h.poll()
    assert "predictions.hum is text, but it is listed as a numeric feature" in str(err.value)
    assert "ALTER COLUMN hum TYPE double precision" in err.value.hint
    assert "changed type from double precision to text" in caplog.text
    with pytest.raises(SourceError, match=r"predictions\.hum is text"):
        h.source.load(second)  # a load racing the change is not rejected either

    pg_db.execute(
        "ALTER TABLE predictions ALTER COLUMN hum TYPE double precision USING hum::double precision"
    )
    assert [r.batch_id for r in h.poll()] == [wid(2)]
    assert len(h.finish(second)) == len(days(bikeshare, 2))


def test_a_view_that_errors_rejects_only_the_windows_it_fails_on(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    pg_db: PgDatabase,
    harness: Callable[..., Harness],
) -> None:
    prediction_log.log(days(bikeshare, 1, 2))
    # A view with a bug that only some rows hit: dividing by zero on Jan 1.
    pg_db.execute(
        "CREATE VIEW scored AS SELECT id, ts, temp, atemp, windspeed, season, weathersit, "
        "workingday, predicted, hum / (CASE WHEN ts < '2011-01-02' THEN 0 ELSE 1 END) AS hum "
        "FROM predictions"
    )
    h = harness(Clock(day(3) + timedelta(hours=1)), table="scored")
    first, second = h.poll()
    with pytest.raises(BatchRejected) as err:
        h.source.load(first)
    assert err.value.check == "read_error"
    assert "reading window 2011-01-01T00:00:00+00:00/86400 from scored failed" in str(err.value)
    assert "division by zero" in str(err.value)
    assert "fix the view" in err.value.hint
    h.store.claim_batch("bikes", first.batch_id, first.uri)
    h.reject(first, err.value)  # the pipeline quarantines it; the watermark moves on
    assert [r.batch_id for r in h.poll()] == [wid(2)]
    assert len(h.finish(second)) == len(days(bikeshare, 2))
    assert h.metric("watcher_source_up") == 1


def test_not_postgres_is_a_config_error(store: StateStore, metrics: Metrics) -> None:
    cfg = SqlSourceConfig(dsn="mysql://u:pw@db/x", table="t")
    with pytest.raises(ConfigError, match=r"mysql://u:\*\*\*@db/x is not PostgreSQL"):
        SqlSource("m", cfg, COLUMNS, store, metrics)


# ---- connections and secrets ---------------------------------------------------------------


def test_password_from_file_is_used_and_never_shown(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    pg_db: PgDatabase,
    store: StateStore,
    metrics: Metrics,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = tmp_path / "pg_password"
    secret.write_text("s3cret-pw\n")
    prediction_log.log(days(bikeshare, 1))
    ok = SqlSource(
        "bikes", sql_cfg(pg_db, password_file=secret), COLUMNS, store, metrics, clock=Clock(day(3))
    )
    # Trust authentication accepts any password: this shows the file is read and passed on.
    assert len(asyncio.run(ok.poll())) == 1
    assert "s3cret-pw" not in ok.dsn
    asyncio.run(ok.close())

    down = SqlSource(
        "bikes",
        sql_cfg(pg_db, dsn="postgresql://postgres@127.0.0.1:1/nowhere", password_file=secret),
        COLUMNS,
        store,
        metrics,
        clock=Clock(day(3)),
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceError) as err:
        asyncio.run(down.poll())
    message = str(err.value)
    assert "postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere is unreachable" in message
    assert "resumes from its watermark" in message
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in caplog.text
    assert metrics.registry.get_sample_value("watcher_source_up", {"model": "bikes"}) == 0
    asyncio.run(down.close())


def test_connections_killed_between_and_during_reads_are_recovered(
    prediction_log: PredictionLog,
    pg_db: PgDatabase,
    harness: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pg_db.execute(
        "INSERT INTO predictions (id, ts, temp, atemp, hum, windspeed, season, weathersit, "
        "workingday, predicted) SELECT 'g' || i, timestamptz '2011-01-01 00:00+00' "
        "+ i * interval '1 second', i, 0.3, 0.5, 0.1, 1, 'clear', 1, 100 "
        "FROM generate_series(0, 59999) AS i"
    )
    h = harness(Clock(day(3)), chunk_rows=100, max_rows_per_window=100_000)
    (ref,) = h.poll()
    assert pg_db.terminate_watcher_connections() >= 1  # the idle pooled connection
    assert h.poll() == [ref]  # pre-ping replaced it

    result: dict[str, Any] = {}

    def load() -> None:
        try:
            result["frame"] = h.source.load(ref)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    with caplog.at_level(logging.WARNING):
        reader = threading.Thread(target=load)
        killed = 0
        # A columnar read (ADBC) of 60k rows is over in a few tens of ms: too quick to catch
        # by polling. Another session holds the table locked, so the window's read waits,
        # inside its transaction, until the kill lands; the lock goes with the kill.
        with psycopg.connect(pg_db.conninfo) as locker:
            locker.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
            reader.start()
            deadline = time.monotonic() + 30
            while not killed and reader.is_alive() and time.monotonic() < deadline:
                if pg_db.scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'watcher:bikes' AND wait_event_type = 'Lock'"
                ):
                    killed = pg_db.terminate_watcher_connections()
                time.sleep(0.02)
            locker.rollback()
        reader.join(60)
    assert killed >= 1, "the read finished before it could be interrupted"
    assert "error" not in result, result.get("error")
    assert len(result["frame"]) == 60_000  # read again in full after the retry
    assert (
        "database connection lost; trying window 2011-01-01T00:00:00+00:00/86400 again"
        in caplog.text
    )


def test_columnar_read_gives_the_frame_the_row_reader_gives(
    prediction_log: PredictionLog, pg_db: PgDatabase, harness: Callable[..., Harness]
) -> None:
    # 30,000 rows capped to 20,000: above ARROW_MIN_ROWS, so the window is read into Arrow
    # by ADBC. NULLs in numbers, integer categories and text; text that is literally \\N
    # or holds commas, quotes and a newline; microsecond timestamps; labels for a third.
    pg_db.execute(
        "INSERT INTO predictions (id, ts, temp, atemp, hum, windspeed, season, weathersit, "
        "workingday, predicted) SELECT 'c' || i, timestamptz '2011-01-01 00:00+00' "
        "+ i * interval '2 seconds' + interval '123 microseconds', "
        "CASE WHEN i % 7 = 0 THEN NULL ELSE i / 3.0 END, 0.3, 0.5, 0.1, "
        "CASE WHEN i % 11 = 0 THEN NULL ELSE i % 4 END, "
        "(ARRAY['clear', NULL, 'a,\"b\"' || chr(10) || 'c', '\\N'])[1 + i % 4], 1, i % 100 "
        "FROM generate_series(0, 29999) AS i"
    )
    pg_db.execute(
        "INSERT INTO labels (id, label) SELECT 'c' || i, i FROM generate_series(0, 29999, 3) AS i"
    )
    h = harness(Clock(day(3)), max_rows_per_window=20_000)
    (ref,) = h.poll()
    columnar = h.source.load(ref)
    h.source.columnar = False
    rows = h.source.load(ref)
    assert len(columnar) == 20_000
    assert columnar["weathersit"].isna().any()
    assert (columnar["weathersit"] == "\\N").any()
    assert columnar["bikers"].notna().any()
    pd.testing.assert_frame_equal(columnar, rows)


def test_connection_killed_during_a_columnar_read_is_retried(
    prediction_log: PredictionLog,
    pg_db: PgDatabase,
    harness: Callable[..., Harness],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 300,000 rows in one window: ADBC's own connection is busy with it for a while, long
    # enough to be killed mid-read; the window is then read again in full.
    pg_db.execute(
        "INSERT INTO predictions (id, ts, temp, atemp, hum, windspeed, season, weathersit, "
        "workingday, predicted) SELECT 'k' || i, timestamptz '2011-01-01 00:00+00' "
        "+ i * interval '200 ms', i, 0.3, 0.5, 0.1, 1, 'clear', 1, 100 "
        "FROM generate_series(0, 299999) AS i"
    )
    h = harness(Clock(day(3)), max_rows_per_window=1_000_000)
    (ref,) = h.poll()
    result: dict[str, Any] = {}

    def load() -> None:
        try:
            result["frame"] = h.source.load(ref)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    with caplog.at_level(logging.WARNING):
        reader = threading.Thread(target=load)
        reader.start()
        killed = 0
        deadline = time.monotonic() + 60
        while not killed and reader.is_alive() and time.monotonic() < deadline:
            # The window's SELECT itself (not the count before it) on a watcher connection.
            killed = int(
                pg_db.scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'watcher:bikes' "
                    "AND state = 'active' AND query LIKE 'SELECT t.%'"
                )
            )
            time.sleep(0.01)
        reader.join(120)
    assert killed >= 1, "the read finished before it could be interrupted"
    assert "error" not in result, result.get("error")
    assert len(result["frame"]) == 300_000
    assert result["frame"]["id"].is_unique
    assert "database connection lost; trying window" in caplog.text


# ---- labels --------------------------------------------------------------------------------


def test_labels_join_by_id_newest_wins_and_training_window(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    pg_db: PgDatabase,
    harness: Callable[..., Harness],
) -> None:
    two_days = days(bikeshare, 1, 2)
    prediction_log.log(two_days)
    jan1 = days(bikeshare, 1)
    labelled = jan1.head(10)
    early = datetime(2011, 1, 3, tzinfo=UTC)
    prediction_log.label([(i, -1.0) for i in labelled["id"]], at=early)  # later corrected
    prediction_log.label(
        zip(labelled["id"], labelled["bikers"], strict=True), at=early + timedelta(days=1)
    )
    h = harness(Clock(day(5)))

    labels = h.source.load_labels(day(1), day(2))
    assert labels["id"].tolist() == labelled["id"].tolist()
    assert labels["bikers"].tolist() == labelled["bikers"].tolist()
    assert list(labels.columns) == ["id", "ts", "predicted", "bikers", "labelled_at"]
    as_of = h.source.load_labels(day(1), day(2), labelled_before=early + timedelta(hours=1))
    assert set(as_of["bikers"]) == {-1.0}

    window = h.source.load(h.poll()[0])
    assert window["bikers"].notna().sum() == 10

    cfg = sql_cfg(pg_db)
    training = read_training_window(
        cfg, COLUMNS, "2011-01-01T00:00:00+00:00", "2011-01-03T00:00:00"
    )
    assert len(training) == len(two_days)
    assert list(training.columns) == WINDOW_COLUMNS
    assert training["bikers"].notna().sum() == 10
    assert (
        training.loc[training["id"].isin(labelled["id"]), "bikers"].tolist()
        == labelled["bikers"].tolist()
    )
    sample = read_training_window(cfg, COLUMNS, day(1), day(3), max_rows=20)
    assert len(sample) == 20
    assert sample.attrs["sampled_from"] == len(two_days)


# ---- the daemon on a live table -------------------------------------------------------------


def daemon_settings(tmp: Path, db: PgDatabase, bikeshare: pd.DataFrame, table: str) -> Settings:
    reference = tmp / "reference.parquet"
    days(bikeshare, *range(1, 22))[[*NUMERIC, *CATEGORICAL, "predicted"]].to_parquet(reference)
    listed = ", ".join(f'"{c}"' for c in NUMERIC)
    cats = ", ".join(f'"{c}"' for c in CATEGORICAL)
    config = tmp / "watcher.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp / "state"}"
poll_interval_seconds = 0.2

[metrics]
enabled = false

[registry]
path = "{tmp / "registry"}"

[models.bikes]
reference = "{reference}"

[models.bikes.source]
kind = "sql"
dsn = "{db.url}"
table = "{table}"
window_seconds = 86400
allowed_lateness_seconds = 3600
late_check_interval_seconds = 0
labels_table = "labels"

[models.bikes.columns]
numeric = [{listed}]
categorical = [{cats}]
prediction = "predicted"
id = "id"
timestamp = "ts"
target = "bikers"
"""
    )
    return load_config(config)


Done = Callable[[StateStore, CollectorRegistry], bool]


def daemon_clock(monkeypatch: pytest.MonkeyPatch, now: datetime) -> Clock:
    """The clock of the daemon's SQL source, set by the test: "now" is when the days logged
    so far are over (plus the allowed lateness). On the wall clock every 2011 window is long
    ready: a poll after the last logged day would skip the days to come as empty windows,
    and rows logged for them later would be too late to be seen."""
    clock = Clock(now)

    class Clocked(SqlSource):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, clock=clock, **kwargs)

    # The daemon's source factory imports SqlSource from its module when it builds one.
    monkeypatch.setattr("watcher.sources.sql.source.SqlSource", Clocked)
    return clock


def over(last_day: int) -> datetime:
    """When windows up to `last_day` are ready (lateness 3600 s in daemon_settings)."""
    return day(last_day + 1) + timedelta(seconds=3601)


class DaemonRun:
    """The real daemon in this process (its own event loop), stopped like SIGTERM would.

    `phases`: wait for each condition in turn, then run its action (in a thread, while the
    daemon keeps running); `meanwhile` runs between checks of every phase.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()

    def until(
        self,
        done: Done,
        *then: tuple[Callable[[], None], Done],
        meanwhile: Callable[[], None] | None = None,
        timeout: float = 120,
    ) -> None:
        phases: list[tuple[Callable[[], None] | None, Done]] = [(None, done), *then]

        async def main() -> None:
            store = StateStore(self.settings.daemon.state_dir / "state.db")
            try:
                async with run_daemon(self.settings, self.registry) as daemon:
                    deadline = time.monotonic() + timeout
                    for action, condition in phases:
                        if action is not None:
                            await asyncio.to_thread(action)
                        while not condition(store, self.registry):
                            assert daemon.alive, f"the daemon stopped: {daemon.task.exception()!r}"
                            if time.monotonic() >= deadline:
                                raise AssertionError(self._timed_out(store))
                            if meanwhile is not None:
                                await asyncio.to_thread(meanwhile)
                            await asyncio.sleep(0.1)
            finally:
                store.close()

        asyncio.run(main())

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"model": "bikes", **labels}) or 0.0

    def _timed_out(self, store: StateStore) -> str:
        """What the daemon had done, and where each thread is, when the wait gave up."""
        samples = [
            f"{s.name}{s.labels} = {s.value}"
            for family in self.registry.collect()
            if family.name.startswith(("watcher_batches", "watcher_late", "watcher_source"))
            for s in family.samples
        ]
        return (
            f"timed out waiting for the daemon; {len(store.processed_ids('bikes'))} windows "
            f"processed; metrics: {samples}\n{thread_stacks()}"
        )


def scored(n: int) -> Callable[[StateStore, CollectorRegistry], bool]:
    return lambda store, _: len(store.processed_ids("bikes")) >= n


def decisions_per_batch(state_db: Path) -> dict[str, int]:
    conn = sqlite3.connect(state_db)
    try:
        rows = conn.execute(
            "SELECT batch_id, count(*) FROM decisions WHERE model = 'bikes' GROUP BY batch_id"
        ).fetchall()
    finally:
        conn.close()
    return {str(b): int(n) for b, n in rows}


@pytest.mark.slow
def test_daemon_scores_every_window_once_through_killed_connections_and_a_restart(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    pg_db: PgDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = daemon_settings(tmp_path, pg_db, bikeshare, "predictions")
    clock = daemon_clock(monkeypatch, over(40))
    prediction_log.log(days(bikeshare, *range(1, 41)))
    kills: list[int] = []
    last_kill = [0.0]

    def chaos() -> None:
        # pg_terminate_backend on the daemon's connections while they are busy, at most
        # every 0.2 s so that the daemon also gets work done in between.
        if time.monotonic() - last_kill[0] >= 0.2:
            killed = pg_db.terminate_watcher_connections(busy_only=True)
            if killed:
                kills.append(killed)
                last_kill[0] = time.monotonic()

    def all_scored_under_fire(store: StateStore, registry: CollectorRegistry) -> bool:
        # Kills keep coming until at least two hit a read or a poll mid-way.
        hits = caplog.text.count("database connection lost")
        return scored(40)(store, registry) and len(kills) >= 2 and hits >= 2

    first = DaemonRun(settings)
    with caplog.at_level(logging.WARNING):
        first.until(all_scored_under_fire, meanwhile=chaos)
    # Jan 27 (a snowstorm) has 8 rows: rejected as too few, which is processed all the same.
    assert first.value("watcher_batches_rejected_total", reason="too_few_rows") == 1

    # Late rows for a scored day, and new days, while the daemon keeps running.
    def late_and_new(store: StateStore, registry: CollectorRegistry) -> bool:
        late = registry.get_sample_value("watcher_late_rows_total", {"model": "bikes"})
        return len(store.processed_ids("bikes")) >= 45 and late == 5

    second = DaemonRun(settings)
    # (Day 30 is within the last late_check_windows=24 windows of the watermark.)
    prediction_log.log(late_rows(bikeshare, 30, 5, "late"))
    prediction_log.log(days(bikeshare, *range(41, 46)))
    clock.now = over(45)
    second.until(late_and_new)
    assert second.value("watcher_batches_total", outcome="scored") == 5  # days 41-45 only
    assert second.value("watcher_source_up") == 1

    third = DaemonRun(settings)  # a restart: only the new days are scored
    prediction_log.log(days(bikeshare, 46, 47))
    clock.now = over(47)
    third.until(scored(47))
    assert third.value("watcher_batches_total", outcome="scored") == 2
    assert third.value("watcher_late_rows_total") == 0  # the 5 late rows were counted once

    state_db = tmp_path / "state" / "state.db"
    store = StateStore(state_db)
    try:
        assert sorted(store.processed_ids("bikes")) == sorted(wid(d) for d in range(1, 48))
        rejected = {d for d in range(1, 48) if store.batch_status("bikes", wid(d)) == "rejected"}
        progress = Progress.parse(store.watermark("sql:bikes"))
    finally:
        store.close()
    assert rejected == {27}
    per_batch = decisions_per_batch(state_db)  # one decision per scored window, no repeats
    assert per_batch == {wid(d): 1 for d in range(1, 48) if d != 27}
    assert progress.end == day(48).timestamp()
    assert progress.late_rows == 5


@pytest.mark.slow
def test_daemon_keeps_running_through_a_failing_view_a_type_change_and_null_timestamps(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    pg_db: PgDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = daemon_clock(monkeypatch, over(4))
    columns = "id, ts, temp, atemp, windspeed, season, weathersit, workingday, predicted"
    pg_db.execute(
        f"CREATE VIEW served AS SELECT {columns}, "
        "hum / (CASE WHEN ts >= '2011-01-02' AND ts < '2011-01-03' THEN 0 ELSE 1 END) AS hum "
        "FROM predictions"
    )
    prediction_log.log(days(bikeshare, 1, 2, 3, 4))
    no_ts = late_rows(bikeshare, 5, 3, "no-ts")
    no_ts["ts"] = None
    prediction_log.log(no_ts)
    settings = daemon_settings(tmp_path, pg_db, bikeshare, "served")
    run = DaemonRun(settings)

    def first_days_done() -> None:
        assert run.value("watcher_batches_rejected_total", reason="read_error") == 1
        assert run.value("watcher_batches_total", outcome="scored") == 3
        assert run.value("watcher_data_quality_violations_total", check="null_timestamp") == 1
        # The view is redeployed with hum as text, and new days arrive.
        pg_db.execute(
            f"DROP VIEW served; CREATE VIEW served AS SELECT {columns}, hum::text AS hum "
            "FROM predictions"
        )
        prediction_log.log(days(bikeshare, 5, 6))
        clock.now = over(6)

    def down(_: StateStore, registry: CollectorRegistry) -> bool:
        return registry.get_sample_value("watcher_source_up", {"model": "bikes"}) == 0

    def fix_view() -> None:
        assert "served.hum is text, but it is listed as a numeric feature" in caplog.text
        pg_db.execute(
            f"DROP VIEW served; CREATE VIEW served AS SELECT {columns}, hum FROM predictions"
        )

    def resumed(store: StateStore, registry: CollectorRegistry) -> bool:
        up = registry.get_sample_value("watcher_source_up", {"model": "bikes"}) == 1
        return up and len(store.processed_ids("bikes")) >= 6

    with caplog.at_level(logging.WARNING):
        run.until(scored(4), (first_days_done, down), (fix_view, resumed))

    store = StateStore(tmp_path / "state" / "state.db")
    try:
        assert store.batch_status("bikes", wid(2)) == "rejected"
        reason = store.batch_reason("bikes", wid(2)) or ""
        assert reason.startswith("read_error: reading window")
        assert "division by zero" in reason
        assert [store.batch_status("bikes", wid(d)) for d in (1, 3, 4, 5, 6)] == ["scored"] * 5
    finally:
        store.close()


def test_daemon_performance_from_the_labels_table(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    harness: Callable[..., Harness],
    tmp_path: Path,
) -> None:
    from watcher.config import ModelConfig
    from watcher.model_quality import PerformanceTracker

    two_days = days(bikeshare, 1, 2)
    prediction_log.log(two_days)
    labelled = two_days.head(30)
    prediction_log.label(zip(labelled["id"], labelled["bikers"], strict=True), at=day(3))
    h = harness(Clock(day(5)))
    model_cfg = ModelConfig(source=h.source.cfg, columns=COLUMNS)
    perf = PerformanceTracker("bikes", model_cfg, tmp_path, h.store, h.metrics, h.source)
    assert perf.check_labels() is None  # no window finished yet: nothing to evaluate
    for ref in h.poll():
        h.finish(ref)
    result = perf.check_labels()
    assert result is not None
    expected = float((labelled["predicted"] - labelled["bikers"]).abs().mean())
    assert result["mae"] == pytest.approx(expected)
    assert h.metric("watcher_model_performance", metric="mae") == pytest.approx(expected)
    # The performance signal's history: each labelled window is a period, kept with the
    # version that scored it.
    with h.store.transaction() as conn:
        periods = h.store.label_periods(conn, "bikes", "test")
    assert len(periods) == 2  # the 30 labelled hours fall in two daily windows
    assert {p.metric for p in periods} == {"mae"}
    assert sum(p.rows for p in periods) == 30
    weighted = sum(p.loss * p.rows for p in periods) / 30
    assert weighted == pytest.approx(expected)
    h.close()


def test_a_score_column_is_read_and_the_performance_signal_follows_its_roc_auc(
    prediction_log: PredictionLog,
    bikeshare: pd.DataFrame,
    pg_db: PgDatabase,
    harness: Callable[..., Harness],
    tmp_path: Path,
) -> None:
    """`columns.score` on a sql source: windows and labels carry it, and each labelled
    window's period is its ROC AUC; a window whose labels hold one class is skipped."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from watcher.config import ModelConfig, RetrainConfig
    from watcher.model_quality import PerformanceTracker

    two_days = days(bikeshare, 1, 2)
    prediction_log.log(two_days)
    # The serving system logs the probability that the hour is busy beside its prediction.
    pg_db.execute("ALTER TABLE predictions ADD COLUMN busy double precision")
    pg_db.execute("UPDATE predictions SET busy = 1 / (1 + exp(-(predicted - 100) / 50))")
    pg_db.execute("UPDATE predictions SET predicted = CASE WHEN busy > 0.5 THEN 1 ELSE 0 END")
    jan1, jan2 = days(bikeshare, 1), days(bikeshare, 2).head(6)
    is_busy = (jan1["bikers"] > jan1["bikers"].median()).astype(float)
    prediction_log.label(zip(jan1["id"], is_busy, strict=True), at=day(3))
    prediction_log.label([(i, 1.0) for i in jan2["id"]], at=day(3))  # one class only
    columns = COLUMNS.model_copy(update={"score": "busy", "target": "label"})
    h = harness(Clock(day(5)), columns=columns)

    labels = h.source.load_labels(day(1), day(2))
    assert list(labels.columns) == ["id", "ts", "predicted", "busy", "label", "labelled_at"]
    windows = [h.finish(ref) for ref in h.poll()]
    assert len(windows) == 2
    expected_score = 1 / (1 + np.exp(-(jan1["predicted"].to_numpy() - 100) / 50))
    np.testing.assert_allclose(windows[0]["busy"].to_numpy(), expected_score, rtol=1e-12)

    model_cfg = ModelConfig(
        source=h.source.cfg,
        columns=columns,
        retrain=RetrainConfig(task="classification", primary_metric="roc_auc"),
    )
    perf = PerformanceTracker("bikes", model_cfg, tmp_path, h.store, h.metrics, h.source)
    read = perf.read_labels()
    assert read is not None
    [period] = read.periods
    assert period.period == wid(1)
    assert period.metric == "roc_auc"
    assert period.rows == 24
    assert period.value == pytest.approx(roc_auc_score(is_busy, expected_score), abs=1e-9)
    assert read.skipped == {
        wid(2): f"period {wid(2)} is left out of the performance signal: its 6 labelled "
        "row(s) hold one class only (all 1.0), and ROC AUC needs both"
    }
