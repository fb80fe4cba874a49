"""One backoff for every retry that waits: the outbox's delivery rounds (triggers, mails,
webhooks) and Airflow's login block."""

from __future__ import annotations

import inspect

import pytest

from watcher.state import backoff


@pytest.mark.parametrize(
    ("failures", "full"), [(0, 10.0), (1, 10.0), (2, 20.0), (3, 40.0), (6, 300.0), (10**6, 300.0)]
)
def test_doubles_per_failure_up_to_the_cap_jittered_down_to_half(
    failures: int, full: float
) -> None:
    waits = [backoff(failures, 10.0, 300.0) for _ in range(2000)]
    assert all(full / 2 <= w <= full for w in waits)
    # Spread over the half below the full wait, not pinned to one end.
    assert min(waits) < full * 0.55
    assert max(waits) > full * 0.95


def test_without_jitter_the_wait_is_exact() -> None:
    assert [backoff(n, 30.0, 900.0, jitter=False) for n in (1, 2, 3, 6, 7)] == [
        30.0,
        60.0,
        120.0,
        900.0,
        900.0,
    ]


def test_every_retry_that_waits_uses_it() -> None:
    """No second formula or jitter hides in a dispatcher or the gateway."""
    from watcher.airflow import dispatcher as triggers
    from watcher.airflow import gateway
    from watcher.alerts import dispatcher as mails
    from watcher.alerts import webhook

    for module in (triggers, gateway, mails, webhook):
        source = inspect.getsource(module)
        assert "backoff(" in source, module.__name__
        assert "random" not in source, module.__name__
        assert "2 **" not in source, module.__name__
