"""Shutdown is bounded: a batch still being scored after `shutdown_timeout_seconds` is
abandoned safely and scored at the next start."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
from harness import run_daemon
from prometheus_client import CollectorRegistry
from support import drop, frame, write_config

from watcher.config import load_config
from watcher.daemon import Daemon
from watcher.state import StateStore


def test_stop_abandons_a_slow_batch_in_bounded_time_and_restart_scores_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, extra_top="")
    settings = load_config(cfg).model_copy(deep=True)
    settings.daemon.shutdown_timeout_seconds = 0.5
    drop(tmp_path / "incoming", "slow.parquet", frame(200, seed=5))

    started = threading.Event()
    release = threading.Event()

    async def first_run() -> float:
        daemon = Daemon(settings, CollectorRegistry())
        real = daemon.pipeline.process

        def stuck(rt, ref):  # type: ignore[no-untyped-def]
            # Scoring that takes far longer than the shutdown allows (a stand-in for a huge
            # batch): it claims the batch as the real pipeline does, then blocks.
            daemon.store.claim_batch(rt.name, ref.batch_id, ref.uri)
            started.set()
            release.wait(60)
            return real(rt, ref)

        daemon.pipeline.process = stuck  # type: ignore[method-assign]
        task = asyncio.create_task(daemon.run())
        # The blocking function signals a threading.Event; wait for it off the loop.
        assert await asyncio.to_thread(started.wait, 30)
        t0 = time.monotonic()
        daemon.request_stop()
        await asyncio.wait_for(task, 10)
        return time.monotonic() - t0

    took = asyncio.run(first_run())
    assert took < 5.0, f"shutdown took {took:.1f}s with a 0.5s timeout"
    store = StateStore(settings.daemon.state_dir / "state.db")
    try:
        assert store.batch_status("m", "slow.parquet") == "claimed"  # nothing committed
    finally:
        store.close()
    release.set()  # the abandoned thread may now finish; its result goes nowhere

    async def second_run() -> None:
        check = StateStore(settings.daemon.state_dir / "state.db")
        try:
            async with run_daemon(settings) as daemon:
                await daemon.until(
                    lambda: check.batch_status("m", "slow.parquet") == "scored", 30, "rescored"
                )
        finally:
            check.close()

    asyncio.run(second_run())


def test_only_a_second_sigint_forces_an_exit(tmp_path: Path) -> None:
    """A supervisor repeating SIGTERM asks politely twice; a person pressing Ctrl-C twice
    means it."""
    settings = load_config(write_config(tmp_path, extra_top=""))
    daemon = Daemon(settings, CollectorRegistry())
    exits: list[int] = []
    daemon._force_exit = exits.append
    try:
        daemon.request_stop(signal.SIGTERM)
        daemon.request_stop(signal.SIGTERM)
        daemon.request_stop(signal.SIGTERM)
        assert daemon.stop.is_set()
        assert exits == []
        daemon.request_stop(signal.SIGINT)
        assert exits == []  # the first Ctrl-C is a stop request like SIGTERM
        daemon.request_stop(signal.SIGINT)
        assert exits == [1]
    finally:
        daemon.store.close()


def test_a_background_worker_that_will_not_stop_is_cancelled_with_a_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers get `background_shutdown_timeout_seconds` to end their round; one that
    does not is cancelled with a message that says why (and its close() still runs), one
    that does ends on its own."""
    cancelled: dict[str, str | None] = {}
    closed: list[str] = []

    class Worker:
        interval_seconds = 0.01

        def __init__(self, name: str, round_seconds: float) -> None:
            self.name = name
            self.round_seconds = round_seconds

        async def run_once(self) -> None:
            try:
                await asyncio.sleep(self.round_seconds)
            except asyncio.CancelledError as exc:
                cancelled[self.name] = exc.args[0] if exc.args else None
                raise

        async def close(self) -> None:
            closed.append(self.name)

    workers = [Worker("stuck-worker", 3600), Worker("quick-worker", 0.01)]
    monkeypatch.setattr("watcher.daemon.build_workers", lambda *args: workers)
    settings = load_config(write_config(tmp_path, extra_top="")).model_copy(deep=True)
    settings.daemon.background_shutdown_timeout_seconds = 0.4

    async def scenario() -> float:
        async with run_daemon(settings) as running:
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            running.daemon.request_stop()
            await asyncio.wait_for(asyncio.shield(running.task), 10)
            return time.monotonic() - t0

    with caplog.at_level("WARNING"):
        took = asyncio.run(scenario())
    assert 0.35 <= took < 3.0, took
    assert cancelled == {
        "stuck-worker": "watcher is shutting down; stuck-worker did not stop in 0.4s"
    }
    assert sorted(closed) == ["quick-worker", "stuck-worker"]
    assert "cancelling background task stuck-worker" in caplog.text


def test_the_background_shutdown_timeout_is_configured() -> None:
    from watcher.config import DaemonConfig

    assert DaemonConfig().background_shutdown_timeout_seconds == 5.0
    with pytest.raises(ValueError, match="greater than 0"):
        DaemonConfig(background_shutdown_timeout_seconds=0)


def test_a_state_database_failing_at_start_up_is_a_clear_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    """The database drops the connection while watcher starts (a write, which is not asked
    again): `watcher run` exits 2 with a message that says what and what to do, and the
    start-up's half-made state is shut down."""
    import sqlite3

    from watcher.state import StateUnavailable

    settings = load_config(write_config(tmp_path, extra_top=""))
    daemon = Daemon(settings, CollectorRegistry())

    async def at_start(name, cfg):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("disk I/O error")

    daemon.references.at_start = at_start  # type: ignore[method-assign]
    with pytest.raises(StateUnavailable, match="failed while watcher was starting: disk I/O") as e:
        asyncio.run(daemon.run())
    assert "supervisor starts it again" in (e.value.hint or "")
    assert daemon.stop.is_set()  # shut down: the lock released, the store closed
    with pytest.raises(StateUnavailable, match="is closed"):
        daemon.store.processed_ids("m")
