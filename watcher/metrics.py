"""Every Prometheus metric watcher exports, on an injected registry.

Names follow Prometheus conventions (base units, `_total` for counters); the list is the
README's metrics table. Tests build a fresh `CollectorRegistry` per daemon and read values
back with `registry.get_sample_value(...)`.

A series written from more than one place has one writer here, a method named for what
happened (`batch_scored`, `retrain_decided`, `trigger_delivered`, `source_polled`, ...):
the places that know the event call it, and what a series means is decided once.

Size: over 400 lines because every series is declared here next to its one writer, so
one file answers "what does watcher export, and who writes it". The HTTP endpoint that
serves them (`Health`, `MetricsServer`) is in `watcher.metrics_http`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client import (
    ProcessCollector as _ProcessCollector,
)

from watcher import __version__
from watcher.metrics_models import ModelFamilies

if TYPE_CHECKING:
    from watcher.drift.engine import DriftResult
    from watcher.drift.quality import QualityReport

# Stage times seen (benchmarks/bench_latency.py): 10k rows take 5-250 ms per stage, 1M rows
# 0.5-10 s. Eight bounds resolve the 100 ms batch-to-metric target, big batches and the
# WatcherScoringSlow rule's 120 s, at 4 stages x 12 series per model (there were 76 with
# 15 bounds: 7,600 for 100 models).
_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 2.5, 15, 120, 300)


class Metrics:
    """All metrics of one daemon. Label sets are declared here and nowhere else."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._feature_tests: dict[tuple[str, str], str] = {}
        # model -> the columns and metrics its labelled gauges were written for: what
        # `forget_model` removes when a replica loses the model.
        self._feature_columns: dict[str, set[str]] = {}
        self._performance_metrics: dict[str, set[str]] = {}
        self._versions: dict[str, str] = {}  # model -> the version watcher_model_info shows
        r = self.registry
        # Process CPU and memory for the operations dashboard.
        _ProcessCollector(registry=r)

        # Gauges and counters labelled by model: plain dicts under one collector whose
        # exposition text is kept rendered between scrapes (metrics_models).
        self.model_families = ModelFamilies(r)
        g = self.model_families.gauge
        c = self.model_families.counter

        self.build_info = Info("watcher_build", "Version of the running watcher.", registry=r)
        self.build_info.info({"version": __version__})

        self.batches = c(
            "watcher_batches",
            "Batches processed, by outcome (scored, rejected, failed).",
            ("model", "outcome"),
        )
        self.batches_rejected = c(
            "watcher_batches_rejected",
            "Batches quarantined, by the check that rejected them.",
            ("model", "reason"),
        )
        self.batch_rows = g(
            "watcher_batch_rows",
            "Rows in the last scored batch.",
        )
        self.batch_duration = Histogram(
            "watcher_batch_duration_seconds",
            "Time spent per batch and stage.",
            ["model", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.feature_drift_score = Gauge(
            "watcher_feature_drift_score",
            "Drift score of a feature in the last batch.",
            ["model", "feature", "stattest"],
            registry=r,
        )
        self.feature_drift_threshold = Gauge(
            "watcher_feature_drift_threshold",
            "Threshold the feature's drift score is held to.",
            ["model", "feature", "stattest"],
            registry=r,
        )
        self.feature_drifted = Gauge(
            "watcher_feature_drifted",
            "1 when the feature drifted in the last batch.",
            ["model", "feature"],
            registry=r,
        )
        self.dataset_drift_ratio = g(
            "watcher_dataset_drift_ratio",
            "Share of scored features that drifted (0-1).",
        )
        self.dataset_drifted = g(
            "watcher_dataset_drifted",
            "1 when the last batch showed dataset drift.",
        )
        self.drifted_features = g(
            "watcher_drifted_features",
            "Number of features that drifted in the last batch.",
        )
        self.drift_streak = g(
            "watcher_drift_streak",
            "Consecutive batches with dataset drift.",
        )
        self.prediction_drift_score = g(
            "watcher_prediction_drift_score",
            "Drift score of the prediction column.",
        )
        self.missing_values_ratio = Gauge(
            "watcher_missing_values_ratio",
            "Share of missing values per feature, last batch (0-1).",
            ["model", "feature"],
            registry=r,
        )
        self.quality_violations = c(
            "watcher_data_quality_violations",
            "Data quality checks that failed.",
            ("model", "check"),
        )
        self.trigger_signal_value = g(
            "watcher_trigger_signal_value",
            "A trigger signal's current value (drift: streak; performance: CUSUM of the "
            "relative loss excess; max_age: batches or seconds since deployment).",
            ("model", "signal"),
        )
        self.trigger_signal_threshold = g(
            "watcher_trigger_signal_threshold",
            "The value at which the trigger signal fires.",
            ("model", "signal"),
        )
        self.trigger_signal_fired = g(
            "watcher_trigger_signal_fired",
            "1 when the trigger signal fires at the latest decision.",
            ("model", "signal"),
        )
        self.drift_batch_too_small = g(
            "watcher_drift_batch_too_small",
            "1 when the last batch was under the reference's noise line (its drift "
            "verdict would be chance with the tests evidently's rule picks).",
        )
        self.drift_min_batch_rows = g(
            "watcher_drift_min_batch_rows",
            "Rows a batch needs before dataset drift means something against the reference "
            "(0: any size).",
        )
        self.model_performance = Gauge(
            "watcher_model_performance",
            "Production model performance on labelled data.",
            ["model", "metric"],
            registry=r,
        )
        self.last_batch_timestamp = g(
            "watcher_last_batch_timestamp_seconds",
            "Unix time the last batch was scored.",
        )
        self.retrain_decisions = c(
            "watcher_retrain_decisions",
            "The retrain policy's decisions, by outcome (triggered, dry_run, streak_building, "
            "cooldown, ...): one per scored batch and per new labelled period.",
            ("model", "outcome"),
        )
        self.retrain_deliveries = c(
            "watcher_retrain_deliveries",
            "Retrain triggers delivered to Airflow, by outcome (delivered, duplicate: the run "
            "existed already; failed: refused for good, a dead letter).",
            ("model", "outcome"),
        )
        self.retrain_runs = Gauge(
            "watcher_retrain_runs",
            "Retrain runs known to the tracker, by state.",
            ["model", "state"],
            registry=r,
        )
        self.retrain_last_success = g(
            "watcher_retrain_last_success_timestamp_seconds",
            "Unix time the last retrain run of the model succeeded.",
        )
        self.alerts = Counter(
            "watcher_alerts",
            "Alert mails, by kind and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.webhooks = Counter(
            "watcher_webhook_posts",
            "Alert posts to webhooks, by webhook and outcome (sent, retry, dead, digested).",
            ["webhook", "outcome"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "watcher_outbox_pending", "Actions waiting in the outbox.", ["kind"], registry=r
        )
        self.dead_letters = Counter(
            "watcher_dead_letters",
            "Actions given up on after permanent failures.",
            ["kind"],
            registry=r,
        )
        self.model_info = g(
            "watcher_model_info",
            "1 for the model version whose reference is in use.",
            ("model", "version"),
        )
        self.airflow_up = Gauge(
            "watcher_airflow_up", "1 when every Airflow component reports healthy.", registry=r
        )
        self.smtp_up = Gauge(
            "watcher_smtp_up", "1 when the last SMTP delivery attempt succeeded.", registry=r
        )
        self.source_up = g(
            "watcher_source_up",
            "1 when the model's source answered its last poll.",
        )
        self.late_rows = c(
            "watcher_late_rows",
            "Rows that arrived after their window was scored.",
            ("model",),
        )
        self.sampled_rows = c(
            "watcher_sampled_out_rows",
            "Rows left out of a window by the per-window row cap.",
            ("model",),
        )
        self.problems = c(
            "watcher_problems",
            "Failures contained without stopping the daemon, by model and kind (label_file, "
            "registry, source, name_reused, state_write, internal): each is logged and the "
            "rest of the daemon keeps monitoring.",
            ("model", "kind"),
        )
        self.state_writable = Gauge(
            "watcher_state_writable",
            "1 while the state store takes writes; 0 after a write failed (disk full, "
            "read-only): outbox deliveries stop until it works again.",
            registry=r,
        )
        # Replicas on a PostgreSQL state (watcher.replicas); a lone SQLite daemon has none.
        self.models_owned = Gauge(
            "watcher_models_owned",
            "Models this replica owns (holds the lease of) and scores; sums to the fleet's "
            "model count across replicas.",
            registry=r,
        )
        self.model_owned = Gauge(
            "watcher_model_owned",
            "1 for each model this replica owns, 0 for the others: per-model series of a "
            "replica that no longer owns the model are stale (the alert rules skip them).",
            ["model"],
            registry=r,
        )
        self.unowned = Gauge(
            "watcher_models_without_owner",
            "Models no live replica holds a lease on, as this replica reads the lease "
            "table: nobody scores them (max across replicas).",
            registry=r,
        )
        self.replicas_live = Gauge(
            "watcher_replicas_live", "Replicas alive on this state database.", registry=r
        )
        self.replica_duties = Gauge(
            "watcher_replica_duties",
            "1 on the replica that runs the fleet-wide duties (run tracker, retention).",
            registry=r,
        )
        self.writes_fenced = Counter(
            "watcher_writes_fenced",
            "Writes for a model refused because this replica had lost its lease (another "
            "replica took the model over); the batch is scored by the new owner.",
            registry=r,
        )
        self.lease_changes = Counter(
            "watcher_lease_changes",
            "Leases this replica acquired, lost (expired or taken over) or released.",
            ["change"],
            registry=r,
        )
        self.source_file_problems = c(
            "watcher_source_file_problems",
            "Files in a batch folder watcher would not read or could not move, by reason.",
            ("model", "reason"),
        )
        # stamina's retries (Airflow calls, SMTP, SQL connections) on this registry, not on
        # the global one nobody serves: see `count_retry`. Same name and labels as stamina's.
        self.retries = Counter(
            "stamina_retries",
            "Retries scheduled by stamina, by callable, retry number and error type.",
            ["callable", "retry_num", "error_type"],
            registry=r,
        )
        self.dag_paused = c(
            "watcher_dag_paused_detections",
            "Times a model's retrain DAG was found paused.",
            ("model",),
        )
        self.drift_test_failures = c(
            "watcher_drift_test_failures",
            "Columns a stat test could not score (it raised or returned no finite score).",
            ("model", "stattest"),
        )
        self.evidently_snapshots = c(
            "watcher_evidently_snapshots",
            "Batches sent to the Evidently UI workspace, by outcome (added, failed).",
            ("model", "outcome"),
        )

    def init_model(self, model: str, *, preset_events: bool = True) -> None:
        """Export a model's event counters at 0 before their first event.

        Prometheus sees a labelled counter only once it is exported: one that first appears
        already at 1 shows no increase at all, so the first rejected batch or retrain
        trigger of a model would be invisible to rate()/increase(). With
        `preset_events=False` (`[metrics] detail = "model"`, for fleets of hundreds of
        models) only `watcher_batches_total{outcome="scored"}` is pre-set: the other 12
        zeros were 12 of a model's 29 series, and every bundled alert on these counters
        also fires on a series that first appears above 0 (the `unless ... offset` arm in
        dashboards/prometheus/rules/watcher.rules.yml).
        """
        self.batches.labels(model, "scored")
        for kind in ("trigger", "alert"):
            self.dead_letters.labels(kind)
        if not preset_events:
            return
        for outcome in ("rejected", "failed"):
            self.batches.labels(model, outcome)
        self.retrain_decisions.labels(model, "triggered")
        self.retrain_deliveries.labels(model, "failed")
        self.dag_paused.labels(model)
        for kind in ("label_file", "registry", "source", "name_reused", "internal"):
            self.problems.labels(model, kind)
        self.late_rows.labels(model)
        self.sampled_rows.labels(model)

    def set_feature_drift(
        self, model: str, feature: str, stattest: str, score: float, threshold: float
    ) -> None:
        """The feature's score and threshold under the test that produced them.

        evidently's automatic choice can switch a column's test between batches (KS below
        1,000 reference rows, Wasserstein above, ...): the series under the previous test
        is removed, or dashboards would keep showing its last, stale score forever.
        """
        # The test each (model, feature) was last exported under: looking it up here, not
        # by collecting every series, keeps a batch's export independent of how many
        # models the daemon watches (a thousand models: 15,000 series per gauge).
        previous = self._feature_tests.get((model, feature))
        if previous is not None and previous != stattest:
            for gauge in (self.feature_drift_score, self.feature_drift_threshold):
                with contextlib.suppress(KeyError):
                    gauge.remove(model, feature, previous)
        self._feature_tests[(model, feature)] = stattest
        self.feature_drift_score.labels(model, feature, stattest).set(score)
        self.feature_drift_threshold.labels(model, feature, stattest).set(threshold)

    # ---- one writer per series: what happened ----------------------------------------------

    def performance_measured(self, model: str, metric: str, value: float) -> None:
        """The production model's error (or score) on its labelled rows."""
        self.model_performance.labels(model, metric).set(value)
        self._performance_metrics.setdefault(model, set()).add(metric)

    def forget_model(self, model: str) -> None:
        """Stop exporting `model`'s gauges: a replica lost it, and its owner exports them
        now (a frozen copy here would be a second, stale truth). Counters stay: summed
        across replicas, a rate never reads them as current."""
        self.model_families.forget(model)
        for col in self._feature_columns.pop(model, set()):
            test = self._feature_tests.pop((model, col), None)
            removals: list[tuple[Gauge, tuple[str, ...]]] = [
                (self.feature_drifted, (model, col)),
                (self.missing_values_ratio, (model, col)),
            ]
            if test is not None:
                removals += [
                    (self.feature_drift_score, (model, col, test)),
                    (self.feature_drift_threshold, (model, col, test)),
                ]
            for gauge, labels in removals:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        for metric in self._performance_metrics.pop(model, set()):
            with contextlib.suppress(KeyError):
                self.model_performance.remove(model, metric)

    def batch_scored(
        self,
        model: str,
        quality: QualityReport,
        drift: DriftResult,
        *,
        streak: int,
        per_feature: bool,
    ) -> None:
        """A batch was scored and committed: its outcome, size, drift and quality."""
        self.batches.labels(model, "scored").inc()
        self.batch_rows.labels(model).set(quality.rows)
        self.last_batch_timestamp.labels(model).set(time.time())
        self.dataset_drift_ratio.labels(model).set(drift.drift_share)
        self.dataset_drifted.labels(model).set(int(drift.dataset_drift))
        self.drifted_features.labels(model).set(drift.n_drifted)
        self.drift_streak_now(model, streak)
        columns = self._feature_columns.setdefault(model, set())
        for col, c in drift.columns.items() if per_feature else ():
            self.set_feature_drift(model, col, c.stattest, c.score, c.threshold)
            self.feature_drifted.labels(model, col).set(int(c.drifted))
            columns.add(col)
        if drift.prediction is not None:
            self.prediction_drift_score.labels(model).set(drift.prediction.score)
        for test, _ in drift.failures.values():
            self.drift_test_failures.labels(model, test).inc()
        for col, share in quality.missing_share.items() if per_feature else ():
            self.missing_values_ratio.labels(model, col).set(share)
            columns.add(col)
        for v in quality.violations:
            self.quality_violation(model, v.check)

    def drift_streak_now(self, model: str, streak: int) -> None:
        """The model's drift streak (after a batch, or read back at a reference switch)."""
        self.drift_streak.labels(model).set(streak)

    def quality_violation(self, model: str, check: str) -> None:
        """A data quality check failed (in a batch, or a sql source's NULL timestamps)."""
        self.quality_violations.labels(model, check).inc()

    def batch_set_aside(self, model: str, outcome: str, check: str | None = None) -> None:
        """A batch ended `rejected` (by `check`) or `failed`."""
        self.batches.labels(model, outcome).inc()
        if outcome == "rejected" and check is not None:
            self.batches_rejected.labels(model, check).inc()

    def retrain_decided(self, model: str, outcome: str) -> None:
        """The policy decided (at a batch or at new labels): triggered, dry_run, ..."""
        self.retrain_decisions.labels(model, outcome).inc()

    def trigger_delivered(self, model: str, outcome: str) -> None:
        """A trigger left the outbox: delivered, duplicate (the run existed) or failed."""
        self.retrain_deliveries.labels(model, outcome).inc()

    def source_polled(self, model: str, *, up: bool) -> None:
        """The model's source answered its poll (or is assumed to, at start), or not."""
        self.source_up.labels(model).set(1 if up else 0)

    def problem(self, model: str, kind: str, count: int = 1) -> None:
        """A failure contained without stopping the daemon (see `watcher_problems_total`)."""
        self.problems.labels(model, kind).inc(count)

    def dead_letter(self, kind: str) -> None:
        """An outbox action (trigger, alert, webhook) was given up on for good."""
        self.dead_letters.labels(kind).inc()

    def alert_mailed(self, kind: str, outcome: str, count: int = 1) -> None:
        """An alert mail's delivery: sent, retry, dead, digested, redelivered."""
        self.alerts.labels(kind, outcome).inc(count)

    def webhook_posted(self, hook: str, outcome: str, count: int = 1) -> None:
        """An alert post to a webhook: sent, retry, dead, digested."""
        self.webhooks.labels(hook, outcome).inc(count)

    def init_webhook(self, hook: str) -> None:
        """Export a webhook's outcome counters at 0 before its first post."""
        for outcome in ("sent", "retry", "dead", "digested"):
            self.webhooks.labels(hook, outcome)
        self.dead_letters.labels("webhook")

    def snapshot_sent(self, model: str, outcome: str) -> None:
        """A batch sent to the Evidently UI workspace: added, failed, dropped."""
        self.evidently_snapshots.labels(model, outcome).inc()

    def outbox_pending_now(self, counts: Mapping[str, int]) -> None:
        """The outbox's pending actions by kind, as the store counted them just now."""
        for kind, n in counts.items():
            self.outbox_pending.labels(kind).set(n)

    def count_retry(self, details: Any) -> None:
        """A stamina on-retry hook (`stamina.instrumentation.RetryDetails`)."""
        self.retries.labels(
            details.name, str(details.retry_num), type(details.caused_by).__name__
        ).inc()

    def set_model_version(self, model: str, version: str) -> None:
        """Exactly one `watcher_model_info` series per model: the version in use."""
        previous = self._versions.get(model)
        if previous is not None and previous != version:
            self.model_info.remove(model, previous)
        self._versions[model] = version
        self.model_info.labels(model, version).set(1)
