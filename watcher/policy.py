"""When to retrain and when to page: a pure decision over a model's signals.

The daemon calls `decide` inside the transaction that records a batch's result (and when
labels arrive), so the decision, its reason and the actions it causes are committed
together. The signals themselves (`watcher.signals`) say whether each fires; `decide`
combines those the model triggers on (`policy.triggers`) and applies the guardrails.

Rules, in order (the first that applies wins):
1. no signal in ``triggers`` fires                      -> ``no_drift`` (the batch is clean),
   ``streak_building`` (drift, but fewer than ``consecutive`` batches in a row) or
   ``no_trigger`` (drift is not a trigger, or the batch is clean while another
   signal is quiet)
2. the model is younger than ``min_age_*``               -> ``suppressed_min_age``
3. a retrain run of the model is queued or running       -> ``suppressed_active_run``
4. the last trigger is more recent than ``cooldown``     -> ``suppressed_cooldown``
5. ``daily_cap`` triggers in the last 24 hours (rolling)  -> ``suppressed_cap``
6. ``dry_run``                                           -> ``dry_run`` (logged, counted, no call)
7. otherwise                                             -> ``triggered``

A trigger (or dry run) restarts the drift streak, so the next drift trigger needs a new
run of drifted batches. Drift incidents use hysteresis: one opens when the streak reaches
``consecutive`` and closes only after ``resolve_after`` clean batches in a row, whichever
signals trigger.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from watcher.config import PolicyConfig
from watcher.signals import Reading, SignalName, drift_reading, max_age_reading, too_young

Outcome = Literal[
    "no_drift",
    "streak_building",
    "no_trigger",
    "suppressed_min_age",
    "suppressed_active_run",
    "suppressed_cooldown",
    "suppressed_cap",
    "dry_run",
    "triggered",
]
DAY = 86_400.0

# Which signal fired, as the run's reason kind (in the DAG conf, mails and `status`).
REASON_KIND: dict[SignalName, str] = {
    "drift": "drift_persisting",
    "performance": "performance_degraded",
    "max_age": "max_age",
}


@dataclass(frozen=True)
class PolicyInput:
    drift_flags: Sequence[bool]  # dataset-drift flags since the last streak reset, newest first
    trigger_times: Sequence[float]  # when triggers were decided in the last 24 h
    active_run: bool
    now: float
    # Age of the production model, in batches scored and seconds since its deployment.
    age_batches: int = 0
    age_seconds: float = 0.0
    # The performance signal's reading, when labels have been read (see watcher.signals).
    performance: Reading | None = None
    # The drift flags the drift *trigger* reads, when they differ from the dataset-drift
    # flags that drive incidents (importance weighting); newest first. None: drift_flags.
    trigger_drift_flags: Sequence[bool] | None = None
    # The age `max_age` reads, when it differs from the model's age: counted from the
    # last max_age trigger, so a retrain the gate refused waits a whole period again.
    schedule_age_batches: int | None = None
    schedule_age_seconds: float | None = None


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    streak: int
    open_incident: bool  # the drift streak just reached the alerting length
    resolve_incident: bool  # enough clean batches in a row to call the incident over
    signal: SignalName | None = None  # the signal that fired (first in `triggers` order)
    readings: tuple[Reading, ...] = field(default=())

    @property
    def triggers(self) -> bool:
        return self.outcome in ("triggered", "dry_run")

    @property
    def reason_kind(self) -> str | None:
        return REASON_KIND[self.signal] if self.signal else None


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


def readings_for(inp: PolicyInput, cfg: PolicyConfig) -> tuple[Reading, ...]:
    """Every signal's current reading, whether or not it may trigger this model."""
    flags = inp.drift_flags if inp.trigger_drift_flags is None else inp.trigger_drift_flags
    out = [drift_reading(flags, cfg)]
    if inp.performance is not None:
        out.append(inp.performance)
    if cfg.max_age_batches is not None or cfg.max_age_seconds is not None:
        batches = inp.age_batches if inp.schedule_age_batches is None else inp.schedule_age_batches
        seconds = inp.age_seconds if inp.schedule_age_seconds is None else inp.schedule_age_seconds
        out.append(max_age_reading(batches, seconds, cfg))
    return tuple(out)


def decide(inp: PolicyInput, cfg: PolicyConfig) -> Verdict:
    streak = streak_of(inp.drift_flags, True)
    clean = streak_of(inp.drift_flags, False)
    opened = opens_incident(streak, cfg)
    resolved = clean == cfg.resolve_after
    readings = readings_for(inp, cfg)
    by_name = {r.signal: r for r in readings}
    fired = [by_name[s] for s in cfg.triggers if s in by_name and by_name[s].fired]
    signal = fired[0].signal if fired else None

    def verdict(outcome: Outcome, reason: str) -> Verdict:
        return Verdict(outcome, reason, streak, opened, resolved, signal, readings)

    if not fired:
        drift_streak = int(by_name["drift"].value)
        if "drift" in cfg.triggers and 0 < drift_streak < cfg.consecutive:
            return verdict("streak_building", by_name["drift"].reason)
        quiet = "; ".join(by_name[s].reason for s in cfg.triggers if s in by_name)
        if drift_streak == 0 and cfg.triggers == ["drift"]:
            return verdict("no_drift", "no dataset drift in this batch")
        return verdict("no_trigger", f"no trigger signal fired: {quiet or 'no readings yet'}")
    young = too_young(inp.age_batches, inp.age_seconds, cfg)
    if young:
        return verdict("suppressed_min_age", young)
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
    first = fired[0]
    # Drift's sentence names itself; the others get the signal's name in front.
    reason = first.reason if first.signal == "drift" else f"{first.signal}: {first.reason}"
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
