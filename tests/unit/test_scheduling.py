"""Models scored concurrently inside one daemon (watcher.scheduling), and the replica keys
of the typed config."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from watcher.scheduling import ModelScheduler
from watcher.state.config import StateConfig


def test_a_slow_model_holds_one_worker_and_the_others_go_on() -> None:
    async def scenario() -> tuple[list[str], float]:
        scheduler = ModelScheduler(workers=2)
        finished: list[str] = []
        release = asyncio.Event()

        async def work(name: str) -> None:
            if name == "slow":
                await release.wait()
            else:
                await asyncio.sleep(0.01)
            finished.append(name)

        started = time.monotonic()
        for _ in range(5):  # five rounds of the main loop, each waiting at most 0.5 s
            await scheduler.round(["slow", "a", "b", "c"], work, wait_seconds=0.5)
            assert scheduler.running <= {"slow", "a", "b", "c"}
        elapsed = time.monotonic() - started
        assert "slow" in scheduler.busy  # still holding its worker
        release.set()
        await scheduler.drain()
        return finished, elapsed

    finished, elapsed = asyncio.run(scenario())
    # a, b and c were scored in every round although "slow" never finished before the end.
    assert finished.count("a") == 5
    assert finished.count("b") == 5
    assert finished.count("c") == 5
    assert finished.count("slow") == 1
    assert elapsed < 2.0


def test_one_worker_scores_the_models_one_after_another_in_order() -> None:
    async def scenario() -> list[tuple[str, str]]:
        scheduler = ModelScheduler(workers=1)
        events: list[tuple[str, str]] = []

        async def work(name: str) -> None:
            events.append(("start", name))
            await asyncio.sleep(0.01)
            events.append(("end", name))

        await scheduler.round(["x", "y", "z"], work, wait_seconds=5)
        return events

    events = asyncio.run(scenario())
    assert events == [
        ("start", "x"),
        ("end", "x"),
        ("start", "y"),
        ("end", "y"),
        ("start", "z"),
        ("end", "z"),
    ]


def test_replica_keys_are_validated() -> None:
    cfg = StateConfig()
    assert (cfg.lease_seconds, cfg.heartbeat_seconds, cfg.claim_seconds) == (30.0, 10.0, 120.0)
    with pytest.raises(ValidationError, match=r"heartbeat_seconds .* at most half"):
        StateConfig(lease_seconds=10, heartbeat_seconds=6)
    with pytest.raises(ValidationError, match="lease_seconds"):
        StateConfig(lease_seconds=0.5, heartbeat_seconds=0.1)
