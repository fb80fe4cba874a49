"""Trigger signals: is it time to retrain this model? Pure functions, one per signal.

Each signal reads a model's history and returns a `Reading`: whether it fires, its current
value against its threshold, and a sentence with the numbers. The policy (`watcher.policy`)
combines the readings of the signals a model is configured to trigger on and applies the
guardrails (minimum age, active run, cooldown, cap, dry run). The daemon and `watcher
backtest` call the same functions, so a backtest measures the policy the daemon runs.

- ``performance``: the production model's loss on each labelled period against its loss
  at deployment (the gate's holdout figure), by a sequential change detector. The default
  detector is a one-sided CUSUM against that known level (Page 1954), written here in
  three lines because river's detectors estimate the in-control level from the stream
  itself: a model that is worse than its holdout figure from its first period on never
  looks like a change to them, and that is the common failure after a deployment. river's
  Page-Hinkley is offered as ``page_hinkley``. ADWIN is not: it needs dozens of points per
  sub-window and, fed one loss per period, missed a +50 % step for 75 periods here.
  ``cost`` is cost-aware retraining in the spirit of Mahadevan & Mathioudakis: the loss
  paid above the baseline since deployment, summed over labelled periods in units of the
  baseline loss (the staleness cost), is weighed against ``threshold``, the cost of a
  retrain in the same units; no tolerance and no reset, so a small but lasting excess also
  pays for a retrain.
  ``baseline = "min"`` compares with the lower of the holdout figure and the loss on the
  first labelled period after deployment (see README, "Does retraining pay off?").
- ``drift``: evidently-based dataset drift in ``consecutive`` batches in a row; optionally
  each feature weighted by the production model's importance, so drift in a feature the
  model ignores does not count.
- ``max_age``: a schedule as a floor: a model older than N batches (or seconds) is retrained.

Signals are stateless: the history since the last deployment is stored by the caller and
read back, so a reading survives restarts and is the same in the daemon and the backtest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from watcher.config import ModelConfig, PerformanceSignalConfig, PolicyConfig

SignalName = Literal["drift", "performance", "max_age"]
SIGNALS: tuple[SignalName, ...] = ("drift", "performance", "max_age")

# Metrics where higher is better; their loss is 1 - value (unexplained variance for r2).
_HIGHER_IS_BETTER = frozenset({"r2", "accuracy", "f1", "roc_auc"})


@dataclass(frozen=True)
class Reading:
    """One signal's current state for one model."""

    signal: SignalName
    fired: bool
    value: float  # the signal's statistic (streak, CUSUM sum, age)
    threshold: float  # the value at which it fires
    reason: str  # a sentence with the numbers, for decisions, mails and `watcher status`
    numbers: Mapping[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["numbers"] = dict(self.numbers or {})
        return out


@dataclass(frozen=True)
class PeriodLoss:
    """The production model's loss on the labelled rows of one period."""

    loss: float
    rows: int


def loss_of(metric: str, value: float) -> float:
    """A metric as a loss (lower is better), so every signal reads one direction."""
    return 1.0 - value if metric in _HIGHER_IS_BETTER else value


# ---- performance ----------------------------------------------------------------------


def performance_metric(cfg: ModelConfig) -> str:
    """The metric the performance signal follows: the gate's primary metric, except
    roc_auc without a `columns.score`: it needs the positive class's probability, which
    the predicted classes alone do not give, so it is followed as accuracy then (the
    daemon scores what the prediction log holds; the backtest follows the same metric)."""
    metric = cfg.retrain.primary_metric
    if metric == "roc_auc" and cfg.columns.score is None:
        return "accuracy"
    return metric


def pooled(periods: Sequence[PeriodLoss], min_rows: int) -> list[PeriodLoss]:
    """Consecutive periods pooled (row-weighted) until each pool holds `min_rows` labelled
    rows: a loss measured on a dozen rows is noise, not evidence. A last, still too small
    pool is left out until more labels arrive."""
    out: list[PeriodLoss] = []
    acc_loss, acc_rows = 0.0, 0
    for p in periods:
        if p.rows <= 0 or not math.isfinite(p.loss):
            continue
        acc_loss += p.loss * p.rows
        acc_rows += p.rows
        if acc_rows >= min_rows:
            out.append(PeriodLoss(acc_loss / acc_rows, acc_rows))
            acc_loss, acc_rows = 0.0, 0
    return out


def relative_excess(baseline: float, loss: float) -> float:
    """How much worse than at deployment, as a share of the deployment loss."""
    scale = max(abs(baseline), 1e-12)
    return (loss - baseline) / scale


def performance_reading(
    baseline: float | None,
    periods: Sequence[PeriodLoss],
    cfg: PerformanceSignalConfig,
) -> Reading:
    """Has the production model's loss risen above its level at deployment?

    `baseline` is the loss the gate measured at deployment (None: unknown, and then the
    first pooled period is the baseline); `periods` the losses of the labelled periods since
    the deployment, oldest first.
    """
    pools = pooled(periods, cfg.min_rows)
    if baseline is None or not math.isfinite(baseline) or cfg.baseline == "first_period":
        if not pools:
            return _no_evidence(cfg, "no labelled period yet to set the baseline")
        baseline, pools = pools[0].loss, pools[1:]
    elif cfg.baseline == "min" and pools:
        # The holdout figure of a model deployed in a week of fast change is inflated; its
        # realized loss on its first labelled period is then the truer level to rise from.
        baseline = min(baseline, pools[0].loss)
    if not pools:
        return _no_evidence(cfg, f"no labelled period of {cfg.min_rows}+ rows since deployment")
    excess = [relative_excess(baseline, p.loss) for p in pools]
    latest = pools[-1].loss
    if cfg.detector == "cusum":
        statistic, threshold = _cusum(excess, cfg.tolerance), cfg.threshold
        fired = statistic >= threshold
        how = (
            f"CUSUM of the excess over {cfg.tolerance:.0%} is {statistic:.2f} "
            f"(fires at {threshold:g})"
        )
    elif cfg.detector == "cost":
        statistic, threshold = sum(excess), cfg.threshold
        fired = statistic >= threshold
        how = f"staleness cost so far {statistic:.2f} periods' loss (retrain cost {threshold:g})"
    else:
        fired, statistic, threshold = _river(excess, cfg)
        how = f"{cfg.detector} {'detected' if fired else 'did not detect'} a rise"
    reason = (
        f"loss {latest:.4g} on the latest {pools[-1].rows} labelled rows vs {baseline:.4g} at "
        f"deployment ({excess[-1]:+.0%}) over {len(pools)} period(s); {how}"
    )
    return Reading(
        "performance",
        fired,
        statistic,
        threshold,
        reason,
        {"baseline": baseline, "latest": latest, "excess": excess[-1], "periods": len(pools)},
    )


def _no_evidence(cfg: PerformanceSignalConfig, why: str) -> Reading:
    return Reading("performance", False, 0.0, cfg.threshold, why, {"periods": 0})


def _cusum(excess: Sequence[float], tolerance: float) -> float:
    """One-sided CUSUM S_t = max(0, S_{t-1} + x_t - k), k the tolerated excess."""
    s = 0.0
    for x in excess:
        s = max(0.0, s + x - tolerance)
    return s


def _river(excess: Sequence[float], cfg: PerformanceSignalConfig) -> tuple[bool, float, float]:
    """river's Page-Hinkley on the excess series, primed with the deployment level (0)."""
    from river import drift  # imported here: only models configured for it pay for river

    detector: Any = drift.PageHinkley(
        min_instances=2, delta=cfg.tolerance, threshold=cfg.threshold, mode="up"
    )
    fired = False
    for x in [0.0, *excess]:
        detector.update(x)
        fired = bool(detector.drift_detected)
    # A detector fires on one update and resets on the next: the reading is the latest.
    return fired, 1.0 if fired else 0.0, 1.0


# ---- drift ----------------------------------------------------------------------------


def weighted_drift_share(drifted: Mapping[str, bool], importance: Mapping[str, float]) -> float:
    """Share of the model's importance that sits in drifted features. Features the model
    does not use (importance 0 or absent) count for nothing; without any importance known
    every feature counts the same."""
    weights = {f: max(0.0, float(importance.get(f, 0.0))) for f in drifted}
    total = sum(weights.values())
    if total <= 0:
        return sum(drifted.values()) / len(drifted) if drifted else 0.0
    return sum(w for f, w in weights.items() if drifted[f]) / total


def drift_reading(flags: Sequence[bool], cfg: PolicyConfig) -> Reading:
    """Dataset drift in `consecutive` batches in a row; `flags` newest first, since the
    last trigger (a trigger restarts the streak)."""
    streak = 0
    for flag in flags:
        if not flag:
            break
        streak += 1
    fired = streak >= cfg.consecutive
    reason = f"dataset drift in {streak} consecutive batch(es); {cfg.consecutive} needed"
    if fired:
        reason = f"dataset drift in {streak} consecutive batches (threshold {cfg.consecutive})"
    return Reading("drift", fired, float(streak), float(cfg.consecutive), reason)


# ---- age ------------------------------------------------------------------------------


def max_age_reading(batches: int, seconds: float, cfg: PolicyConfig) -> Reading:
    """A model older than `max_age_batches` batches or `max_age_seconds` is retrained."""
    parts = []
    fired = False
    value, threshold = float(batches), math.inf
    if cfg.max_age_batches is not None:
        fired |= batches >= cfg.max_age_batches
        threshold = float(cfg.max_age_batches)
        parts.append(f"{batches} batch(es) since deployment (max {cfg.max_age_batches})")
    if cfg.max_age_seconds is not None:
        fired |= seconds >= cfg.max_age_seconds
        if cfg.max_age_batches is None:
            value, threshold = seconds, cfg.max_age_seconds
        parts.append(f"{_human(seconds)} since deployment (max {_human(cfg.max_age_seconds)})")
    if not parts:
        return Reading("max_age", False, value, threshold, "no maximum age set")
    return Reading("max_age", fired, value, threshold, "; ".join(parts))


def too_young(batches: int, seconds: float, cfg: PolicyConfig) -> str | None:
    """Why nothing may trigger yet (the model is younger than `min_age_*`), or None."""
    if batches < cfg.min_age_batches:
        limit = cfg.min_age_batches
        return f"the model has served {batches} batch(es); min_age_batches is {limit}"
    if seconds < cfg.min_age_seconds:
        return (
            f"the model is {_human(seconds)} old; min_age_seconds is {_human(cfg.min_age_seconds)}"
        )
    return None


def _human(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
