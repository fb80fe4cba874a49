"""Backtest retraining policies on labelled history, in this process, without Airflow.

Size: about 480 lines; the replay, its triggers and the schedules' phases share the
period context and splitting them would scatter one loop over modules.

The history is cut into periods (a week by default). Version 1 is trained on the first
`skip` periods; each later period is served by the model in production, its labels arrive
`label_delay` periods later, and after each period a policy decides whether to retrain.
A retraining run is the DAG's own steps (`watcher.retrain.steps`: validate, engineer,
select, train) on the data the DAG would see at that moment: the configured window ending
with the period just served, labels only for periods old enough. The challenger then goes
through the same evaluation and gate (`watcher.retrain.evaluation`) against the policy's
champion, and the refit model is deployed if the gate says so.

Training does not depend on the policy: the run after period i sees the same data and the
same seed whatever policy asked for it, so each period's run is done once (in parallel) and
shared by every policy that retrains after that period. Only the evaluation, the gate and
the serving differ between policies, and they are cheap.

A schedule "every k periods" is replayed at each of its k phases (retraining after served
period j, j + k, ...; phase 0 is after k, 2k, ...): a cron job's phase in production is
arbitrary, so what it is expected to give is the mean over its phases, and the frontier
(a minimum over schedules) traced from one phase picks up whichever phase was lucky. The
phases reuse the same per-period trainings; they add replays only.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from watcher import signals
from watcher.backtest_history import (
    _WORKER,
    History,
    Training,
    _init_worker,
    load_history,
    train_all,
)
from watcher.config import ModelConfig, PolicyConfig, Settings
from watcher.drift import engine
from watcher.drift.engine import PreparedReference
from watcher.errors import BacktestError
from watcher.policy import PolicyInput, decide
from watcher.retrain.evaluation import Decision as GateDecision
from watcher.retrain.evaluation import (
    as_informed_as_champion,
    compared_rows,
    gate,
    limited_threads,
    score,
)
from watcher.signals import (
    PeriodLoss,
    loss_of,
    performance_metric,
    performance_reading,
    weighted_drift_share,
)

SCHEDULES = (1, 2, 3, 4, 6, 8)
Kind = Literal["never", "schedule", "policy"]


# ---- replaying one policy ------------------------------------------------------------


@dataclass
class Served:
    """The production model of a policy, as the policy's replay sees it."""

    training: Training
    deployed_at: int  # period after which it was deployed (skip - 1 for version 1)
    # Its holdout figure when deployed, in the metric the performance signal follows
    # (`performance_metric`: accuracy for a roc_auc model without columns.score, as in
    # the daemon).
    baseline: float


@dataclass
class Decision:
    period: int
    reason: str
    outcome: str  # "deployed", "kept", "failed"
    detail: str = ""


@dataclass
class PolicyResult:
    name: str
    kind: Kind
    every: int | None
    metric: str
    period_errors: list[float] = field(default_factory=list)
    period_rows: list[int] = field(default_factory=list)
    # Counts of one replay; a mean over a schedule's phases (`backtest_report.phase_mean`)
    # is fractional, hence float.
    runs: float = 0
    deployed: float = 0
    failed: float = 0
    train_seconds: float = 0.0
    decisions: list[Decision] = field(default_factory=list)
    phase: int | None = None  # schedules: the phase this replay retrained at
    phases: list[PolicyResult] = field(default_factory=list)  # schedules: every phase's replay

    @property
    def error(self) -> float:
        rows = np.asarray(self.period_rows, dtype=float)
        errs = np.asarray(self.period_errors, dtype=float)
        ok = ~np.isnan(errs)
        return float(np.average(errs[ok], weights=rows[ok])) if ok.any() else float("nan")

    @property
    def loss(self) -> float:
        return loss_of(self.metric, self.error)


class Trigger:
    """Asked after every served period whether to retrain; told what happened."""

    name = "never"
    kind: Kind = "never"
    every: int | None = None

    def should_retrain(self, ctx: PeriodContext) -> str | None:
        """The reason to retrain after this period, or None."""
        return None

    def deployed(self, ctx: PeriodContext) -> None:
        """A new model went into production after this period."""


def schedule_fires(served: int, every: int, phase: int = 0) -> bool:
    """Whether a schedule every `every` periods at `phase` retrains after the `served`-th
    served period (1-based): phase 0 after every, 2·every, ...; phase j after j, j + every."""
    return served % every == phase % every


def schedule_name(every: int, phase: int | None = None) -> str:
    name = "every period" if every == 1 else f"every {every} periods"
    return name if not phase else f"{name}, phase {phase}"


class Schedule(Trigger):
    kind: Kind = "schedule"

    def __init__(self, every: int, phase: int = 0) -> None:
        self.every, self.phase = every, phase
        self.name = schedule_name(every, phase)

    def should_retrain(self, ctx: PeriodContext) -> str | None:
        served = ctx.period - ctx.history.skip + 1
        fires = schedule_fires(served, self.every or 1, self.phase)
        return f"schedule: {served} periods served" if fires else None


class SignalPolicy(Trigger):
    """The configured policy (`[models.X.policy]`), or one signal of it alone: the daemon's
    own `watcher.policy.decide` over `watcher.signals` readings, fed what the daemon would
    have seen (drift of each batch, losses of labelled periods, the model's age)."""

    kind: Kind = "policy"

    def __init__(self, name: str, cfg: PolicyConfig) -> None:
        self.name, self.cfg = name, cfg
        self.flags: list[bool] = []  # dataset drift since the last trigger, newest first
        self.losses: list[PeriodLoss] = []  # labelled periods since the deployment
        self.triggers: list[float] = []
        self.prepared: tuple[int, PreparedReference] | None = None

    def should_retrain(self, ctx: PeriodContext) -> str | None:
        cfg, model_cfg = self.cfg, ctx.settings.models[ctx.history.model]
        metric = performance_metric(model_cfg)
        if "drift" in cfg.triggers:
            self.flags.insert(0, self._drifted(ctx, model_cfg))
        if ctx.labelled is not None and ctx.labelled[0] > ctx.served.deployed_at:
            _, value, rows = ctx.labelled
            self.losses.append(PeriodLoss(loss_of(metric, value), rows))
        baseline = loss_of(metric, ctx.served.baseline)
        now = _end_of(ctx.history, ctx.period).timestamp()
        born = _end_of(ctx.history, ctx.served.deployed_at).timestamp()
        verdict = decide(
            PolicyInput(
                drift_flags=self.flags,
                trigger_times=[t for t in self.triggers if t > now - 86_400],
                active_run=False,  # a backtest run ends before the next period
                now=now,
                age_batches=ctx.period - ctx.served.deployed_at,
                age_seconds=now - born,
                performance=performance_reading(baseline, self.losses, cfg.performance),
            ),
            cfg,
        )
        if not verdict.triggers:
            return None
        self.triggers.append(now)
        self.flags = []  # a trigger restarts the drift streak, as in the daemon
        return verdict.reason

    def deployed(self, ctx: PeriodContext) -> None:
        self.losses = []  # the performance signal follows the model now in production

    def _drifted(self, ctx: PeriodContext, model_cfg: ModelConfig) -> bool:
        run = ctx.served.training
        if self.prepared is None or self.prepared[0] != run.period:
            specs, prediction = engine.specs_from_config(model_cfg)
            assert run.reference is not None
            ref = engine.prepare_reference(
                run.reference, specs, version=str(run.period), prediction=prediction
            )
            self.prepared = (run.period, ref)
        d = model_cfg.drift
        result = engine.score(
            self.prepared[1],
            ctx.batch,
            drift_share=d.drift_share,
            num_stattest=d.num_stattest,
            cat_stattest=d.cat_stattest,
        )
        if not self.cfg.drift.importance_weighted:
            return result.dataset_drift
        flags = {name: c.drifted for name, c in result.columns.items()}
        return weighted_drift_share(flags, run.importance) >= d.drift_share


def _end_of(history: History, period: int) -> pd.Timestamp:
    nxt = period + 1
    if nxt < history.n_periods:
        return history.starts[nxt]
    return history.starts[period] + (history.starts[period] - history.starts[period - 1])


def policy_triggers(cfg: PolicyConfig) -> list[Trigger]:
    """The configured policy, then each built-in signal alone (when it can fire)."""
    out: list[Trigger] = [SignalPolicy("policy: " + "+".join(cfg.triggers), cfg)]
    for signal in signals.SIGNALS:
        if signal == "max_age" and cfg.max_age_batches is None and cfg.max_age_seconds is None:
            continue
        if [signal] == cfg.triggers:
            continue  # the configured policy already is this signal alone
        alone = cfg.model_copy(update={"triggers": [signal]})
        out.append(SignalPolicy(f"{signal} alone", alone))
    return out


@dataclass
class PeriodContext:
    """What a trigger may look at after period `period` was served."""

    history: History
    settings: Settings
    period: int
    served: Served
    batch: pd.DataFrame  # the period's rows as a production batch, with predictions
    # (period, the served model's figure in `performance_metric`, rows), now labelled.
    labelled: tuple[int, float, int] | None


# What several replays of one backtest compute alike, by (what, training period, period):
# a model's score and predictions on a period, and the gate's verdict for a (challenger,
# champion) pair. All are pure functions of the shared trainings, and a schedule's phases
# and the policies ask for the same ones again and again.
Memo = dict[tuple[str, int, int], Any]


def replay_policy(
    trigger: Trigger,
    settings: Settings,
    history: History,
    trainings: dict[int, Training],
    memo: Memo | None = None,
) -> PolicyResult:
    """Serve every period after the first `skip` with the policy's production model.
    `memo` shares scores, predictions and gate verdicts between replays of one backtest."""
    memo = {} if memo is None else memo
    model_cfg = settings.models[history.model]
    cols, cfg = model_cfg.columns, model_cfg.retrain
    metric, task = cfg.primary_metric, cfg.task
    followed = performance_metric(model_cfg)  # what the performance signal reads
    assert cols.target is not None
    assert cols.timestamp is not None
    first = trainings[-1]
    assert first.holdout is not None
    baseline = score(
        first.challenger, first.holdout[first.features], first.holdout[cols.target], task
    )
    served = Served(first, history.skip - 1, baseline[followed])
    result = PolicyResult(trigger.name, trigger.kind, trigger.every, metric)
    if isinstance(trigger, Schedule):
        result.phase = trigger.phase
    followed_by_period: dict[int, float] = {}
    for period in range(history.skip, history.n_periods):
        rows = history.rows(period)
        model, feats, w = served.training.final, served.training.features, served.training.period
        if ("score", w, period) not in memo:
            memo["score", w, period] = score(model, rows[feats], rows[cols.target], task)
        scores = memo["score", w, period]
        followed_by_period[period] = scores[followed]
        result.period_errors.append(scores[metric])
        result.period_rows.append(len(rows))
        if period == history.n_periods - 1:
            break  # nothing left to serve: no run after the last period
        batch = rows.drop(columns=[cols.target, "_period"])
        if cols.prediction:
            if ("predict", w, period) not in memo:
                memo["predict", w, period] = model.predict(rows[feats])
            batch[cols.prediction] = memo["predict", w, period]
        if cols.score:  # what the production log would carry, as the daemon reads it
            if ("proba", w, period) not in memo:
                memo["proba", w, period] = model.predict_proba(rows[feats])[:, 1]
            batch[cols.score] = memo["proba", w, period]
        known = period - history.label_delay
        labelled = None
        if known >= history.skip and known in followed_by_period:
            labelled = (known, followed_by_period[known], len(history.rows(known)))
        ctx = PeriodContext(history, settings, period, served, batch, labelled)
        reason = trigger.should_retrain(ctx)
        if reason is None:
            continue
        run = trainings[period]
        result.runs += 1
        result.train_seconds += run.seconds
        if not run.ok:
            result.failed += 1
            result.decisions.append(Decision(period, reason, "failed", run.message))
            continue
        pair = ("gate", run.period, served.training.period)
        if pair not in memo:
            memo[pair] = _gate(run, served.training, model_cfg)
        verdict: GateDecision = memo[pair]
        if verdict.deploy:
            assert run.holdout is not None
            served = Served(run, period, verdict.challenger[followed])
            result.deployed += 1
            trigger.deployed(ctx)
        result.decisions.append(
            Decision(period, reason, "deployed" if verdict.deploy else "kept", verdict.reason)
        )
    return result


def _gate(run: Training, champion: Training, model_cfg: ModelConfig) -> GateDecision:
    """The evaluate and gate steps, in memory, against this policy's champion: both models
    on the holdout rows the champion never saw."""
    cols, cfg = model_cfg.columns, model_cfg.retrain
    assert run.holdout is not None
    assert cols.target is not None
    rows, problem = compared_rows(run.holdout, cols.timestamp, champion.trained_until)
    y = rows[cols.target]
    champ, challenger = None, run.challenger
    if problem is None:
        champ = score(champion.final, rows[champion.features], y, cfg.task)
        assert run.train is not None
        challenger, _ = as_informed_as_champion(
            run.challenger, run.train, run.holdout, rows, run.features, cols.target
        )
    return gate(
        score(challenger, rows[run.features], y, cfg.task),
        champ,
        metric=cfg.primary_metric,
        margin=cfg.margin,
        champion_version=f"(trained after period {champion.period})",
        champion_problem=problem,
    )


def build_triggers(extra: Iterable[Trigger] = ()) -> list[Trigger]:
    """Never, then the schedules (each at every phase, phase 0 first), then `extra` (the
    configured policy, each signal alone)."""
    schedules = (Schedule(k, j) for k in SCHEDULES for j in range(k))
    return [Trigger(), *schedules, *extra]


def group_phases(results: list[PolicyResult]) -> list[PolicyResult]:
    """One entry per schedule, its phase-0 replay carrying every phase's in `phases`
    (phase order); other policies as they are, in their order."""
    out: list[PolicyResult] = []
    first: dict[int | None, PolicyResult] = {}
    for r in results:
        if r.kind != "schedule":
            out.append(r)
            continue
        if r.every not in first:
            if r.phase:
                raise ValueError(f"{r.name}: phase 0 must come first")
            first[r.every] = r
            out.append(r)
        first[r.every].phases.append(r)
    return out


def _replay_task(
    triggers: list[tuple[int, Trigger]], trainings: dict[int, Training]
) -> list[tuple[int, PolicyResult]]:
    """Several replays per task: the trainings (models and frames, ~100 MB pickled on a
    year of weekly periods) cross to a worker once per task, not once per policy."""
    settings: Settings = _WORKER["settings"]
    threads = settings.models[_WORKER["history"].model].retrain.threads
    # Unlimited OpenMP threads in every process spin for seconds on a busy machine.
    memo: Memo = {}
    with limited_threads(threads):
        return [
            (i, replay_policy(t, settings, _WORKER["history"], trainings, memo))
            for i, t in triggers
        ]


def pool_for(settings: Settings, history: History, jobs: int, tmp: Path) -> ProcessPoolExecutor:
    """Worker processes that know the settings and the history; run folders go in `tmp`."""
    return ProcessPoolExecutor(
        max_workers=jobs, initializer=_init_worker, initargs=(settings, history, tmp)
    )


@dataclass
class Backtest:
    """Every policy replayed over one history."""

    history: History
    results: list[PolicyResult]
    trainings: int  # distinct training runs done (shared by the policies)
    seconds: float


def run_backtest(
    settings: Settings,
    model: str,
    frame: pd.DataFrame,
    *,
    every: str = "7D",
    skip: int = 8,
    label_delay: int = 1,
    seed: int | None = None,
    jobs: int = 1,
    limit: int | None = None,
    progress: Callable[[str, int, int], None] = lambda what, done, total: None,
) -> Backtest:
    """Train once per period, then replay never, the schedules, the configured policy and
    each signal alone. `progress(stage, done, total)` is called as work completes."""
    if model not in settings.models:
        raise BacktestError(
            f"model {model!r} is not in the config",
            hint=f"configured models: {', '.join(settings.models) or 'none'}",
        )
    model_cfg = settings.models[model]
    if seed is not None:
        retrain = model_cfg.retrain.model_copy(update={"seed": seed})
        model_cfg = model_cfg.model_copy(update={"retrain": retrain})
        settings = settings.model_copy(update={"models": {**settings.models, model: model_cfg}})
    started = time.monotonic()
    history = load_history(
        frame, model_cfg, model, every=every, skip=skip, label_delay=label_delay, limit=limit
    )
    triggers = build_triggers(policy_triggers(model_cfg.policy))
    n_train = history.n_periods - history.skip
    with (
        tempfile.TemporaryDirectory(prefix="watcher-backtest-") as tmp,
        pool_for(settings, history, max(1, jobs), Path(tmp)) as pool,
    ):
        done = 0

        def trained() -> None:
            nonlocal done
            done += 1
            progress("training", done, n_train)

        trainings = train_all(settings, history, pool, trained)
        chunks = max(1, min(len(triggers), 2 * max(1, jobs)))
        indexed = list(enumerate(triggers))
        futures = [pool.submit(_replay_task, indexed[c::chunks], trainings) for c in range(chunks)]
        replayed: dict[int, PolicyResult] = {}
        for fut in as_completed(futures):
            replayed.update(fut.result())
            progress("replaying", len(replayed), len(triggers))
    results = group_phases([replayed[i] for i in range(len(triggers))])
    return Backtest(history, results, len(trainings), time.monotonic() - started)
