"""The Grafana dashboards: generated from code, consistent, and asking only for real metrics.

The live test (test_prometheus_live.py) runs every query against a real Prometheus; this
one checks offline what can be checked offline, quickly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboards_support import (
    DASHBOARD_DIR,
    REPO,
    SYNTHETIC,
    TARGET_LABELS,
    dashboard_queries,
    exposed_names,
    metric_names,
    rule_queries,
    selector_labels,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from watcher.metrics import Metrics
from watcher.metrics_models import ModelCounter, ModelGauge

PROVISIONING = REPO / "dashboards" / "grafana" / "provisioning"
BOARDS = {
    "drift-overview.json": "watcher-drift-overview",
    "model-detail.json": "watcher-model-detail",
    "operations.json": "watcher-operations",
}


def load(name: str) -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DASHBOARD_DIR / name).read_text(encoding="utf-8"))
    return board


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def test_regenerating_gives_the_committed_files_byte_for_byte() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dashboards.grafana.generate", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 generated files are up to date" in proc.stdout


def test_three_dashboards_with_fixed_unique_uids() -> None:
    assert sorted(p.name for p in DASHBOARD_DIR.glob("*.json")) == sorted(BOARDS)
    for name, uid in BOARDS.items():
        board = load(name)
        assert board["uid"] == uid
        assert board["title"].startswith("watcher / ")
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        titles = [p["title"] for p in panels(board)]
        assert len(titles) == len(set(titles)), f"{name}: duplicate panel titles"


def test_panels_fit_the_grid_and_say_what_they_answer() -> None:
    for name in BOARDS:
        for panel in panels(load(name)):
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (name, panel["title"])
            assert pos["h"] > 0, (name, panel["title"])
            assert panel["description"].endswith("?"), (name, panel["title"])
            targets = panel["targets"]
            assert targets, (name, panel["title"])
            ref_ids = [t["refId"] for t in targets]
            assert all(ref_ids), (name, panel["title"])
            assert len(ref_ids) == len(set(ref_ids)), (name, panel["title"])


def test_every_query_uses_the_provisioned_datasource() -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = doc["datasources"]
    assert source["type"] == "prometheus"
    uid = source["uid"]
    for name in BOARDS:
        board = load(name)
        refs = [p["datasource"] for p in panels(board)]
        refs += [t["datasource"] for p in panels(board) for t in p["targets"]]
        refs += [a["datasource"] for a in board["annotations"]["list"]]
        refs += [v["datasource"] for v in board["templating"]["list"]]
        assert refs, name
        assert all(r == {"type": "prometheus", "uid": uid} for r in refs), name


def test_dashboard_provider_points_at_a_folder() -> None:
    doc = yaml.safe_load((PROVISIONING / "dashboards" / "watcher.yml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/var/lib/grafana/dashboards")


def test_drift_overview_covers_every_model_at_a_glance() -> None:
    text = " ".join(e for p in panels(load("drift-overview.json")) for e in exprs(p))
    for needed in (
        "watcher_dataset_drift_ratio",
        "watcher_drifted_features",
        "rate(watcher_batches_total",
        "watcher_retrain_decisions_total",
        "watcher_retrain_deliveries_total",
        "watcher_retrain_runs",
        "watcher_alerts_total",
        "watcher_model_info",
    ):
        assert needed in text, needed
    assert "$model" not in text  # all models, no variable


def test_model_detail_is_about_the_chosen_model() -> None:
    board = load("model-detail.json")
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "model"
    assert variable["type"] == "query"
    assert variable["query"] == "label_values(watcher_batches_total, model)"
    for panel in panels(board):
        for expr in exprs(panel):
            assert 'model="$model"' in expr, (panel["title"], expr)
    annotations = {a["name"]: a["expr"] for a in board["annotations"]["list"]}
    assert set(annotations) == {"Retrain triggered", "Retrain succeeded", "Retrain failed"}
    assert all('model="$model"' in e for e in annotations.values())
    text = " ".join(e for p in panels(board) for e in exprs(p))
    for needed in (
        "watcher_feature_drift_score",
        "watcher_feature_drift_threshold",
        "watcher_missing_values_ratio",
        "watcher_prediction_drift_score",
        "watcher_model_performance",
    ):
        assert needed in text, needed
    kinds = {p["type"] for p in panels(board)}
    assert {"table", "state-timeline", "timeseries", "stat"} <= kinds


def test_operations_shows_latency_delivery_and_the_process() -> None:
    board = load("operations.json")
    by_title = {p["title"]: exprs(p) for p in panels(board)}
    latency = by_title["Batch latency per stage (p50, p95, p99)"]
    assert [e.split(",")[0] for e in latency] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
    ]
    assert all("watcher_batch_duration_seconds_bucket" in e and "stage" in e for e in latency)
    text = " ".join(e for es in by_title.values() for e in es)
    for needed in (
        "watcher_outbox_pending",
        "watcher_airflow_up",
        "watcher_smtp_up",
        "watcher_batches_rejected_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert needed in text, needed
    (by_reason,) = by_title["Rejected batches by reason in the time range"]
    assert by_reason.startswith("sum by (model, reason)")
    assert "watcher_batches_rejected_total offset $__range" in by_reason


def _declared_labels(metrics: Metrics) -> dict[str, set[str]]:
    """Family name as exposed -> label names, from the metric objects themselves."""
    labels: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, ModelGauge):  # a gauge labelled by model, in a plain dict
            labels[value.name] = set(value.labelnames)
            continue
        if isinstance(value, ModelCounter):  # a counter labelled by model, likewise
            labels[f"{value.name}_total"] = set(value.labelnames)
            continue
        if not isinstance(value, MetricWrapperBase):
            continue
        kind = value._type
        name = value._name
        exposed = {"counter": f"{name}_total", "info": f"{name}_info"}.get(kind, name)
        labels[exposed] = set(value._labelnames)
    labels["watcher_build_info"] = {"version"}  # Info turns its dict into labels
    return labels


@pytest.mark.parametrize(
    "query", dashboard_queries() + rule_queries(), ids=lambda q: q.where.replace(" ", "")
)
def test_names_and_labels_exist_in_the_exporter(query: Any) -> None:
    metrics = Metrics(CollectorRegistry())
    exposed = exposed_names(generate_latest(metrics.registry).decode())
    declared = _declared_labels(metrics)
    names = metric_names(query.expr)
    assert names, f"{query.where}: no metric found in {query.expr!r}"
    unknown = names - set(exposed) - SYNTHETIC
    assert not unknown, f"{query.where}: {sorted(unknown)} not exported by watcher"
    for name, used in selector_labels(query.expr):
        if name in SYNTHETIC:
            continue
        family = exposed[name]
        allowed = declared.get(family, set()) | TARGET_LABELS
        if name.endswith("_bucket"):
            allowed = allowed | {"le"}
        assert used <= allowed, f"{query.where}: {name} has no label(s) {sorted(used - allowed)}"


def test_readme_lists_every_panel_as_generated() -> None:
    """The README's panel list is the generated PANELS.md, not a stale hand copy."""
    root = Path(__file__).resolve().parents[2]
    generated = (root / "dashboards" / "grafana" / "PANELS.md").read_text()
    readme = (root / "README.md").read_text()
    listed = readme.split("<!-- PANELS:BEGIN -->", 1)[1].split("<!-- PANELS:END -->", 1)[0]
    rows = [line for line in generated.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) > 50
    for row in rows:
        assert row in listed, f"README lacks the panel row: {row}"


def _model_gauges() -> set[str]:
    """Gauges labelled by model, as exposed."""
    metrics = Metrics(CollectorRegistry())
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, ModelGauge) and "model" in value.labelnames:
            names.add(value.name)
        elif (
            isinstance(value, MetricWrapperBase)
            and value._type == "gauge"
            and "model" in value._labelnames
        ):
            names.add(value._name)
    return names


def test_per_model_gauges_are_read_once_per_model_across_replicas() -> None:
    """With replicas each model gauge is taken from one replica (see the replica comment
    in dashboards/grafana/panels.py): its owner's, the duty holder's for the run tracker's
    counts, or the newest for timestamps; a bare read would show one series per replica."""
    gauges = _model_gauges()
    assert {"watcher_drift_streak", "watcher_feature_drift_score", "watcher_retrain_runs"} <= (
        gauges
    )
    owner = "unless on (job, instance, model) (watcher_model_owned == 0)"
    duty = "unless on (job, instance) ((watcher_replica_duties == 0)"
    for name in ("drift-overview.json", "model-detail.json"):
        board = load(name)
        queries = [(p["title"], e) for p in panels(board) for e in exprs(p)]
        queries += [(a["name"], a["expr"]) for a in board["annotations"]["list"]]
        for title, expr in queries:
            for gauge in sorted(metric_names(expr) & gauges):
                if gauge.endswith("_timestamp_seconds"):
                    assert f"max by (model) ({gauge}" in expr or "changes(" in expr, (title, expr)
                elif gauge == "watcher_retrain_runs":
                    assert duty in expr, (title, expr)
                else:
                    assert owner in expr, (title, expr)
                    assert expr.count("max by (model") == 1, (title, expr)
