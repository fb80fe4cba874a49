"""Every dashboard query and alert rule, run by a real Prometheus against a real daemon.

One scenario for the module: a real SMTP server (aiosmtpd), the real `watcher run` daemon
in a subprocess, and the real Prometheus binary (scrape interval 1 s, the committed
prometheus.yml with its target moved to the daemon's port, the committed rules loaded).
Seven batch files go through the daemon, one at a time:

    b1 like the reference        -> scored, no drift
    b2..b6 shifted by 2 sd        -> scored, dataset drift; the policy triggers at b3,
                                     then finds the trigger still pending (Airflow is not
                                     configured here), so the streak reaches 3 at b6
    b7 without column "a"         -> rejected (missing_columns)

Then every panel target, annotation and variable of the three dashboards and every alert
expression is sent to Prometheus's HTTP API the way Grafana / the rule engine would.

Airflow is not part of this scenario (a real Airflow takes a minute to start and is
covered by the Airflow tests), so the metrics only the run tracker exports have no series:
the queries reading them are listed in NO_DATA with the reason, and the test checks they
are empty *for that reason only* (they evaluate without error, and the metric is declared
in the exporter).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from dashboards_support import (
    REPO,
    RULES_FILE,
    SYNTHETIC,
    Query,
    dashboard_queries,
    exposed_names,
    metric_names,
    rule_queries,
    substitute,
)
from support import drop, frame, wait_for, write_config

from watcher.dev.localservices import free_port

pytestmark = pytest.mark.slow

MODEL = "m"  # the model name support.write_config uses
PROM_CONFIG = REPO / "dashboards" / "prometheus" / "prometheus.yml"

# Queries that cannot return data in this scenario, and why. Keys are Query.where.
_TRACKER = "no Airflow here, so the run tracker never exports watcher_retrain_runs"
_SUCCESS = (
    "no retrain run succeeded (no Airflow here), so "
    "watcher_retrain_last_success_timestamp_seconds has no series"
)
_LABELS = "the scenario's model has no target/labels, so no performance is computed"
NO_DATA = {
    "drift-overview.json / Retrain runs in flight / A": _TRACKER,
    "drift-overview.json / Retrain runs by state / A": _TRACKER,
    "model-detail.json / Retrain runs by state / A": _TRACKER,
    "model-detail.json / annotation Retrain failed": _TRACKER,
    "model-detail.json / Last successful retrain / A": _SUCCESS,
    "model-detail.json / annotation Retrain succeeded": _SUCCESS,
    "model-detail.json / Performance on labelled data / A": _LABELS,
    "model-detail.json / annotation Retrain triggered": (
        "no Airflow here, so the b3 trigger is decided as a dry run, not triggered"
    ),
}
# Metrics that exist in /metrics but have no series in this scenario.
NO_SERIES = {
    "watcher_retrain_runs": _TRACKER,
    "watcher_retrain_last_success_timestamp_seconds": _SUCCESS,
    "watcher_model_performance": _LABELS,
    # The replica filters of the rules and dashboards read it; test_dashboards_replicas.py
    # evaluates them over two replicas' series.
    "watcher_model_owned": "a lone SQLite daemon has no replicas, so no watcher_model_owned",
}
# What some panels must show after the scenario: {where: [(labels of a series, value)]}.
# The "in the time range" panels count events whose labelled series first appears at 1
# (one rejection, one mail of a kind), which increase() would report as 0.
_TRANSITIONS = [
    ({"outcome": "no_drift"}, 1),  # b1
    ({"outcome": "streak_building"}, 2),  # b2, b4
    # No Airflow in this scenario: the trigger is decided as a dry run, which starts the
    # cooldown like a real trigger would.
    ({"outcome": "dry_run"}, 1),  # b3
    ({"outcome": "suppressed_cooldown"}, 2),  # b5, b6
]
EXPECTED = {
    "drift-overview.json / Daemon / A": [({"job": "watcher"}, 1)],
    "drift-overview.json / Models in drift / A": [({}, 1)],
    "drift-overview.json / Drift streak / A": [({"model": MODEL}, 3)],
    "drift-overview.json / Retrain decisions in the time range / A": [
        ({"model": MODEL} | labels, n) for labels, n in _TRANSITIONS
    ],
    "drift-overview.json / Alert mails in the time range / A": [
        ({"kind": "batch_rejected", "outcome": "sent"}, 1),
        ({"kind": "drift_persisting", "outcome": "sent"}, 1),
    ],
    "model-detail.json / Rows in last batch / A": [({}, 300)],
    "model-detail.json / Retrain decisions in the time range / A": _TRANSITIONS,
    "model-detail.json / Rejected batches by reason in the time range / A": [
        ({"reason": "missing_columns"}, 1)
    ],
    "operations.json / SMTP / A": [({}, 1)],
    # Without Airflow nothing undeliverable is queued; the mails went out.
    "operations.json / Outbox pending / A": [({}, 0)],
    "operations.json / Rejected batches by reason in the time range / A": [
        ({"model": MODEL, "reason": "missing_columns"}, 1)
    ],
}
# Alert expressions the scenario makes true (before their `for:`), and why.
TRUE_NOW = {
    "rule WatcherDriftPersisting": "b4..b6 drifted after the b3 dry run: streak 3",
    "rule WatcherAirflowUnreachable": "Airflow is not configured, watcher_airflow_up stays 0",
    "rule WatcherBatchesRejected": "b7 was rejected a moment ago",
}


@dataclass
class Live:
    prometheus: str  # base URL
    metrics_text: str  # the daemon's /metrics at the end of the scenario
    started: float  # when Prometheus started (range queries start here)


# Loaded before any fork: the child must not dlopen while other threads may hold its lock.
_PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the child gets SIGKILL if pytest dies without running its teardown (kill -9,
    # OOM), so even a killed test run leaves no Prometheus or daemon behind.
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            args,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: killed with everything it starts
            preexec_fn=_die_with_parent,  # Linux only: see _die_with_parent
        )


def _stop(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM the process group, wait, then SIGKILL: nothing outlives the test module."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.poll() is not None, f"{name} (pid {proc.pid}) is still running"


def _get(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _daemon_value(port: int, sample: str) -> float:
    """A sample from the daemon's /metrics, e.g. 'watcher_batches_total{model="m",...}'."""
    for line in _text(f"http://127.0.0.1:{port}/metrics").splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def _batches(port: int, outcome: str) -> float:
    return _daemon_value(port, f'watcher_batches_total{{model="{MODEL}",outcome="{outcome}"}}')


class _MailSink:
    """aiosmtpd handler: accepts every mail (the daemon's smtp_up becomes 1) and counts them."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        return "250 Message accepted for delivery"


def _toml(section: str, values: dict[str, Any]) -> str:
    lines = [f"[{section}]"]
    for key, value in values.items():
        rendered = str(value).lower() if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def _prometheus_config(tmp: Path, metrics_port: int, prom_port: int) -> Path:
    """The committed prometheus.yml, pointed at this daemon, scraping every second."""
    config = yaml.safe_load(PROM_CONFIG.read_text(encoding="utf-8"))
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES_FILE)]
    for job in config["scrape_configs"]:
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"
        port = metrics_port if job["job_name"] == "watcher" else prom_port
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: str) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    metrics_port, prom_port = free_port(), free_port()
    prom_url = f"http://127.0.0.1:{prom_port}"
    sink = _MailSink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    smtp_section = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": smtp.port,
        "security": "none",
        "sender": "watcher@example.org",
        "recipients": ["oncall@example.org"],
    }
    cfg = write_config(
        tmp,
        metrics_port=metrics_port,
        extra_top=_toml("smtp", smtp_section)
        + _toml(
            "alerts",
            # The drift mail goes at once, linking its report (rendered in the background):
            # the scenario's end state has every mail sent.
            {"digest_window_seconds": 0, "report_wait_seconds": 0},
        ),
    )
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        started = time.time()
        prom = _spawn(
            [
                prometheus_bin,
                f"--config.file={_prometheus_config(tmp, metrics_port, prom_port)}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            tmp / "prometheus.log",
        )
        procs.append((prom, "prometheus"))
        wait_for(lambda: _ok(f"{prom_url}/-/ready"), 60, what="Prometheus /-/ready")

        daemon = _spawn(
            [sys.executable, "-m", "watcher", "run", "--config", str(cfg)], tmp / "daemon.log"
        )
        procs.append((daemon, "watcher"))
        wait_for(lambda: _ok(f"http://127.0.0.1:{metrics_port}/readyz"), 90, what="/readyz")

        def scraped_once() -> bool:
            query = 'watcher_batches_total{outcome="scored"} == 0'
            result = _get(f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
            return bool(result["data"]["result"])

        # Prometheus sees every series at 0 before the first batch: a batch renamed into the
        # folder is scored at once (inotify), faster than the first scrape otherwise.
        wait_for(scraped_once, 60, what="Prometheus to scrape the idle daemon")
        incoming = tmp / "incoming"
        batches = [frame(300, seed=10)] + [frame(300, seed=s, shift=2.0) for s in range(11, 16)]
        for i, batch in enumerate(batches, start=1):
            drop(incoming, f"b{i}.parquet", batch)
            wait_for(
                lambda n=i: _batches(metrics_port, "scored") >= n,
                60,
                what=f"batch b{i} scored",
            )
            time.sleep(1.5)  # a scrape (every 1 s) between batches: rates see each change
        drop(incoming, "b7.csv", frame(300, seed=16).drop(columns="a"))
        wait_for(lambda: _batches(metrics_port, "rejected") >= 1, 60, what="b7 rejected")
        wait_for(lambda: _daemon_value(metrics_port, "watcher_smtp_up") == 1, 60, what="a mail")
        assert sink.received >= 1

        def scraped_everything() -> bool:
            query = 'watcher_batches_total{outcome="rejected"} == 1 and on() watcher_smtp_up == 1'
            result = _get(f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
            return bool(result["data"]["result"])

        wait_for(scraped_everything, 30, what="Prometheus to scrape the final state")
        time.sleep(3)  # a few more scrapes, so rates over the last changes have two samples
        yield Live(prom_url, _text(f"http://127.0.0.1:{metrics_port}/metrics"), started)
    finally:
        errors = []
        for proc, name in reversed(procs):
            try:
                _stop(proc, name)
            except AssertionError as exc:
                errors.append(str(exc))
        smtp.stop()
        assert not errors, errors


def _query(live: Live, q: Query) -> list[dict[str, Any]]:
    """Run a query as Grafana would: range for time series, instant for instant targets."""
    expr = substitute(q.expr, MODEL, range_="1h", rate_interval="1m")
    if q.kind == "variable":
        metric = expr.removeprefix("label_values(").split(",")[0].strip()
        label = expr.split(",")[1].strip(" )")
        url = f"{live.prometheus}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
            {"match[]": metric}
        )
        body = _get(url)
        assert body["status"] == "success", body
        return [{"value": [0, v]} for v in body["data"]]
    now = time.time()
    if q.instant:
        params = {"query": expr, "time": f"{now:.3f}"}
        body = _get(f"{live.prometheus}/api/v1/query?" + urllib.parse.urlencode(params))
    else:
        params = {"query": expr, "start": f"{live.started:.3f}", "end": f"{now:.3f}", "step": "1"}
        body = _get(f"{live.prometheus}/api/v1/query_range?" + urllib.parse.urlencode(params))
    assert body["status"] == "success", f"{q.where}: {body}"
    assert not body.get("warnings"), f"{q.where}: {body['warnings']}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = []
    for series in result:
        samples = series.get("values") or [series["value"]]
        for _, raw in samples:
            with contextlib.suppress(ValueError):
                number = float(raw)
                if math.isfinite(number):
                    values.append(number)
    return values


DASHBOARD_QUERIES = dashboard_queries()
RULE_QUERIES = rule_queries()


@pytest.mark.parametrize("q", DASHBOARD_QUERIES, ids=lambda q: q.where.replace(" ", ""))
def test_dashboard_query_returns_data(live: Live, q: Query) -> None:
    result = _query(live, q)
    if q.kind == "variable":
        assert [r["value"][1] for r in result] == [MODEL], f"{q.where}: {result}"
        return
    if q.where in NO_DATA:
        assert result == [], f"{q.where} has data now: drop it from NO_DATA ({NO_DATA[q.where]})"
        return
    assert _finite_values(result), f"{q.where}: no finite value for {q.expr!r}: {result}"
    for labels, value in EXPECTED.get(q.where, []):
        last = [
            float((s.get("value") or s["values"][-1])[1])
            for s in result
            if labels.items() <= s["metric"].items()
        ]
        assert last == [value], f"{q.where}: {labels} should be {value}, got {result}"


@pytest.mark.parametrize("q", RULE_QUERIES, ids=lambda q: q.where.replace(" ", ""))
def test_alert_expression_evaluates(live: Live, q: Query) -> None:
    result = _query(live, q)
    if q.where in TRUE_NOW:
        assert result, f"{q.where} should be true now: {TRUE_NOW[q.where]}"
    else:
        assert result == [], f"{q.where} is true in a scenario that should not trigger it"


def test_prometheus_loaded_and_evaluated_every_rule(live: Live) -> None:
    groups = _get(f"{live.prometheus}/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {q.where.removeprefix("rule ") for q in RULE_QUERIES}
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        assert rule["lastEvaluation"] != "0001-01-01T00:00:00Z", f"{name} never evaluated"
    states = {name: rule["state"] for name, rule in rules.items()}
    # No `for:` on rejected batches: firing at once; drift persisting waits 5 minutes.
    assert states["WatcherBatchesRejected"] == "firing"
    assert states["WatcherDriftPersisting"] == "pending"
    assert states["WatcherDown"] == "inactive"


def test_every_metric_used_is_exported_and_scraped(live: Live) -> None:
    exposed = exposed_names(live.metrics_text)
    used = set().union(*(metric_names(q.expr) for q in DASHBOARD_QUERIES + RULE_QUERIES))
    assert used - set(exposed) - SYNTHETIC == set(), "not in the daemon's /metrics"
    for name in sorted(used):
        url = f"{live.prometheus}/api/v1/series?" + urllib.parse.urlencode({"match[]": name})
        series = _get(url)["data"]
        if name in NO_SERIES:
            assert series == [], f"{name} has series now: drop it from NO_SERIES"
        else:
            assert series, f"Prometheus has no series of {name}"
