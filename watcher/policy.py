"""When to retrain and when to page: a pure decision over a model's drift history.

The daemon calls `decide` inside the transaction that records a batch's result, so the
decision, its reason and the actions it causes are committed together with the batch.

Rules, in order (the first that applies wins):
1. the batch shows no dataset drift                     -> ``no_drift``
2. fewer than ``consecutive`` drifted batches in a row   -> ``streak_building``
3. a retrain run of the model is queued or running       -> ``suppressed_active_run``
4. the last trigger is more recent than ``cooldown``     -> ``suppressed_cooldown``
5. ``daily_cap`` triggers in the last 24 hours (rolling)  -> ``suppressed_cap``
6. ``dry_run``                                           -> ``dry_run`` (logged, counted, no call)
7. otherwise                                             -> ``triggered``

A trigger (or dry run) restarts the streak, so the next one needs a new run of drifted
batches. Drift incidents use hysteresis: one opens when the streak reaches ``consecutive``
and closes only after ``resolve_after`` clean batches in a row.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from watcher.config import PolicyConfig

Outcome = Literal[
    "no_drift",
    "streak_building",
    "suppressed_active_run",
    "suppressed_cooldown",
    "suppressed_cap",
    "dry_run",
    "triggered",
]
DAY = 86_400.0


@dataclass(frozen=True)
class PolicyInput:
    drift_flags: Sequence[bool]  # dataset-drift flags since the last streak reset, newest first
    trigger_times: Sequence[float]  # when triggers were decided in the last 24 h
    active_run: bool
    now: float


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    streak: int
    open_incident: bool  # the drift streak just reached the alerting length
    resolve_incident: bool  # enough clean batches in a row to call the incident over

    @property
    def triggers(self) -> bool:
        return self.outcome in ("triggered", "dry_run")


def streak_of(flags: Sequence[bool], value: bool = True) -> int:
    n = 0
    for flag in flags:
        if flag is not value:
            break
        n += 1
    return n


def opens_incident(streak: int, cfg: PolicyConfig) -> bool:
    """A drift incident opens when the streak reaches the trigger length, once."""
    return streak == cfg.consecutive


def decide(inp: PolicyInput, cfg: PolicyConfig) -> Verdict:
    streak = streak_of(inp.drift_flags, True)
    clean = streak_of(inp.drift_flags, False)
    opened = opens_incident(streak, cfg)
    resolved = clean == cfg.resolve_after

    def verdict(outcome: Outcome, reason: str) -> Verdict:
        return Verdict(outcome, reason, streak, opened, resolved)

    if streak == 0:
        return verdict("no_drift", "no dataset drift in this batch")
    if streak < cfg.consecutive:
        return verdict(
            "streak_building",
            f"dataset drift in {streak} consecutive batch(es); {cfg.consecutive} needed",
        )
    if inp.active_run:
        return verdict("suppressed_active_run", "a retrain run is already queued or running")
    if inp.trigger_times:
        since = inp.now - max(inp.trigger_times)
        if since < cfg.cooldown_seconds:
            return verdict(
                "suppressed_cooldown",
                f"last trigger {_human(since)} ago; cooldown is {_human(cfg.cooldown_seconds)}",
            )
    recent = [t for t in inp.trigger_times if inp.now - t < DAY]
    if len(recent) >= cfg.daily_cap:
        return verdict(
            "suppressed_cap",
            f"{len(recent)} trigger(s) in the last 24 h; the daily cap is {cfg.daily_cap}",
        )
    reason = f"dataset drift in {streak} consecutive batches (threshold {cfg.consecutive})"
    if cfg.dry_run:
        return verdict("dry_run", reason + "; dry run: Airflow not called")
    return verdict("triggered", reason)


_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.~:+-]")


def run_id_for(model: str, batch_id: str) -> str:
    """A deterministic dag_run_id: the same model and batch always give the same id, so a
    repeated delivery is refused by Airflow with 409 instead of starting a second run."""
    digest = hashlib.sha256(f"{model}\0{batch_id}".encode()).hexdigest()[:10]
    readable = _RUN_ID_UNSAFE.sub("_", batch_id)[:120]
    return f"watcher__{model}__{readable}__{digest}"


def _human(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
