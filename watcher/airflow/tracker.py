"""Follows triggered retrain runs to their end and acts on the end exactly once.

Every run the dispatcher delivered is a row in the state store. The tracker polls the
active ones; when one ends it either awaits the success hook (the registry reload) or
enqueues a "retrain_failed" alert, and only then marks the run handled. A crash before that
mark repeats the action on restart, so the hook must be idempotent (reloading the same
production version twice is a no-op) and the alert's key makes its second enqueue a no-op.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from watcher.airflow.gateway import AirflowGateway
from watcher.alerts import alert_action
from watcher.config import Settings
from watcher.errors import AirflowError
from watcher.metrics import Metrics
from watcher.state import ACTIVE_RUN_STATES, RunRecord, StateStore

log = logging.getLogger(__name__)

RUN_STATES = ("queued", "running", "success", "failed")
# A run deleted in Airflow before it ended; handled like a failure.
MISSING = "missing"

OnRunSuccess = Callable[[str, RunRecord], Awaitable[None]]
# Awaited once per ended run, whatever its state, before it is handled (attaches the drift
# reports to the MLflow run); its failure is logged and never holds the run's handling up.
OnRunEnd = Callable[[RunRecord], Awaitable[None]]


class RunTracker:
    """A PeriodicWorker: one round polls every active run and handles every ended one."""

    name = "airflow-run-tracker"

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        metrics: Metrics,
        gateway: AirflowGateway,
        on_run_success: OnRunSuccess,
        *,
        on_run_end: OnRunEnd | None = None,
        interval_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.gateway = gateway
        self.on_run_success = on_run_success
        self.on_run_end = on_run_end
        self.interval_seconds = (
            interval_seconds
            if interval_seconds is not None
            else settings.airflow.poll_interval_seconds
        )

    async def run_once(self) -> None:
        for run in self.store.runs(unhandled_only=True, limit=10_000):
            if run.state in ACTIVE_RUN_STATES:
                try:
                    state = await self._poll(run)
                except AirflowError as exc:
                    # Airflow down or login refused: every other poll would fail the same way.
                    log.warning("cannot read run %s of %s: %s", run.run_id, run.dag_id, exc)
                    break
                if state in ACTIVE_RUN_STATES:
                    continue
                run = self._reload(run.run_id)
            await self._handle_end(run)
        self._export_metrics()

    async def close(self) -> None:
        self.gateway.close()

    async def _poll(self, run: RunRecord) -> str:
        """The run's state in Airflow, recorded when it changed."""
        try:
            state = await self.gateway.run_state(run.dag_id, run.run_id)
        except AirflowError as exc:
            if exc.status != 404:
                raise
            state = MISSING
        if state != run.state:
            self.store.update_run(run.run_id, state)
            log.info("retrain run %s of %s: %s -> %s", run.run_id, run.dag_id, run.state, state)
        return state

    def _reload(self, run_id: str) -> RunRecord:
        for run in self.store.runs(unhandled_only=True, limit=10_000):
            if run.run_id == run_id:
                return run
        raise LookupError(f"run {run_id} vanished from the state store")

    async def _handle_end(self, run: RunRecord) -> None:
        if self.on_run_end is not None:
            try:
                await self.on_run_end(run)
            except Exception:
                log.exception("end hook for run %s of %s failed", run.run_id, run.model)
        if run.state == "success":
            try:
                await self.on_run_success(run.model, run)
            except Exception:
                # Left unhandled on purpose: the next round calls the hook again.
                log.exception("success hook for run %s of %s failed", run.run_id, run.model)
                return
        else:
            ui = self.settings.airflow.ui_url or self.settings.airflow.url
            why = (
                "the run no longer exists in Airflow"
                if run.state == MISSING
                else f"the run ended {run.state}"
            )
            with self.store.transaction() as conn:
                self.store.enqueue(
                    conn,
                    alert_action(
                        "retrain_failed",
                        key=f"retrain_failed:{run.run_id}",
                        model=run.model,
                        title=f"Retraining of {run.model} failed: {why}",
                        severity="critical",
                        details={"reason": why},
                        run={
                            "run_id": run.run_id,
                            "dag_id": run.dag_id,
                            "state": run.state,
                            "url": f"{ui}/dags/{run.dag_id}/runs/{run.run_id}",
                        },
                    ),
                )
        self.store.mark_run_handled(run.run_id)

    def _export_metrics(self) -> None:
        runs = self.store.runs(limit=1_000_000)
        counts = Counter((r.model, r.state) for r in runs)
        last_success: dict[str, float] = {}
        for r in runs:
            if r.state == "success" and r.ended_at is not None:
                last_success[r.model] = max(last_success.get(r.model, 0.0), r.ended_at)
        for model in {r.model for r in runs}:
            states = {*RUN_STATES, *(s for m, s in counts if m == model)}
            for state in states:
                self.metrics.retrain_runs.labels(model=model, state=state).set(
                    counts[(model, state)]
                )
        for model, at in last_success.items():
            self.metrics.retrain_last_success.labels(model=model).set(at)
