"""Shutdown is bounded: a batch still being scored after `shutdown_timeout_seconds` is
abandoned safely and scored at the next start."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

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
        daemon = Daemon(settings, CollectorRegistry())
        task = asyncio.create_task(daemon.run())
        check = StateStore(settings.daemon.state_dir / "state.db")
        try:
            for _ in range(300):
                if check.batch_status("m", "slow.parquet") == "scored":
                    break
                await asyncio.sleep(0.1)
            assert check.batch_status("m", "slow.parquet") == "scored"
        finally:
            check.close()
        daemon.request_stop()
        await asyncio.wait_for(task, 30)

    asyncio.run(second_run())
