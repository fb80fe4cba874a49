"""watcher.backtest_report: the period bootstrap behind the backtest's intervals."""

from __future__ import annotations

import numpy as np
import pytest

from watcher import backtest_report as report
from watcher.backtest import PolicyResult


def _result(
    name: str, kind: str, runs: int, errors: list[float], every: int | None = None
) -> PolicyResult:
    r = PolicyResult(name, kind, every, "mae")  # type: ignore[arg-type]
    r.period_errors = list(errors)
    r.period_rows = [100] * len(errors)
    r.runs = runs
    return r


def _history(policy: list[float], periods: int = 40) -> list[PolicyResult]:
    """never at 10, weekly at 5 and every 4 periods at 8 on every period, and a policy."""
    return [
        _result("never", "never", 0, [10.0] * periods),
        _result("every period", "schedule", 40, [5.0] * periods, 1),
        _result("every 4 periods", "schedule", 10, [8.0] * periods, 4),
        _result("policy", "policy", 10, policy),
    ]


def test_a_noiseless_history_has_a_point_interval() -> None:
    results = _history([8.0] * 40)  # exactly the 4-period schedule
    boot = report.period_bootstrap(results, draws=200, seed=1)
    assert boot.shape == (200, 4)
    assert np.allclose(boot, [10.0, 5.0, 8.0, 8.0])
    assert report.gap_interval(results, 3, boot) == pytest.approx((0.0, 0.0))


def test_a_policy_below_the_frontier_in_every_period_is_below_in_every_draw() -> None:
    rng = np.random.default_rng(0)
    results = _history(list(7.0 + rng.uniform(-0.5, 0.5, 40)))  # frontier at 10 runs: 8
    boot = report.period_bootstrap(results, draws=500, seed=1)
    lo, hi = report.gap_interval(results, 3, boot)
    assert -1.5 < lo <= hi < 0  # gap -1 +- the noise, never above
    lo, hi = report.difference_interval(boot, 3, 2)
    assert hi < 0


def test_noise_around_the_frontier_gives_an_interval_across_zero() -> None:
    # The policy is the 4-period schedule's level with +-2 of week-to-week noise: its
    # point may land above or below, and the interval says it could be either.
    results = _history([8.0 + (2.0 if t % 2 else -2.0) for t in range(40)])
    boot = report.period_bootstrap(results, draws=1000, seed=3)
    lo, hi = report.gap_interval(results, 3, boot)
    assert lo < 0 < hi
    assert np.mean(boot[:, 3]) == pytest.approx(8.0, abs=0.1)


def test_the_draws_are_paired_and_deterministic() -> None:
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 3, 40)
    results = _history(list(8.0 + noise))
    results.append(_result("shifted", "policy", 10, list(8.5 + noise)))
    boot = report.period_bootstrap(results, draws=300, seed=7)
    # The same periods in every policy: a constant shift is exactly that in every draw.
    assert np.allclose(boot[:, 4] - boot[:, 3], 0.5)
    assert report.difference_interval(boot, 4, 3) == pytest.approx((0.5, 0.5))
    assert np.array_equal(boot, report.period_bootstrap(results, draws=300, seed=7))


def test_a_period_without_an_error_counts_for_nothing() -> None:
    results = _history([8.0] * 39 + [float("nan")])
    boot = report.period_bootstrap(results, draws=100, seed=0)
    assert np.allclose(boot[:, 3], 8.0)
