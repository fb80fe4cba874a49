"""The per-model dashboards read right with several replicas, checked by the real promtool.

Prometheus's own engine (`promtool test rules`, `promql_expr_test`) evaluates the committed
panel queries over series written as two replicas would export them:

    minutes 0-5   replica a owns model m (and the fleet duties); it scores 5 batches
    minutes 6-10  replica b owns m (and the duties); it scores 4 more
    model n       owned by a throughout

Replica a keeps exporting what a replica that lost a model keeps: its counters (frozen),
the labelled gauges ModelFamilies.forget does not reach (per-feature scores), the run
tracker's counts from before the duties moved, and, until a scrape sees the forget, the
last batch's timestamp. A query that summed gauges, or read the stale copy, or took the
max of `time() - timestamp`, would read 0.9 instead of 0.2, 300 s instead of 0, or count
a finished run as running: each expectation below is the fleet's true value.

A second case is a lone SQLite daemon, which exports no watcher_model_owned and
watcher_replicas_live 0: the replica filters must keep every one of its series.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from dashboards_support import dashboard_queries, substitute

EVAL = "10m"  # the moment every expectation is read at
A = {"job": "watcher", "instance": "a:9108"}
B = {"job": "watcher", "instance": "b:9108"}
LONE = {"job": "watcher", "instance": "watcher:9108"}


def _series(name: str, target: dict[str, str], values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in {**labels, **target}.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


# One sample a minute, minutes 0..10; `_` no sample, `stale` the scrape that no longer had it.
TWO_REPLICAS = [
    _series("up", A, "1 1 1 1 1 1 1 1 1 1 1"),
    _series("up", B, "1 1 1 1 1 1 1 1 1 1 1"),
    _series("watcher_replicas_live", A, "2 2 2 2 2 2 2 2 2 2 2"),
    _series("watcher_replicas_live", B, "2 2 2 2 2 2 2 2 2 2 2"),
    _series("watcher_replica_duties", A, "1 1 1 1 1 1 0 0 0 0 0"),
    _series("watcher_replica_duties", B, "0 0 0 0 0 0 1 1 1 1 1"),
    _series("watcher_model_owned", A, "1 1 1 1 1 1 0 0 0 0 0", model="m"),
    _series("watcher_model_owned", B, "0 0 0 0 0 0 1 1 1 1 1", model="m"),
    _series("watcher_model_owned", A, "1 1 1 1 1 1 1 1 1 1 1", model="n"),
    _series("watcher_model_owned", B, "0 0 0 0 0 0 0 0 0 0 0", model="n"),
    # Counters: each replica its own share; a's stays after the move.
    _series("watcher_batches_total", A, "0 1 2 3 4 5 5 5 5 5 5", model="m", outcome="scored"),
    _series("watcher_batches_total", B, "0 0 0 0 0 0 0 1 2 3 4", model="m", outcome="scored"),
    _series("watcher_batches_total", A, "0 0 0 0 0 0 0 0 0 0 0", model="n", outcome="scored"),
    # A labelled counter appears at 1 with its first event (one trigger on each replica).
    _series(
        "watcher_retrain_decisions_total",
        A,
        "_ _ 1 1 1 1 1 1 1 1 1",
        model="m",
        outcome="triggered",
    ),
    _series(
        "watcher_retrain_decisions_total",
        B,
        "_ _ _ _ _ _ _ _ 1 1 1",
        model="m",
        outcome="triggered",
    ),
    # Gauges in ModelFamilies: forgotten by a when it lost m (a stale marker).
    _series("watcher_drift_streak", A, "0 1 2 3 4 5 stale _ _ _ _", model="m"),
    _series("watcher_drift_streak", B, "_ _ _ _ _ _ _ 0 1 2 3", model="m"),
    _series("watcher_drift_streak", A, "0 0 0 0 0 0 0 0 0 0 0", model="n"),
    _series("watcher_dataset_drifted", A, "1 1 1 1 1 1 stale _ _ _ _", model="m"),
    _series("watcher_dataset_drifted", B, "_ _ _ _ _ _ _ 1 1 1 1", model="m"),
    _series("watcher_dataset_drifted", A, "0 0 0 0 0 0 0 0 0 0 0", model="n"),
    _series("watcher_model_info", A, "1 1 1 1 1 1 stale _ _ _ _", model="m", version="1"),
    _series("watcher_model_info", B, "_ _ _ _ _ _ 1 1 1 1 1", model="m", version="1"),
    _series("watcher_model_info", A, "1 1 1 1 1 1 1 1 1 1 1", model="n", version="3"),
    # Not yet forgotten by a (a scrape before the forget): the newest must win.
    _series(
        "watcher_last_batch_timestamp_seconds",
        A,
        "60 120 180 240 300 300 300 300 300 300 300",
        model="m",
    ),
    _series("watcher_last_batch_timestamp_seconds", B, "_ _ _ _ _ _ _ 420 480 540 600", model="m"),
    # A plain labelled gauge that forget does not reach: a's copy stays, frozen.
    _series(
        "watcher_feature_drift_score",
        A,
        "0.9 0.9 0.9 0.9 0.9 0.9 0.9 0.9 0.9 0.9 0.9",
        model="m",
        feature="x",
        stattest="psi",
    ),
    _series(
        "watcher_feature_drift_score",
        B,
        "_ _ _ _ _ _ _ 0.2 0.2 0.2 0.2",
        model="m",
        feature="x",
        stattest="psi",
    ),
    # The run tracker on the duty holder: a's counts froze with a run still running; b's
    # are the shared runs table now (that run succeeded).
    _series("watcher_retrain_runs", A, "1 1 1 1 1 1 1 1 1 1 1", model="m", state="running"),
    _series("watcher_retrain_runs", A, "0 0 0 0 0 0 0 0 0 0 0", model="m", state="success"),
    _series("watcher_retrain_runs", B, "_ _ _ _ _ _ 0 0 0 0 0", model="m", state="running"),
    _series("watcher_retrain_runs", B, "_ _ _ _ _ _ 1 1 1 1 1", model="m", state="success"),
]

# {query where: [(labels, value)]} at EVAL, the fleet's truth.
TWO_REPLICAS_EXPECTED: dict[str, list[tuple[dict[str, str], float]]] = {
    "drift-overview.json / Models monitored / A": [({}, 2)],
    "drift-overview.json / Models in drift / A": [({}, 1)],
    "drift-overview.json / Batches scored (24h) / A": [({}, 9)],
    "drift-overview.json / Retrain runs in flight / A": [({}, 0)],
    "drift-overview.json / Models in production / A": [
        ({"model": "m", "version": "1"}, 1),
        ({"model": "n", "version": "3"}, 1),
    ],
    "drift-overview.json / Models in production / C": [({"model": "m"}, 3), ({"model": "n"}, 0)],
    "drift-overview.json / Models in production / D": [({"model": "m"}, 0)],
    "drift-overview.json / Drift streak / A": [({"model": "m"}, 3), ({"model": "n"}, 0)],
    "drift-overview.json / Time since last scored batch / A": [({"model": "m"}, 0)],
    "drift-overview.json / Retrain decisions in the time range / A": [
        ({"model": "m", "outcome": "triggered"}, 2)
    ],
    "drift-overview.json / Retrain runs by state / A": [
        ({"model": "m", "state": "running"}, 0),
        ({"model": "m", "state": "success"}, 1),
    ],
    "model-detail.json / Drift streak / A": [({"model": "m"}, 3)],
    "model-detail.json / Version in production / A": [({"model": "m", "version": "1"}, 1)],
    "model-detail.json / Last batch scored / A": [({"model": "m"}, 0)],
    "model-detail.json / Feature drift score against threshold / A": [
        ({"model": "m", "feature": "x", "stattest": "psi"}, 0.2)
    ],
    "model-detail.json / Most drifted features / B": [
        ({"model": "m", "feature": "x", "stattest": "psi"}, 0.2)
    ],
    "model-detail.json / Retrain decisions in the time range / A": [({"outcome": "triggered"}, 2)],
    "model-detail.json / Retrain runs by state / A": [
        ({"model": "m", "state": "running"}, 0),
        ({"model": "m", "state": "success"}, 1),
    ],
}

# A lone SQLite daemon: no watcher_model_owned, watcher_replicas_live and _duties at 0.
LONE_DAEMON = [
    _series("up", LONE, "1 1 1 1 1 1 1 1 1 1 1"),
    _series("watcher_replicas_live", LONE, "0 0 0 0 0 0 0 0 0 0 0"),
    _series("watcher_replica_duties", LONE, "0 0 0 0 0 0 0 0 0 0 0"),
    _series("watcher_drift_streak", LONE, "0 1 2 3 3 3 3 3 3 3 3", model="m"),
    _series("watcher_dataset_drifted", LONE, "1 1 1 1 1 1 1 1 1 1 1", model="m"),
    _series("watcher_model_info", LONE, "1 1 1 1 1 1 1 1 1 1 1", model="m", version="2"),
    _series(
        "watcher_feature_drift_score",
        LONE,
        "0.5 0.5 0.5 0.5 0.5 0.5 0.5 0.5 0.5 0.5 0.5",
        model="m",
        feature="x",
        stattest="psi",
    ),
    _series("watcher_retrain_runs", LONE, "1 1 1 1 1 1 1 1 1 1 1", model="m", state="running"),
]
LONE_EXPECTED: dict[str, list[tuple[dict[str, str], float]]] = {
    "drift-overview.json / Models monitored / A": [({}, 1)],
    "drift-overview.json / Models in drift / A": [({}, 1)],
    "drift-overview.json / Retrain runs in flight / A": [({}, 1)],
    "drift-overview.json / Drift streak / A": [({"model": "m"}, 3)],
    "model-detail.json / Version in production / A": [({"model": "m", "version": "2"}, 1)],
    "model-detail.json / Feature drift score against threshold / A": [
        ({"model": "m", "feature": "x", "stattest": "psi"}, 0.5)
    ],
    "model-detail.json / Retrain runs by state / A": [({"model": "m", "state": "running"}, 1)],
}


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _case(
    name: str,
    series: list[dict[str, str]],
    expected: dict[str, list[tuple[dict[str, str], float]]],
) -> dict[str, Any]:
    queries = {q.where: q for q in dashboard_queries()}
    missing = set(expected) - set(queries)
    assert not missing, f"no such dashboard query (renamed panel?): {sorted(missing)}"
    tests = []
    for where, samples in expected.items():
        expr = substitute(queries[where].expr, "m", range_="10m", rate_interval="2m")
        tests.append(
            {
                "expr": expr,
                "eval_time": EVAL,
                "exp_samples": [{"labels": _labels(lb), "value": v} for lb, v in samples],
            }
        )
    return {"name": name, "interval": "1m", "input_series": series, "promql_expr_test": tests}


def _run(promtool_bin: str, tmp_path: Path, case: dict[str, Any]) -> None:
    path = tmp_path / "dashboards.test.yml"
    doc = {"rule_files": [], "evaluation_interval": "1m", "tests": [case]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    proc = subprocess.run(
        [promtool_bin, "test", "rules", path.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "SUCCESS" in out, out


def test_two_replicas_read_as_the_fleet_s_truth(promtool_bin: str, tmp_path: Path) -> None:
    _run(promtool_bin, tmp_path, _case("two replicas", TWO_REPLICAS, TWO_REPLICAS_EXPECTED))


def test_a_lone_daemon_keeps_every_series(promtool_bin: str, tmp_path: Path) -> None:
    _run(promtool_bin, tmp_path, _case("lone daemon", LONE_DAEMON, LONE_EXPECTED))
