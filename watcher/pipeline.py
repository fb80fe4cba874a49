"""One batch, start to finish: load → quality → drift → one transaction → metrics; and
the policy's second decision point, when labels arrive (`Pipeline.on_labels`).

At both points the policy (`watcher.policy.decide`) reads every signal the model has: the
drift streak, the production model's loss on the labelled periods since its deployment
(`performance`) and its age (`max_age`, `min_age_*`); the decision, its readings and the
actions it causes are committed in one transaction, and a trigger goes through the same
outbox whichever signal fired.

Everything here is synchronous and CPU-bound; the daemon runs it in a worker thread so
the event loop (dispatchers, the run tracker, signal handling) stays responsive.

Size: a batch's path and the label decision point share the runtime and the one
transaction per batch. The actions they commit are built by `watcher.actions` (drift alerts,
the trigger and its mail, whose conf is a `RetrainRequest`), and the incidents they open and
resolve go through `watcher.incidents`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from watcher import actions, incidents
from watcher.alerts import alert_action
from watcher.config import ModelConfig, PolicyConfig, Settings
from watcher.drift import engine
from watcher.drift.quality import QualityReport, check_batch
from watcher.drift.snapshots import SnapshotPublisher
from watcher.errors import BatchRejected, SourceError
from watcher.metrics import Metrics
from watcher.model_quality import PerformanceTracker
from watcher.policy import DAY, PolicyInput, Verdict, decide, opens_incident, run_id_for, streak_of
from watcher.reference import Reference
from watcher.reports import ReportRenderer, report_path
from watcher.retrain.request import RetrainRequest
from watcher.safetext import escape
from watcher.signals import (
    PeriodLoss,
    Reading,
    loss_of,
    performance_metric,
    performance_reading,
    pooled,
    weighted_drift_share,
)
from watcher.sources.base import BatchRef, Source
from watcher.state import DB_ERRORS, Action, LabelPeriod, LeaseLost, StateStore

log = logging.getLogger(__name__)

# Not the batch's fault, so it stays claimed and is scored again: the source cannot be read
# now, another replica owns the model (it scores the batch), the state database failed
# (a restart, a terminated connection: its transaction was rolled back whole).
_RETRY_LATER: tuple[type[Exception], ...] = (SourceError, LeaseLost, *DB_ERRORS)


@dataclass
class ModelRuntime:
    name: str
    cfg: ModelConfig
    source: Source
    reference: Reference
    performance: PerformanceTracker
    last_batch_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class BatchOutcome:
    model: str
    batch_id: str
    status: str  # scored | rejected | failed | skipped
    rows: int = 0
    drift: engine.DriftResult | None = None
    verdict: Verdict | None = None
    reason: str | None = None


def _prune_reports(folder: Path, retention_days: float) -> None:
    """Delete a model's drift reports older than `alerts.report_retention_days` (several
    MB each: kept for ever they fill the state disk)."""
    if retention_days <= 0:
        return
    cutoff = time.time() - retention_days * DAY
    for old in folder.glob("*.html"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()


class Pipeline:
    """Processes batches for every model, recording results and decisions durably."""

    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._said_unweighted: set[tuple[str, str]] = set()
        self.snapshots: SnapshotPublisher | None = None
        if settings.evidently.workspace:
            self.snapshots = SnapshotPublisher(settings.evidently, metrics)
        alerts = settings.alerts
        self.reports = ReportRenderer(
            max_rows=alerts.report_max_rows, timeout_seconds=alerts.report_timeout_seconds
        )

    def close(self) -> None:
        """Stop the background work (drift reports, Evidently snapshots) this pipeline
        started."""
        self.reports.close()
        if self.snapshots is not None:
            self.snapshots.close()

    @contextmanager
    def _stage(self, model: str, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        # detail = "model": one histogram per stage for all models, not one per model.
        label = model if self.settings.metrics.detail == "feature" else ""
        try:
            yield
        finally:
            self.metrics.batch_duration.labels(label, stage).observe(time.perf_counter() - started)

    def process(self, rt: ModelRuntime, ref: BatchRef) -> BatchOutcome:
        """Score one batch exactly once. Safe to call again after a crash at any point.

        Whatever the batch holds, its attempt ends in the ledger: `scored`, `rejected` (bad
        input, quarantined with the reason) or `failed` (an error watcher did not expect,
        also set aside, with the error as the reason). Only a `SourceError` (the source is
        unreachable: try again later) and a crash leave it `claimed`, to be claimed again.
        """
        if not self.store.claim_batch(rt.name, ref.batch_id, ref.uri):
            return BatchOutcome(rt.name, ref.batch_id, "skipped", reason="already processed")
        rt.last_batch_at = time.time()
        try:
            return self._score(rt, ref)
        except _RETRY_LATER:
            raise
        except Exception as exc:
            return self._fail(rt, ref, exc)

    def _score(self, rt: ModelRuntime, ref: BatchRef) -> BatchOutcome:
        try:
            with self._stage(rt.name, "load"):
                frame = rt.source.load(ref)
            with self._stage(rt.name, "quality"):
                clean, quality = check_batch(
                    frame,
                    rt.reference.profile,
                    rt.cfg.columns,
                    rt.cfg.quality,
                    ref.batch_id,
                    numeric_prediction=rt.cfg.retrain.task == "regression",
                )
            with self._stage(rt.name, "drift"):
                small = self._small_batch(rt, len(clean))
                drift = engine.score(
                    rt.reference.prepared,
                    clean,
                    samples=quality.samples,
                    **self._drift_options(rt, small),
                )
        except BatchRejected as exc:
            return self._reject(rt, ref, exc)
        with self._stage(rt.name, "record"):
            verdict, report = self._record(rt, ref, clean, quality, drift, small)
        # Committed: nothing below may undo or fail the batch.
        try:
            if report is not None:
                self.reports.submit(
                    model=rt.name,
                    batch_id=ref.batch_id,
                    reference=rt.reference.load_frame,
                    current=clean,
                    columns=rt.cfg.columns,
                    drift=rt.cfg.drift,
                    path=report,
                )
                _prune_reports(report.parent, self.settings.alerts.report_retention_days)
            rt.source.archive(ref)
            rt.performance.keep_predictions(ref.batch_id, clean, rt.reference.version)
        except Exception:
            log.exception("after scoring %s/%s (committed)", rt.name, ref.batch_id)
        self._export(rt, quality, drift, verdict)
        if self.snapshots is not None:  # after the commit, in the background
            self.snapshots.submit(
                rt.name,
                ref.batch_id,
                rt.reference.load_frame,
                clean,
                rt.cfg,
                dataset_drift=drift.dataset_drift,
                reference_version=rt.reference.version,
            )
        log.info(
            "scored %s/%s: %d rows, drift share %.2f (%d/%d features)%s; decision: %s (%s)",
            rt.name,
            ref.batch_id,
            quality.rows,
            drift.drift_share,
            drift.n_drifted,
            drift.n_columns,
            " DATASET DRIFT" if drift.dataset_drift else "",
            verdict.outcome,
            verdict.reason,
        )
        return BatchOutcome(rt.name, ref.batch_id, "scored", quality.rows, drift, verdict)

    def _fail(self, rt: ModelRuntime, ref: BatchRef, exc: Exception) -> BatchOutcome:
        """An error watcher did not expect: end the batch `failed` and set it aside, so it is
        neither retried every poll nor left `claimed`. Loud: it is a bug or a new kind of bad
        input, and the traceback is logged once."""
        log.error(
            "unexpected error processing %s/%s; the batch is set aside as failed",
            rt.name,
            ref.batch_id,
            exc_info=exc,
        )
        error = BatchRejected(
            f"{ref.batch_id} could not be processed: {type(exc).__name__}: {escape(str(exc), 300)}",
            check="processing_error",
            hint="this is a watcher bug or a kind of bad input it does not know yet; the log "
            "has the traceback. Fix the file (or upgrade) and drop it again under a new name",
        )
        return self._reject(rt, ref, error, status="failed")

    def _reject(
        self,
        rt: ModelRuntime,
        ref: BatchRef,
        exc: BatchRejected,
        status: Literal["rejected", "failed"] = "rejected",
    ) -> BatchOutcome:
        reason = escape(str(exc), 2000)
        with self.store.transaction(model=rt.name) as conn:
            self.store.finish_batch(
                conn,
                model=rt.name,
                batch_id=ref.batch_id,
                status=status,
                rows=None,
                reference_version=rt.reference.version,
                reason=f"{exc.check}: {reason}",
            )
            self.store.enqueue(
                conn,
                alert_action(
                    "batch_rejected",
                    key=f"rejected:{rt.name}:{ref.batch_id}",
                    model=rt.name,
                    title=f"batch {ref.batch_id} {status}: {exc.check}",
                    severity="warning",
                    details={
                        "check": exc.check,
                        "reason": escape(exc.message, 2000),
                        "what_to_do": exc.hint,
                    },
                    batch={"batch_id": ref.batch_id, "uri": ref.uri},
                ),
            )
            rt.source.commit(conn, ref)
        try:
            where = rt.source.set_aside(ref, reason)
        except Exception:  # committed: the batch stays rejected whatever happens to the file
            log.exception("could not set %s/%s aside", rt.name, ref.batch_id)
            where = None
        self.metrics.batch_set_aside(rt.name, status, exc.check)
        log.warning(
            "%s %s/%s (%s): %s; set aside at %s",
            status,
            rt.name,
            ref.batch_id,
            exc.check,
            reason,
            where or "-",
            extra={"model": rt.name, "batch": ref.batch_id},
        )
        return BatchOutcome(rt.name, ref.batch_id, status, reason=reason)

    def _record(
        self,
        rt: ModelRuntime,
        ref: BatchRef,
        frame: pd.DataFrame,
        quality: QualityReport,
        drift: engine.DriftResult,
        small: dict[str, Any] | None = None,
    ) -> tuple[Verdict, Path | None]:
        result: dict[str, Any] = {"drift": drift.to_json_dict(), "quality": quality.to_dict()}
        if small is not None:
            result["small_batch"] = small
        # The drift report is rendered only for a batch that opens a drift incident, after
        # the commit and in the background (watcher.reports): here only its path is fixed,
        # and the mail that cites it waits for it a bounded time.
        report: Path | None = None
        if drift.dataset_drift and self._opens_drift_incident(rt):
            report = report_path(self.settings.daemon.state_dir / "reports", rt.name, ref.batch_id)
        report_str = str(report) if report is not None else None
        with self.store.transaction(model=rt.name) as conn:
            self.store.finish_batch(
                conn,
                model=rt.name,
                batch_id=ref.batch_id,
                status="scored",
                rows=quality.rows,
                reference_version=rt.reference.version,
                dataset_drift=drift.dataset_drift,
                drift_share=drift.drift_share,
                result=result,
            )
            now = time.time()
            verdict = self._decide(conn, rt, now)
            run_id = run_id_for(rt.name, ref.batch_id) if verdict.triggers else None
            self._record_decision(conn, rt, ref.batch_id, verdict, run_id, now)
            incident = f"drift:{rt.name}"
            opened = verdict.open_incident and incidents.open_incident(
                conn,
                incident,
                "drift",
                rt.name,
                {"batch_id": ref.batch_id},
                alert=self._drift_alert(rt, ref, drift, verdict, report_str),
            )
            if verdict.resolve_incident:
                incidents.resolve_incident(
                    conn, incident, alert=self._drift_over_alert(rt, ref, verdict)
                )
            if run_id is not None and verdict.outcome == "triggered":
                for action in self._trigger_actions(
                    conn, rt, ref.batch_id, ref, drift, verdict, run_id
                ):
                    self.store.enqueue(conn, action)
            if verdict.triggers:
                self.store.reset_streak(conn, rt.name)
            rt.source.commit(conn, ref)
        return verdict, report if opened else None

    @staticmethod
    def _drift_options(rt: ModelRuntime, small: dict[str, Any] | None) -> dict[str, Any]:
        """`engine.score`'s options from the model's `[drift]`, with the tests a small
        batch is scored with instead (see `_small_batch`)."""
        options = engine.options_from_config(rt.cfg.drift)
        if small is not None:
            options["num_stattest"] = small["num_stattest"]
            options["cat_stattest"] = small["cat_stattest"]
        return options

    def _small_batch(self, rt: ModelRuntime, rows: int) -> dict[str, Any] | None:
        """A batch under the reference's noise line: what is done about it, and why.

        With ``small_batches = "pvalue"`` the kinds left to evidently's automatic choice
        are scored with ks (numeric) and chisquare (categorical), which hold their false-
        alarm rate at any size; a test the user named is kept (and warned about)."""
        noise = rt.reference.noise
        too_small = noise is not None and noise.too_small(rows)
        self.metrics.drift_batch_too_small.labels(rt.name).set(int(too_small))
        if noise is not None:
            self.metrics.drift_min_batch_rows.labels(rt.name).set(noise.rows)
        if noise is None or not too_small:
            return None
        dcfg = rt.cfg.drift
        switch = dcfg.small_batches == "pvalue"
        num = dcfg.num_stattest or ("ks" if switch else None)
        cat = dcfg.cat_stattest or ("chisquare" if switch else None)
        named = [t for t in (dcfg.num_stattest, dcfg.cat_stattest) if t]
        bigger = f"send batches of {noise.rows}+ rows (a longer window)"
        if switch and not named:
            action = "scored with ks/chisquare instead (small_batches = 'pvalue')"
        elif switch:
            action = (
                f"the configured {'/'.join(named)} is kept, so its verdict may be noise: "
                f"{bigger} or configure a p-value test"
            )
        else:
            action = (
                "scored as configured (small_batches = 'warn'), so its verdict may be noise: "
                f"{bigger} or set small_batches = 'pvalue'"
            )
        sentence = f"{noise.sentence(rows)}; {action}"
        log.warning("%s: %s", rt.name, sentence)
        return {
            "rows": rows,
            "min_rows": noise.rows,
            "false_alarm": {str(n): a for n, a in noise.false_alarm.items()},
            "num_stattest": num,
            "cat_stattest": cat,
            "note": sentence,
        }

    def _opens_drift_incident(self, rt: ModelRuntime) -> bool:
        """Will this drifted batch open the model's drift incident? `decide`'s rule, read
        before the batch's transaction; exact, because only this pipeline, one batch at a
        time, writes a model's drift history and drift incident."""
        with self.store.transaction() as conn:
            flags = self.store.drift_flags_since_reset(conn, rt.name, rt.cfg.policy.consecutive)
            is_open = self.store.incident_is_open(conn, f"drift:{rt.name}")
        return not is_open and opens_incident(1 + streak_of(flags), rt.cfg.policy)

    # ---- the policy's inputs and the second decision point --------------------------------

    def _decide(self, conn: Any, rt: ModelRuntime, now: float) -> Verdict:
        """The policy over every signal of the model, read inside the caller's transaction."""
        verdict = decide(self._inputs(conn, rt, now), self._policy(rt))
        if verdict.outcome == "dry_run" and not rt.cfg.policy.dry_run:
            verdict = replace(
                verdict,
                reason=verdict.reason.split("; dry run")[0]
                + "; Airflow is not enabled ([airflow] enabled = false): not triggered",
            )
        return verdict

    def _inputs(self, conn: Any, rt: ModelRuntime, now: float) -> PolicyInput:
        name, version = rt.name, rt.reference.version
        deployed = self.store.deployed_at(name)
        scheduled = self.store.last_trigger_at(conn, name, "max_age")
        since = max(deployed or 0.0, scheduled or 0.0)
        return PolicyInput(
            schedule_age_batches=(
                self.store.batches_served_since(conn, name, version, scheduled)
                if scheduled is not None
                else None
            ),
            schedule_age_seconds=max(0.0, now - since) if scheduled is not None else None,
            drift_flags=self.store.drift_flags_since_reset(conn, name, 1000),
            trigger_times=self.store.trigger_times(conn, name, now - DAY),
            active_run=self.store.has_active_run(conn, name),
            now=now,
            age_batches=self.store.batches_served(conn, name, version),
            age_seconds=max(0.0, now - deployed) if deployed is not None else 0.0,
            performance=self.performance_reading(conn, rt),
            trigger_drift_flags=self._weighted_flags(conn, rt),
        )

    def performance_reading(self, conn: Any, rt: ModelRuntime) -> Reading | None:
        """The performance signal over the labelled periods the production version served
        since its deployment (or since the signal last triggered: a retrain that was not
        deployed needs new evidence before the next one). None: the model has no labels."""
        if not rt.performance.tracks:
            return None
        metric = performance_metric(rt.cfg)
        cfg = rt.cfg.policy.performance
        history = [
            p
            for p in self.store.label_periods(conn, rt.name, rt.reference.version)
            if p.metric == metric
        ]
        last = self.store.last_trigger_at(conn, rt.name, "performance")
        since = [p for p in history if last is None or p.at > last]
        holdout = rt.reference.metrics.get(metric)
        baseline = loss_of(metric, holdout) if holdout is not None else None
        if last is not None and (baseline is None or cfg.baseline == "first_period"):
            # The level to compare with stays the deployment's first labelled period, not
            # the first one after the trigger (that one is already degraded).
            first = pooled([PeriodLoss(p.loss, p.rows) for p in history], cfg.min_rows)
            if first:
                baseline = first[0].loss
                cfg = cfg.model_copy(update={"baseline": "holdout"})
        return performance_reading(baseline, [PeriodLoss(p.loss, p.rows) for p in since], cfg)

    def _weighted_flags(self, conn: Any, rt: ModelRuntime) -> list[bool] | None:
        """With `[policy.drift] importance_weighted`, a batch counts as drifted for the
        trigger when the drifted features hold `drift_share` of the model's importance."""
        if not rt.cfg.policy.drift.importance_weighted:
            return None
        importance = rt.reference.importance
        if not importance:
            key = (rt.name, rt.reference.version)
            if key not in self._said_unweighted:
                self._said_unweighted.add(key)
                log.warning(
                    "%s: importance_weighted drift is on, but version %s records no "
                    "feature_importance in the registry: drift is counted unweighted",
                    rt.name,
                    rt.reference.version,
                )
            return None
        limit = max(rt.cfg.policy.consecutive, rt.cfg.policy.resolve_after) + 1
        share = rt.cfg.drift.drift_share
        return [
            weighted_drift_share(cols, importance) >= share
            for cols in self.store.drifted_columns_since_reset(conn, rt.name, limit)
        ]

    def _record_decision(
        self,
        conn: Any,
        rt: ModelRuntime,
        point: str,
        verdict: Verdict,
        run_id: str | None,
        now: float,
    ) -> None:
        self.store.record_decision(
            conn,
            model=rt.name,
            batch_id=point,
            outcome=verdict.outcome,
            reason=verdict.reason,
            run_id=run_id,
            at=now,
            signal=verdict.signal if verdict.triggers else None,
            readings=[r.to_dict() for r in verdict.readings],
        )

    def on_labels(self, rt: ModelRuntime) -> Verdict | None:
        """New labels: record each period's loss and decide again, in one transaction.

        Returns the decision, or None when no labelled period is new or changed. A trigger
        here is keyed by the newest period (``labels:<period>``), so a restart that reads
        the same labels again (it does not: they are marked read in this transaction) could
        not start a second run either.
        """
        read = rt.performance.read_labels()
        if read is None:
            return None
        with self.store.transaction(model=rt.name) as conn:
            changed = rt.performance.record(conn, read)
            if not changed:
                return None
            now = time.time()
            verdict = self._decide(conn, rt, now)
            point = f"labels:{changed[-1].period}"
            if rt.performance.sql is not None:
                # A SQL window is read again as more of its rows get labels: each reading
                # is its own decision point.
                point += f"@{changed[-1].rows}"
            run_id = run_id_for(rt.name, point) if verdict.triggers else None
            self._record_decision(conn, rt, point, verdict, run_id, now)
            if run_id is not None and verdict.outcome == "triggered":
                for action in self._trigger_actions(conn, rt, point, None, None, verdict, run_id):
                    self.store.enqueue(conn, action)
            if verdict.triggers:
                self.store.reset_streak(conn, rt.name)
        self.metrics.retrain_decided(rt.name, verdict.outcome)
        self.export_signals(rt, verdict)
        self._log_periods(rt, changed, verdict)
        return verdict

    def _log_periods(self, rt: ModelRuntime, periods: list[LabelPeriod], verdict: Verdict) -> None:
        for p in periods:
            log.info(
                "%s: labels for %s: %s %.4g on %d rows (served by %s)",
                rt.name,
                p.period,
                p.metric,
                p.value,
                p.rows,
                p.version,
            )
        log.info("%s: decision on new labels: %s (%s)", rt.name, verdict.outcome, verdict.reason)

    def export_signals(self, rt: ModelRuntime, verdict: Verdict) -> None:
        """Each signal's value and threshold, as the decision read them."""
        for r in verdict.readings:
            self.metrics.trigger_signal_value.labels(rt.name, r.signal).set(r.value)
            self.metrics.trigger_signal_threshold.labels(rt.name, r.signal).set(r.threshold)
            self.metrics.trigger_signal_fired.labels(rt.name, r.signal).set(int(r.fired))

    def _policy(self, rt: ModelRuntime) -> PolicyConfig:
        """Without Airflow a trigger could never be delivered: decide as a dry run instead of
        piling undeliverable actions into the outbox."""
        if self.settings.airflow.enabled:
            return rt.cfg.policy
        return rt.cfg.policy.model_copy(update={"dry_run": True})

    def _drift_alert(
        self,
        rt: ModelRuntime,
        ref: BatchRef,
        drift: engine.DriftResult,
        verdict: Verdict,
        report_path: str | None,
    ) -> Action:
        """The mail of a drift incident that opens, with its links."""
        alert = actions.drift_opened(
            rt.name,
            ref,
            drift,
            verdict,
            reference_version=rt.reference.version,
            report_path=report_path,
        )
        if self.snapshots is not None:
            alert.payload["evidently_url"] = self.snapshots.project_url()
        if report_path is not None:
            alert.payload["report_wait_until"] = (
                time.time() + self.settings.alerts.report_wait_seconds
            )
        return alert

    @staticmethod
    def _drift_over_alert(rt: ModelRuntime, ref: BatchRef, verdict: Verdict) -> Action:
        return actions.drift_over(
            rt.name,
            ref,
            verdict,
            resolve_after=rt.cfg.policy.resolve_after,
            reference_version=rt.reference.version,
        )

    def _trigger_actions(
        self,
        conn: Any,
        rt: ModelRuntime,
        point: str,
        ref: BatchRef | None,
        drift: engine.DriftResult | None,
        verdict: Verdict,
        run_id: str,
    ) -> list[Action]:
        """The trigger and its mail: the same whichever signal fired."""
        return actions.retrain_trigger(
            rt.name,
            dag_id=self.settings.dag_id(rt.name),
            run_id=run_id,
            point=point,
            ref=ref,
            drift=drift,
            verdict=verdict,
            conf=self._conf(conn, rt, ref, drift, verdict),
        )

    def _conf(
        self,
        conn: Any,
        rt: ModelRuntime,
        ref: BatchRef | None,
        drift: engine.DriftResult | None,
        verdict: Verdict,
    ) -> dict[str, Any]:
        """What the retraining DAG is told: which model, why, and where the data is."""
        rows = self.store.last_scored(conn, rt.name, verdict.streak)
        source = rt.cfg.source
        data: dict[str, Any] = {"source_kind": source.kind}
        if source.kind == "directory":
            data |= {
                "batches_path": str(source.path / "processed"),
                "labels_path": str(source.labels_path) if source.labels_path else None,
            }
        else:
            data |= {"table": source.table, "labels_table": source.labels_table}
        fired = next((r for r in verdict.readings if r.signal == verdict.signal), None)
        drifted: dict[str, Any] | None = None
        if drift is not None:
            drifted = {
                "drift_share": drift.drift_share,
                "features": [
                    {
                        "feature": n,
                        "stattest": c.stattest,
                        "score": c.score,
                        "threshold": c.threshold,
                    }
                    for n, c in drift.columns.items()
                    if c.drifted
                ],
            }
        return RetrainRequest(
            model=rt.name,
            reason=verdict.reason,
            reason_kind=verdict.reason_kind,
            signal=None if fired is None else fired.to_dict(),
            batches=[r["batch_id"] for r in reversed(rows)],
            window={
                "from": min((r["finished_at"] for r in rows), default=None),
                "to": max((r["finished_at"] for r in rows), default=None),
                "source_window": (
                    [w.isoformat() for w in ref.window] if ref is not None and ref.window else None
                ),
            },
            drift=drifted,
            reference_version=rt.reference.version,
            data=data,
        ).to_conf()

    def _export(
        self,
        rt: ModelRuntime,
        quality: QualityReport,
        drift: engine.DriftResult,
        verdict: Verdict,
    ) -> None:
        self.metrics.batch_scored(
            rt.name,
            quality,
            drift,
            streak=0 if verdict.triggers else verdict.streak,
            per_feature=self.settings.metrics.detail == "feature",
        )
        for col, (_, why) in drift.failures.items():
            log.warning("%s: column %r not scored: %s", rt.name, col, why)
        self.metrics.retrain_decided(rt.name, verdict.outcome)
        self.export_signals(rt, verdict)
