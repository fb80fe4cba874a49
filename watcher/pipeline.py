"""One batch, start to finish: load → quality → drift → one transaction → metrics.

Everything here is synchronous and CPU-bound; the daemon runs it in a worker thread so
the event loop (dispatchers, the run tracker, signal handling) stays responsive.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from watcher.alerts import alert_action
from watcher.config import ModelConfig, PolicyConfig, Settings
from watcher.drift import engine
from watcher.drift.quality import QualityReport, ReferenceProfile, check_batch, profile_reference
from watcher.errors import BatchRejected, ReferenceDataError
from watcher.metrics import Metrics
from watcher.performance import PerformanceTracker
from watcher.policy import DAY, PolicyInput, Verdict, decide, opens_incident, run_id_for, streak_of
from watcher.retrain.data import read_table
from watcher.sources.base import BatchRef, Source
from watcher.state import Action, StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """A model's reference, prepared once per version."""

    version: str
    frame: pd.DataFrame
    prepared: engine.PreparedReference
    profile: ReferenceProfile


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
    status: str  # scored | rejected | skipped
    rows: int = 0
    drift: engine.DriftResult | None = None
    verdict: Verdict | None = None
    reason: str | None = None


def reference_tag(registry_version: str) -> str:
    """How a registry version is named as a reference (and in `watcher_model_info`)."""
    return registry_version if registry_version.startswith("v") else f"v{registry_version}"


def load_reference(name: str, cfg: ModelConfig, settings: Settings) -> Reference:
    """The production version's training data from the registry, else the configured file."""
    # The registry imports skops (and maybe MLflow): load it lazily.
    from watcher.registry_backend import describe, open_registry

    registry = open_registry(settings.registry)
    version = registry.production_version(name)
    if version is not None:
        frame = registry.load_reference(name, version)  # verifies the SHA-256 first
        tag = reference_tag(version)
    elif cfg.reference is not None:
        if not cfg.reference.exists():
            raise ReferenceDataError(
                f"model {name}: reference file {cfg.reference} does not exist",
                hint="set models.<name>.reference to a Parquet/CSV file, or deploy a version",
            )
        frame = read_table(cfg.reference)
        digest = hashlib.sha256(cfg.reference.read_bytes()).hexdigest()[:12]
        tag = f"file-{digest}"
    else:
        raise ReferenceDataError(
            f"model {name} has no reference: no production version in the registry "
            f"({describe(settings.registry)}) and no models.{name}.reference file",
            hint="bootstrap a first version or point `reference` at the training data",
        )
    return prepare(name, cfg, tag, frame)


def prepare(name: str, cfg: ModelConfig, version: str, frame: pd.DataFrame) -> Reference:
    specs, prediction = engine.specs_from_config(cfg)
    missing = [s.name for s in specs if s.name not in frame.columns]
    if missing:
        raise ReferenceDataError(
            f"model {name}: the reference ({version}) lacks feature column(s) {missing}",
            hint="the configured columns must exist in the reference data",
        )
    if prediction is not None and prediction.name not in frame.columns:
        prediction = None  # a first reference may predate predictions; score features only
    prepared = engine.prepare_reference(frame, specs, version=version, prediction=prediction)
    return Reference(version, frame, prepared, profile_reference(frame, cfg.columns))


class Pipeline:
    """Processes batches for every model, recording results and decisions durably."""

    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics

    @contextmanager
    def _stage(self, model: str, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.batch_duration.labels(model, stage).observe(time.perf_counter() - started)

    def process(self, rt: ModelRuntime, ref: BatchRef) -> BatchOutcome:
        """Score one batch exactly once. Safe to call again after a crash at any point."""
        if not self.store.claim_batch(rt.name, ref.batch_id, ref.uri):
            return BatchOutcome(rt.name, ref.batch_id, "skipped", reason="already processed")
        rt.last_batch_at = time.time()
        try:
            with self._stage(rt.name, "load"):
                frame = rt.source.load(ref)
            with self._stage(rt.name, "quality"):
                clean, quality = check_batch(
                    frame, rt.reference.profile, rt.cfg.columns, rt.cfg.quality, ref.batch_id
                )
            with self._stage(rt.name, "drift"):
                drift = engine.score(
                    rt.reference.prepared,
                    clean,
                    drift_share=rt.cfg.drift.drift_share,
                    num_stattest=rt.cfg.drift.num_stattest,
                    cat_stattest=rt.cfg.drift.cat_stattest,
                )
        except BatchRejected as exc:
            return self._reject(rt, ref, exc)
        with self._stage(rt.name, "record"):
            verdict = self._record(rt, ref, clean, quality, drift)
        rt.source.archive(ref)
        rt.performance.keep_predictions(ref.batch_id, clean)
        self._export(rt, quality, drift, verdict)
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

    def _reject(self, rt: ModelRuntime, ref: BatchRef, exc: BatchRejected) -> BatchOutcome:
        reason = str(exc)
        with self.store.transaction() as conn:
            self.store.finish_batch(
                conn,
                model=rt.name,
                batch_id=ref.batch_id,
                status="rejected",
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
                    title=f"batch {ref.batch_id} rejected: {exc.check}",
                    severity="warning",
                    details={"check": exc.check, "reason": exc.message, "what_to_do": exc.hint},
                    batch={"batch_id": ref.batch_id, "uri": ref.uri},
                ),
            )
            rt.source.commit(conn, ref)
        where = rt.source.set_aside(ref, reason)
        self.metrics.batches.labels(rt.name, "rejected").inc()
        self.metrics.batches_rejected.labels(rt.name, exc.check).inc()
        log.warning(
            "rejected %s/%s (%s): %s; set aside at %s",
            rt.name,
            ref.batch_id,
            exc.check,
            reason,
            where or "-",
            extra={"model": rt.name, "batch": ref.batch_id},
        )
        return BatchOutcome(rt.name, ref.batch_id, "rejected", reason=reason)

    def _record(
        self,
        rt: ModelRuntime,
        ref: BatchRef,
        frame: pd.DataFrame,
        quality: QualityReport,
        drift: engine.DriftResult,
    ) -> Verdict:
        result: dict[str, Any] = {"drift": drift.to_json_dict(), "quality": quality.to_dict()}
        # The drift report is rendered only for a batch that opens a drift incident, and
        # before the transaction, so the mail that cites it never points at nothing. Not
        # inside it: rendering (and evidently's first import) takes seconds, and the
        # transaction holds the store's lock, which the dispatchers and the tracker on the
        # event loop need for every read.
        report_path: str | None = None
        if drift.dataset_drift and self._opens_drift_incident(rt):
            report_path = self._write_report(rt, ref, frame)
        with self.store.transaction() as conn:
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
            verdict = decide(
                PolicyInput(
                    drift_flags=self.store.drift_flags_since_reset(conn, rt.name, 1000),
                    trigger_times=self.store.trigger_times(conn, rt.name, now - DAY),
                    active_run=self.store.has_active_run(conn, rt.name),
                    now=now,
                ),
                self._policy(rt),
            )
            if verdict.outcome == "dry_run" and not rt.cfg.policy.dry_run:
                verdict = replace(
                    verdict,
                    reason=verdict.reason.split(";")[0]
                    + "; Airflow is not enabled ([airflow] enabled = false): not triggered",
                )
            run_id = run_id_for(rt.name, ref.batch_id) if verdict.triggers else None
            self.store.record_decision(
                conn,
                model=rt.name,
                batch_id=ref.batch_id,
                outcome=verdict.outcome,
                reason=verdict.reason,
                run_id=run_id,
                at=now,
            )
            incident = f"drift:{rt.name}"
            opened = verdict.open_incident and self.store.open_incident(
                conn, incident, "drift", rt.name, {"batch_id": ref.batch_id}
            )
            for action in self._actions(conn, rt, ref, drift, verdict, run_id, opened, report_path):
                self.store.enqueue(conn, action)
            if verdict.triggers:
                self.store.reset_streak(conn, rt.name)
            rt.source.commit(conn, ref)
        return verdict

    def _opens_drift_incident(self, rt: ModelRuntime) -> bool:
        """Will this drifted batch open the model's drift incident? `decide`'s rule, read
        before the batch's transaction; exact, because only this pipeline, one batch at a
        time, writes a model's drift history and drift incident."""
        with self.store.transaction() as conn:
            flags = self.store.drift_flags_since_reset(conn, rt.name, rt.cfg.policy.consecutive)
            is_open = conn.execute(
                "SELECT 1 FROM incidents WHERE key = ? AND resolved_at IS NULL",
                (f"drift:{rt.name}",),
            ).fetchone()
        return is_open is None and opens_incident(1 + streak_of(flags), rt.cfg.policy)

    def _policy(self, rt: ModelRuntime) -> PolicyConfig:
        """Without Airflow a trigger could never be delivered: decide as a dry run instead of
        piling undeliverable actions into the outbox."""
        if self.settings.airflow.enabled:
            return rt.cfg.policy
        return rt.cfg.policy.model_copy(update={"dry_run": True})

    def _actions(
        self,
        conn: Any,
        rt: ModelRuntime,
        ref: BatchRef,
        drift: engine.DriftResult,
        verdict: Verdict,
        run_id: str | None,
        opened: bool,
        report_path: str | None,
    ) -> list[Action]:
        features = [c.to_dict() | {"feature": name} for name, c in drift.columns.items()]
        features.sort(key=lambda f: (not f["drifted"], -float(f["score"])))
        batch = {"batch_id": ref.batch_id, "uri": ref.uri}
        incident = f"drift:{rt.name}"
        actions: list[Action] = []
        if opened:
            actions.append(
                alert_action(
                    "drift_persisting",
                    key=f"{incident}:opened:{ref.batch_id}",
                    model=rt.name,
                    title=f"dataset drift in {verdict.streak} consecutive batches "
                    f"({drift.n_drifted}/{drift.n_columns} features drifted)",
                    severity="warning",
                    details={
                        "drift_share": drift.drift_share,
                        "streak": verdict.streak,
                        "reference_version": rt.reference.version,
                        "decision": verdict.outcome,
                        "decision_reason": verdict.reason,
                    },
                    features=features,
                    batch=batch,
                    report_path=report_path,
                    incident=incident,
                )
            )
        if verdict.resolve_incident and self.store.resolve_incident(conn, incident):
            actions.append(
                alert_action(
                    "drift_resolved",
                    key=f"{incident}:resolved:{ref.batch_id}",
                    model=rt.name,
                    title=f"dataset drift over: {verdict.streak} drifted, "
                    f"{rt.cfg.policy.resolve_after} clean batches in a row",
                    severity="info",
                    batch=batch,
                    incident=incident,
                    details={"reference_version": rt.reference.version},
                )
            )
        if run_id is not None and verdict.outcome == "triggered":
            conf = self._conf(conn, rt, ref, drift, verdict)
            actions.append(
                Action(
                    kind="trigger",
                    key=run_id,
                    model=rt.name,
                    payload={
                        "dag_id": self.settings.dag_id(rt.name),
                        "run_id": run_id,
                        "conf": conf,
                        "note": f"watcher: {verdict.reason}",
                    },
                )
            )
            actions.append(
                alert_action(
                    "retrain_triggered",
                    key=f"triggered:{run_id}",
                    model=rt.name,
                    title=f"retraining triggered ({self.settings.dag_id(rt.name)})",
                    severity="info",
                    features=features[:10],
                    batch=batch,
                    run={"dag_id": self.settings.dag_id(rt.name), "run_id": run_id},
                    details={"reason": verdict.reason, "drift_share": drift.drift_share},
                )
            )
        return actions

    def _conf(
        self,
        conn: Any,
        rt: ModelRuntime,
        ref: BatchRef,
        drift: engine.DriftResult,
        verdict: Verdict,
    ) -> dict[str, Any]:
        """What the retraining DAG is told: which model, why, and where the data is."""
        rows = conn.execute(
            "SELECT batch_id, uri, finished_at FROM batches WHERE model = ? AND status = 'scored' "
            "ORDER BY seq DESC LIMIT ?",
            (rt.name, verdict.streak),
        ).fetchall()
        source = rt.cfg.source
        data: dict[str, Any] = {"source_kind": source.kind}
        if source.kind == "directory":
            data |= {
                "batches_path": str(source.path / "processed"),
                "labels_path": str(source.labels_path) if source.labels_path else None,
            }
        else:
            data |= {"table": source.table, "labels_table": source.labels_table}
        return {
            "model": rt.name,
            "reason": verdict.reason,
            "batches": [r["batch_id"] for r in reversed(rows)],
            "window": {
                "from": min((r["finished_at"] for r in rows), default=None),
                "to": max((r["finished_at"] for r in rows), default=None),
                "source_window": [w.isoformat() for w in ref.window] if ref.window else None,
            },
            "drift": {
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
            },
            "reference_version": rt.reference.version,
            "data": data,
        }

    def _write_report(self, rt: ModelRuntime, ref: BatchRef, frame: pd.DataFrame) -> str | None:
        try:
            from watcher.alerts.report import write_drift_report
        except ImportError:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ref.batch_id)
        path = self.settings.daemon.state_dir / "reports" / rt.name / f"{safe}.html"
        try:
            written = write_drift_report(
                rt.reference.frame, frame, rt.cfg.columns, path, drift=rt.cfg.drift
            )
            return str(written)
        except Exception:  # a report is a convenience: never lose the alert over it
            log.exception("could not write the drift report for %s/%s", rt.name, ref.batch_id)
            return None

    def _export(
        self,
        rt: ModelRuntime,
        quality: QualityReport,
        drift: engine.DriftResult,
        verdict: Verdict,
    ) -> None:
        m, name = self.metrics, rt.name
        m.batches.labels(name, "scored").inc()
        m.batch_rows.labels(name).set(quality.rows)
        m.last_batch_timestamp.labels(name).set(time.time())
        m.dataset_drift_ratio.labels(name).set(drift.drift_share)
        m.dataset_drifted.labels(name).set(int(drift.dataset_drift))
        m.drifted_features.labels(name).set(drift.n_drifted)
        m.drift_streak.labels(name).set(0 if verdict.triggers else verdict.streak)
        for col, c in drift.columns.items():
            m.set_feature_drift(name, col, c.stattest, c.score, c.threshold)
            m.feature_drifted.labels(name, col).set(int(c.drifted))
        if drift.prediction is not None:
            m.prediction_drift_score.labels(name).set(drift.prediction.score)
        for col, share in quality.missing_share.items():
            m.missing_values_ratio.labels(name, col).set(share)
        for v in quality.violations:
            m.quality_violations.labels(name, v.check).inc()
        m.retrain_triggers.labels(name, verdict.outcome).inc()
