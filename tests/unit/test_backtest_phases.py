"""A schedule's phases in the backtest: when each phase retrains, how the replays are
grouped, their mean, and the frontier traced from the means."""

from __future__ import annotations

import pytest

from watcher import backtest_report as report
from watcher.backtest import (
    SCHEDULES,
    PolicyResult,
    Schedule,
    build_triggers,
    group_phases,
    schedule_fires,
)


def _result(
    name: str, kind: str, runs: int, errors: list[float], every: int | None = None, phase: int = 0
) -> PolicyResult:
    r = PolicyResult(name, kind, every, "mae")  # type: ignore[arg-type]
    r.period_errors = list(errors)
    r.period_rows = [100] * len(errors)
    r.runs = runs
    r.phase = phase if kind == "schedule" else None
    return r


def test_each_phase_retrains_every_k_periods_starting_at_its_offset() -> None:
    served = range(1, 13)
    assert [n for n in served if schedule_fires(n, 4)] == [4, 8, 12]  # phase 0, as before
    assert [n for n in served if schedule_fires(n, 4, 1)] == [1, 5, 9]
    assert [n for n in served if schedule_fires(n, 4, 3)] == [3, 7, 11]
    assert all(schedule_fires(n, 1) for n in served)
    # Every served period is retrained after by exactly one phase of a schedule.
    for k in SCHEDULES:
        for n in served:
            assert sum(schedule_fires(n, k, j) for j in range(k)) == 1


def test_the_triggers_hold_every_phase_of_every_schedule_phase_zero_first() -> None:
    schedules = [t for t in build_triggers() if isinstance(t, Schedule)]
    assert len(schedules) == sum(SCHEDULES)
    assert [(t.every, t.phase) for t in schedules][:4] == [(1, 0), (2, 0), (2, 1), (3, 0)]
    assert schedules[2].name == "every 2 periods, phase 1"
    assert schedules[1].name == "every 2 periods"


def test_grouping_keeps_one_entry_per_schedule_with_its_phases() -> None:
    never = _result("never", "never", 0, [10.0])
    a0 = _result("every 2 periods", "schedule", 2, [6.0], 2, 0)
    a1 = _result("every 2 periods, phase 1", "schedule", 3, [8.0], 2, 1)
    policy = _result("policy", "policy", 1, [7.0])
    grouped = group_phases([never, a0, a1, policy])
    assert grouped == [never, a0, policy]
    assert a0.phases == [a0, a1]
    with pytest.raises(ValueError, match="phase 0 must come first"):
        group_phases([_result("x", "schedule", 1, [1.0], 3, 1)])


def test_the_phase_mean_averages_runs_and_each_periods_error() -> None:
    r = _result("every 2 periods", "schedule", 2, [4.0, 6.0], 2, 0)
    r.phases = [r, _result("p1", "schedule", 3, [8.0, 10.0], 2, 1)]
    r.phases[1].deployed, r.deployed = 3, 1
    m = report.phase_mean(r)
    assert m.runs == 2.5
    assert m.deployed == 2.0
    assert m.period_errors == [6.0, 8.0]
    assert m.error == pytest.approx((r.error + r.phases[1].error) / 2)
    # Not a schedule, or one phase only: unchanged.
    p = _result("policy", "policy", 1, [7.0, 7.0])
    assert report.phase_mean(p) is p


def test_a_lucky_phase_lowers_the_single_phase_frontier_not_the_averaged_one() -> None:
    """Every 2 periods at phase 0 is lucky (5) but its phases average 8: a policy at 7 with
    as many runs is 2 above the single-phase frontier and 1 below the averaged one."""
    n = 10
    never = _result("never", "never", 0, [10.0] * n)
    weekly = _result("every period", "schedule", 10, [4.0] * n, 1)
    weekly.phases = [weekly]
    two = _result("every 2 periods", "schedule", 5, [5.0] * n, 2, 0)
    two.phases = [two, _result("every 2 periods, phase 1", "schedule", 5, [11.0] * n, 2, 1)]
    policy = _result("policy", "policy", 5, [7.0] * n)
    results = [never, weekly, two, policy]
    assert report.frontier(results) == ([0, 5, 10], [10.0, 5.0, 4.0])
    assert report.frontier(report.averaged(results)) == ([0, 5, 10], [10.0, 8.0, 4.0])
    d = report.distances(results)[3]
    assert d.single == pytest.approx(2.0)  # 7 against the lucky 5
    assert d.gap == pytest.approx(-1.0)  # 7 against the phases' mean, 8
    assert d.interval == pytest.approx((-1.0, -1.0))  # the same on every period: no noise
    assert d.single_interval == pytest.approx((2.0, 2.0))
    # The schedule itself is its phase mean, on the averaged frontier.
    assert report.distances(results)[2].gap == pytest.approx(0.0)
