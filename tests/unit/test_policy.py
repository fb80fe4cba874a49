"""The trigger policy over drift histories, table-driven."""

from __future__ import annotations

import pytest

from watcher.config import PolicyConfig
from watcher.policy import PolicyInput, decide, run_id_for

NOW = 1_000_000.0
H = 3600.0
CFG = PolicyConfig(consecutive=2, cooldown_seconds=6 * H, daily_cap=3, resolve_after=2)

D, C = True, False  # drifted, clean (newest first in every history below)


@pytest.mark.parametrize(
    ("flags", "triggers", "active", "cfg", "outcome"),
    [
        ([C], [], False, CFG, "no_drift"),
        ([], [], False, CFG, "no_drift"),
        ([D], [], False, CFG, "streak_building"),
        ([D, C, D], [], False, CFG, "streak_building"),
        ([D, D], [], False, CFG, "triggered"),
        ([D, D, D, D], [], False, CFG, "triggered"),
        ([D, D], [], True, CFG, "suppressed_active_run"),
        ([D, D], [NOW - 1 * H], False, CFG, "suppressed_cooldown"),
        ([D, D], [NOW - 7 * H], False, CFG, "triggered"),
        ([D, D], [NOW - 20 * H, NOW - 13 * H, NOW - 7 * H], False, CFG, "suppressed_cap"),
        ([D, D], [NOW - 25 * H, NOW - 13 * H, NOW - 7 * H], False, CFG, "triggered"),
        ([D, D], [], False, CFG.model_copy(update={"dry_run": True}), "dry_run"),
        ([D, D], [], False, CFG.model_copy(update={"daily_cap": 0}), "suppressed_cap"),
        ([D], [], False, CFG.model_copy(update={"consecutive": 1}), "triggered"),
        (
            [D, D, D],
            [],
            False,
            CFG.model_copy(update={"consecutive": 3, "cooldown_seconds": 0}),
            "triggered",
        ),
    ],
)
def test_decisions(
    flags: list[bool], triggers: list[float], active: bool, cfg: PolicyConfig, outcome: str
) -> None:
    verdict = decide(PolicyInput(flags, triggers, active, NOW), cfg)
    assert verdict.outcome == outcome
    assert verdict.reason  # every decision says why


def test_reasons_say_why() -> None:
    v = decide(PolicyInput([D, D], [NOW - 2 * H], False, NOW), CFG)
    assert v.reason == "last trigger 2.0 h ago; cooldown is 6.0 h"
    v = decide(PolicyInput([D], [], False, NOW), CFG)
    assert v.reason == "dataset drift in 1 consecutive batch(es); 2 needed"


@pytest.mark.parametrize(
    ("flags", "opens", "resolves"),
    [
        ([D, D], True, False),  # streak reaches the alerting length: open once
        ([D, D, D], False, False),  # already open: no second mail
        ([C], False, False),  # one clean batch is not enough (hysteresis)
        ([C, C], False, True),  # two clean in a row: resolved
        ([C, C, C], False, False),  # already resolved
        ([C, D, C, D, D], False, False),  # flapping neither opens nor resolves
    ],
)
def test_incident_hysteresis(flags: list[bool], opens: bool, resolves: bool) -> None:
    v = decide(PolicyInput(flags, [], False, NOW), CFG)
    assert (v.open_incident, v.resolve_incident) == (opens, resolves)


def test_run_ids_are_deterministic_and_airflow_safe() -> None:
    a = run_id_for("bikes", "week 03/2011.parquet")
    assert a == run_id_for("bikes", "week 03/2011.parquet")
    assert a != run_id_for("bikes", "week 04/2011.parquet")
    assert a != run_id_for("cars", "week 03/2011.parquet")
    assert all(ch.isalnum() or ch in "_.~:+-" for ch in a)
    # Distinct ids that sanitise to the same text still differ.
    assert run_id_for("m", "a b") != run_id_for("m", "a_b")
