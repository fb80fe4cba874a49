"""The trigger signals on constructed series: what fires, how fast, and how often by chance."""

from __future__ import annotations

import numpy as np
import pytest

from watcher.config import PerformanceSignalConfig, PolicyConfig
from watcher.policy import PolicyInput, decide
from watcher.signals import (
    PeriodLoss,
    loss_of,
    max_age_reading,
    performance_reading,
    pooled,
    too_young,
    weighted_drift_share,
)

DETECTORS = ["cusum", "page_hinkley"]


def _first_alarm(losses: list[float], baseline: float, cfg: PerformanceSignalConfig) -> int | None:
    """The index of the first period after which the signal fires (the daemon re-reads the
    whole history since deployment at each label arrival, as here)."""
    periods: list[PeriodLoss] = []
    for i, loss in enumerate(losses):
        periods.append(PeriodLoss(loss, 100))
        if performance_reading(baseline, periods, cfg).fired:
            return i
    return None


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_step_change_in_loss_fires_within_a_few_periods(detector: str) -> None:
    rng = np.random.default_rng(1)
    cfg = PerformanceSignalConfig(detector=detector)  # type: ignore[arg-type]
    steady = list(30 + rng.normal(0, 1.5, 10))
    worse = list(45 + rng.normal(0, 1.5, 10))  # +50 % loss from period 10 on
    alarm = _first_alarm(steady + worse, 30.0, cfg)
    assert alarm is not None
    assert 10 <= alarm <= 13, f"{detector} fired at period {alarm}"


def test_a_model_worse_than_its_holdout_from_the_start_fires() -> None:
    # river's detectors learn the level from the stream; CUSUM knows the deployment level.
    cfg = PerformanceSignalConfig()
    # +33 % a period, less the 10 % tolerated: 0.23, 0.47, 0.70 -> fires on the third period
    assert _first_alarm([40.0] * 6, 30.0, cfg) == 2


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_stationary_noisy_loss_does_not_fire(detector: str) -> None:
    """False alarms: 200 independent runs of 50 periods each, loss noise of 10 % (sd)
    around the deployment level. CUSUM with the defaults (10 % tolerance, threshold 0.5)
    raised no alarm in 200 x 50 periods here; the bound stated is < 2 % of runs."""
    rng = np.random.default_rng(7)
    cfg = PerformanceSignalConfig(detector=detector)  # type: ignore[arg-type]
    alarms = sum(
        _first_alarm(list(30 * (1 + rng.normal(0, 0.1, 50))), 30.0, cfg) is not None
        for _ in range(200)
    )
    assert alarms / 200 < 0.02, f"{detector}: {alarms} of 200 runs raised a false alarm"


def test_the_examples_setting_on_stationary_noise() -> None:
    """The examples' CUSUM (tolerance 20 %, threshold 0.1, with a 3-period `max_age`
    floor), same setting as above: 12 of 200 runs of 50 periods raise a false alarm
    (6 %), one of them within the first 3 periods, which is as old as the floor lets a
    model get. The other rules that met every target on both examples alarm more often on
    the same series: CUSUM 5 %/0.25 in 103 runs (4 within 3 periods), Page-Hinkley
    5 %/0.1 in 198 (18); the one shipped before, 10 %/0.25, in 7 (0), but it was off the
    flights frontier."""
    rng = np.random.default_rng(7)

    def alarms(cfg: PerformanceSignalConfig) -> list[int]:
        series = [list(30 * (1 + rng.normal(0, 0.1, 50))) for _ in range(200)]
        found = [_first_alarm(s, 30.0, cfg) for s in series]
        return [a for a in found if a is not None]

    fired = alarms(PerformanceSignalConfig(detector="cusum", tolerance=0.2, threshold=0.1))
    assert len(fired) / 200 < 0.1, f"{len(fired)} of 200 runs raised a false alarm"
    assert sum(a < 3 for a in fired) / 200 < 0.02, sorted(fired)
    rng = np.random.default_rng(7)  # the same series for the neighbour
    neighbour = alarms(PerformanceSignalConfig(detector="cusum", tolerance=0.05, threshold=0.25))
    assert len(neighbour) > 4 * len(fired)


def test_the_cost_detector_fires_on_a_step_and_rarely_on_noise() -> None:
    """`cost` sums the excess since deployment without tolerance or reset (the staleness
    cost) and fires when it reaches the retrain cost. Measured here: a +50 % step fires
    1-3 periods after it (threshold 1.0); stationary noise of 10 % (sd) fires in 15 % of
    200 runs of 50 periods at threshold 1.0 (the sum is a random walk) and in none at 2.0."""
    cfg = PerformanceSignalConfig(detector="cost", threshold=1.0)
    rng = np.random.default_rng(1)
    for _ in range(20):
        losses = list(30 + rng.normal(0, 1.5, 10)) + list(45 + rng.normal(0, 1.5, 10))
        alarm = _first_alarm(losses, 30.0, cfg)
        assert alarm is not None
        assert 10 <= alarm <= 13, f"cost fired at period {alarm}"
    for threshold, bound in ((1.0, 0.2), (2.0, 0.02)):
        cfg = PerformanceSignalConfig(detector="cost", threshold=threshold)
        rng = np.random.default_rng(7)
        alarms = sum(
            _first_alarm(list(30 * (1 + rng.normal(0, 0.1, 50))), 30.0, cfg) is not None
            for _ in range(200)
        )
        assert alarms / 200 < bound, f"threshold {threshold}: {alarms} of 200 runs fired"


def test_the_min_baseline_rises_from_the_realized_level() -> None:
    """A holdout figure of 60 (a fast-changing week) hides a rise from a realized 30 to 40:
    the holdout baseline never fires, `min` (the lower of holdout and first period) does:
    +33 % a period less the 10 % tolerated is 0.23, 0.47, 0.70: fires on the fifth."""
    losses = [30.0, 30.0, 40.0, 40.0, 40.0]
    assert _first_alarm(losses, 60.0, PerformanceSignalConfig()) is None
    assert _first_alarm(losses, 60.0, PerformanceSignalConfig(baseline="min")) == 4
    # With an honest holdout figure below the first period, `min` keeps the holdout.
    reading = performance_reading(
        25.0, [PeriodLoss(30.0, 100)], PerformanceSignalConfig(baseline="min")
    )
    assert reading.numbers is not None
    assert reading.numbers["baseline"] == 25.0


def test_small_periods_are_pooled_until_they_hold_enough_rows() -> None:
    pools = pooled([PeriodLoss(1.0, 10), PeriodLoss(3.0, 10), PeriodLoss(2.0, 20)], 20)
    assert pools == [PeriodLoss(2.0, 20), PeriodLoss(2.0, 20)]
    assert pooled([PeriodLoss(1.0, 10)], 20) == []  # not enough yet: no evidence
    r = performance_reading(1.0, [PeriodLoss(9.0, 5)], PerformanceSignalConfig(min_rows=30))
    assert not r.fired
    assert "no labelled period of 30+ rows" in r.reason


def test_higher_is_better_metrics_become_losses() -> None:
    assert loss_of("accuracy", 0.9) == pytest.approx(0.1)
    assert loss_of("r2", 0.75) == pytest.approx(0.25)
    assert loss_of("mae", 12.0) == 12.0
    # an accuracy falling from 0.90 to 0.80 doubles the loss: fires at once
    r = performance_reading(
        loss_of("accuracy", 0.9),
        [PeriodLoss(loss_of("accuracy", 0.8), 500)],
        PerformanceSignalConfig(),
    )
    assert r.fired
    assert "+100%" in r.reason


def test_first_period_baseline_when_the_holdout_figure_is_unknown() -> None:
    cfg = PerformanceSignalConfig()
    assert not performance_reading(None, [PeriodLoss(30, 100)], cfg).fired
    r = performance_reading(None, [PeriodLoss(30, 100), PeriodLoss(50, 100)], cfg)
    assert r.fired
    assert r.numbers is not None
    assert r.numbers["baseline"] == 30


def test_importance_weighting_ignores_drift_in_an_unused_feature() -> None:
    drifted = {"used": False, "unused": True, "other": False}
    importance = {"used": 0.7, "other": 0.3}
    assert weighted_drift_share(drifted, importance) == 0.0
    assert weighted_drift_share({**drifted, "used": True}, importance) == pytest.approx(0.7)
    # no importance known: every feature counts the same
    assert weighted_drift_share(drifted, {}) == pytest.approx(1 / 3)


def test_max_and_min_age() -> None:
    cfg = PolicyConfig(triggers=["max_age"], max_age_batches=4, min_age_batches=2)
    assert not max_age_reading(3, 0, cfg).fired
    assert max_age_reading(4, 0, cfg).fired
    assert "4 batch(es) since deployment (max 4)" in max_age_reading(4, 0, cfg).reason
    by_time = PolicyConfig(triggers=["max_age"], max_age_seconds=3600)
    assert max_age_reading(0, 3600, by_time).fired
    assert too_young(1, 0, cfg) is not None
    assert too_young(2, 0, cfg) is None


def test_the_policy_triggers_on_the_configured_signals_only() -> None:
    fired = performance_reading(30.0, [PeriodLoss(60.0, 100)], PerformanceSignalConfig())
    assert fired.fired
    drift_only = PolicyConfig()
    v = decide(PolicyInput([False], [], False, 0.0, performance=fired), drift_only)
    assert v.outcome == "no_drift"
    both = PolicyConfig(triggers=["drift", "performance"])
    v = decide(PolicyInput([False], [], False, 0.0, performance=fired), both)
    assert v.outcome == "triggered"
    assert v.signal == "performance"
    assert v.reason_kind == "performance_degraded"
    assert v.reason.startswith("performance: loss 60 on the latest 100 labelled rows")
    young = both.model_copy(update={"min_age_batches": 3})
    v = decide(PolicyInput([False], [], False, 0.0, age_batches=1, performance=fired), young)
    assert v.outcome == "suppressed_min_age"
    age = PolicyConfig(triggers=["max_age"], max_age_batches=3)
    assert decide(PolicyInput([True], [], False, 0.0, age_batches=3), age).signal == "max_age"
    v = decide(PolicyInput([True], [], False, 0.0, age_batches=2), age)
    assert v.outcome == "no_trigger"


def test_config_refuses_max_age_without_an_age_and_duplicate_signals() -> None:
    with pytest.raises(ValueError, match="neither max_age_batches nor max_age_seconds"):
        PolicyConfig(triggers=["max_age"])
    with pytest.raises(ValueError, match="twice"):
        PolicyConfig(triggers=["drift", "drift"])
