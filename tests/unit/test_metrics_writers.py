"""One writer per series: what happened is told to `Metrics` by intent (`retrain_decided`,
`trigger_delivered`, ...), and the policy's decisions and the trigger deliveries are two
series, not one."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from watcher.metrics import Metrics

WATCHER = Path(__file__).resolve().parents[2] / "watcher"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_decisions_and_deliveries_are_two_series() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.init_model("bikes")
    # Exported at 0 before the first event, so the first one shows as an increase.
    assert (
        value(registry, "watcher_retrain_decisions_total", model="bikes", outcome="triggered") == 0
    )
    assert value(registry, "watcher_retrain_deliveries_total", model="bikes", outcome="failed") == 0
    m.retrain_decided("bikes", "triggered")
    m.retrain_decided("bikes", "streak_building")
    m.trigger_delivered("bikes", "delivered")
    m.trigger_delivered("bikes", "duplicate")
    decisions = "watcher_retrain_decisions_total"
    deliveries = "watcher_retrain_deliveries_total"
    assert value(registry, decisions, model="bikes", outcome="triggered") == 1
    assert value(registry, decisions, model="bikes", outcome="streak_building") == 1
    assert value(registry, decisions, model="bikes", outcome="delivered") is None
    assert value(registry, deliveries, model="bikes", outcome="delivered") == 1
    assert value(registry, deliveries, model="bikes", outcome="duplicate") == 1
    assert value(registry, deliveries, model="bikes", outcome="triggered") is None
    assert (
        value(registry, "watcher_retrain_triggers_total", model="bikes", outcome="triggered")
        is None
    )


def test_batch_outcomes_sources_problems_and_outbox() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.batch_set_aside("bikes", "rejected", "schema")
    m.batch_set_aside("bikes", "failed")
    m.source_polled("bikes", up=False)
    m.problem("bikes", "name_reused", 3)
    m.outbox_pending_now({"alert": 2, "trigger": 0})
    assert value(registry, "watcher_batches_total", model="bikes", outcome="rejected") == 1
    assert value(registry, "watcher_batches_total", model="bikes", outcome="failed") == 1
    assert value(registry, "watcher_batches_rejected_total", model="bikes", reason="schema") == 1
    assert value(registry, "watcher_source_up", model="bikes") == 0
    m.source_polled("bikes", up=True)
    assert value(registry, "watcher_source_up", model="bikes") == 1
    assert value(registry, "watcher_problems_total", model="bikes", kind="name_reused") == 3
    assert value(registry, "watcher_outbox_pending", kind="alert") == 2
    assert value(registry, "watcher_outbox_pending", kind="trigger") == 0


def test_no_module_writes_these_series_but_metrics() -> None:
    """The series with an intent method are written through it and nowhere else."""
    written = re.compile(
        r"\.(batches|batches_rejected|retrain_decisions|retrain_deliveries|source_up|problems"
        r"|outbox_pending|batch_rows|dataset_drift_ratio|dataset_drifted|drifted_features"
        r"|quality_violations|drift_test_failures|missing_values_ratio|drift_streak|alerts"
        r"|webhooks|dead_letters|evidently_snapshots|model_performance|feature_drifted)\.labels\("
    )
    offenders = [
        f"{path.relative_to(WATCHER)}:{n}"
        for path in WATCHER.rglob("*.py")
        if path.name != "metrics.py"
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if written.search(line)
    ]
    assert offenders == []


def test_forgetting_a_model_removes_its_labelled_gauges_and_keeps_its_counters() -> None:
    """A replica that lost a model stops exporting every gauge of it, per-feature ones
    included (the owner exports them now); the other models and the counters stay."""
    from types import SimpleNamespace
    from typing import Any, cast

    registry = CollectorRegistry()
    m = Metrics(registry)

    def scored(model: str) -> None:
        column = SimpleNamespace(stattest="ks", score=0.01, threshold=0.05, drifted=True)
        drift = SimpleNamespace(
            drift_share=0.5,
            dataset_drift=True,
            n_drifted=1,
            columns={"temp": column},
            prediction=None,
            failures={},
        )
        quality = SimpleNamespace(rows=100, missing_share={"temp": 0.1}, violations=[])
        m.batch_scored(model, cast(Any, quality), cast(Any, drift), streak=2, per_feature=True)
        m.performance_measured(model, "mae", 3.5)

    for model in ("lost", "kept"):
        scored(model)
    feature = {"feature": "temp"}
    score = {**feature, "stattest": "ks"}
    assert value(registry, "watcher_feature_drift_score", model="lost", **score) == 0.01
    m.forget_model("lost")
    for name, labels in [
        ("watcher_feature_drift_score", score),
        ("watcher_feature_drift_threshold", score),
        ("watcher_feature_drifted", feature),
        ("watcher_missing_values_ratio", feature),
        ("watcher_model_performance", {"metric": "mae"}),
        ("watcher_dataset_drift_ratio", {}),
    ]:
        assert value(registry, name, model="lost", **labels) is None, name
        assert value(registry, name, model="kept", **labels) is not None, name
    assert value(registry, "watcher_batches_total", model="lost", outcome="scored") == 1
    scored("lost")  # taken back: exported again
    assert value(registry, "watcher_feature_drifted", model="lost", **feature) == 1
