"""The replicas' share of the models (watcher.replicas), beat by beat, in one process on
both state backends: fair shares, a hand-over when a replica joins, take-over when one
stops beating, release on a clean stop, the fence and the duties lease."""

from __future__ import annotations

import time

import pytest
from fixtures_state import StateBackend
from prometheus_client import CollectorRegistry

from watcher.metrics import Metrics
from watcher.replicas import Replicas
from watcher.state import LeaseLost, StateStore
from watcher.state.config import StateConfig

MODELS = [f"m{i}" for i in range(7)]


def _replica(backend: StateBackend, name: str, lease: float = 30.0) -> tuple[Replicas, StateStore]:
    store = backend.open()
    cfg = StateConfig(lease_seconds=max(1.0, lease), heartbeat_seconds=0.25)
    replica = Replicas(store, MODELS, cfg, Metrics(CollectorRegistry()), owner=name)
    replica.lease_seconds = lease  # below the config's minimum: a fast test
    return replica, store


def test_fair_shares_hand_over_take_over_and_release(state_backend: StateBackend) -> None:
    a, store_a = _replica(state_backend, "a", lease=1.0)
    b, store_b = _replica(state_backend, "b", lease=1.0)
    try:
        a.beat()
        assert a.owned_models() == MODELS  # alone: every model
        assert a.has_duties()
        b.beat()  # joins: 2 live replicas, share 4; nothing free, so b takes nothing yet
        assert b.owned_models() == []
        a.beat()  # a is above its share and b below: a hands 3 idle models over
        assert len(a.owned_models()) == 4
        b.beat()
        assert sorted(a.owned_models() + b.owned_models()) == MODELS
        assert len(b.owned_models()) == 3
        assert b.metrics.unowned._value.get() == 0  # as b read the lease table last
        # b stops beating (hung): its leases run out, a takes its models over.
        time.sleep(1.2)
        assert b.owned_models() == []  # b no longer trusts its own leases either
        a.beat()
        a.beat()  # the second beat also takes what it saw free on the first
        assert a.owned_models() == MODELS
        # b's stale write is refused by the fence.
        lost = next(m for m in MODELS if m not in b.owned_models())
        with pytest.raises(LeaseLost), store_b.transaction(model=lost) as conn:
            conn.execute("INSERT INTO watermarks (key, value, updated_at) VALUES ('x', 'b', 0)")
        assert store_a.watermark("x") is None
        assert b.metrics.writes_fenced._value.get() == 1
        # A clean stop releases everything at once: b takes all on its next beat.
        a.stop()
        b.beat()
        b.beat()
        assert b.owned_models() == MODELS
        assert b.has_duties()
    finally:
        for replica, store in ((a, store_a), (b, store_b)):
            replica.stop()
            store.close()


def test_busy_models_are_not_handed_over(state_backend: StateBackend) -> None:
    a, store_a = _replica(state_backend, "a")
    b, store_b = _replica(state_backend, "b")
    try:
        a.beat()
        a.busy.update(MODELS[:5])  # being scored
        b.beat()
        a.beat()
        # share 4: a would hand 3 over, but only 2 of its models are idle.
        assert sorted(set(MODELS) - set(a.owned_models())) == MODELS[5:]
        assert not b.has_duties()
    finally:
        for replica, store in ((a, store_a), (b, store_b)):
            replica.stop()
            store.close()
