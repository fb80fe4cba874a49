"""The whole daemon against the session's real Airflow 3.3.2: drift in, DAG runs out.

The gateway, dispatcher and tracker have tests of their own (test_airflow_trigger.py); these
run `watcher run` (as a subprocess where it gets killed or scraped, in a thread elsewhere)
on real batch files and check what arrives in Airflow.

Airflow is shared by the whole session and every test model is called `m` or a fixed name,
so each test puts a fresh tag in its batch names: run ids derive from model + batch name,
and runs are counted by that tag, never by the total number of runs of a DAG.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fixtures_airflow import AirflowServer
from harness import DaemonProcess, DaemonThread
from prometheus_client.parser import text_string_to_metric_families
from support import drop, frame, model_toml, wait_for, write_config

from watcher.config import load_config, toml_value
from watcher.dev.localservices import free_port
from watcher.policy import run_id_for
from watcher.state import Decision, RunRecord, StateStore

pytestmark = pytest.mark.airflow

DAG = "retrain_test"
RETRAIN = f'retrain = {{ dag_id = "{DAG}" }}'
RUN_TIMEOUT = 120.0  # a retrain_test run takes seconds; the scheduler may be slow under load


# ---- helpers ---------------------------------------------------------------------------------


def airflow_toml(server: AirflowServer, **overrides: Any) -> str:
    """An [airflow] table pointing at the test Airflow, polling fast. A generous request
    timeout: on a busy CI machine the single api-server worker can take seconds to answer,
    and a POST that timed out on our side but created the run would come back as a 409."""
    defaults = {"poll_interval_seconds": 0.3, "request_timeout_seconds": 30.0}
    cfg = server.airflow_config(**(defaults | overrides))
    return "[airflow]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.items())


def new_tag() -> str:
    return uuid.uuid4().hex[:8]


def drifted(seed: int) -> pd.DataFrame:
    return frame(300, seed=seed, shift=2.0)


def runs_tagged(server: AirflowServer, tag: str, dag_id: str = DAG) -> list[dict[str, Any]]:
    """Runs of `dag_id` this test caused: the tag is in the run id or anywhere in the conf."""
    return [
        r
        for r in server.list_runs(dag_id)
        if tag in r["dag_run_id"] or tag in json.dumps(r.get("conf") or {})
    ]


@contextmanager
def store_at(state_dir: Path) -> Iterator[StateStore]:
    store = StateStore(state_dir / "state.db")
    try:
        yield store
    finally:
        store.close()


def db_runs(state_dir: Path, model: str = "m") -> list[RunRecord]:
    with store_at(state_dir) as store:
        return store.runs(model)


def db_decisions(state_dir: Path, model: str = "m") -> list[Decision]:
    """Oldest first."""
    with store_at(state_dir) as store:
        return list(reversed(store.decisions(model, limit=100)))


def batch_decisions(state_dir: Path, model: str = "m") -> list[Decision]:
    """The policy's decisions on batches (the dispatcher records some of its own)."""
    return [d for d in db_decisions(state_dir, model) if d.batch_id is not None]


def db_triggers(state_dir: Path, model: str = "m") -> list[dict[str, Any]]:
    with store_at(state_dir) as store:
        return [i for i in store.outbox_items(model) if i["kind"] == "trigger"]


def handled_run(state_dir: Path, run_id: str, model: str = "m") -> RunRecord | None:
    run = next((r for r in db_runs(state_dir, model) if r.run_id == run_id), None)
    return run if run is not None and run.handled else None


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(values: Samples, name: str, **labels: str) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def watcher_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # A wide terminal: rich would otherwise fold run ids and reasons at 80 columns.
    env = {**os.environ, "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


@contextmanager
def daemon_thread(cfg: Path) -> Iterator[DaemonThread]:
    """The daemon in this process, on an event loop in a thread, with its own registry."""
    with DaemonThread(load_config(cfg)) as d:
        yield d


@contextmanager
def blackhole() -> Iterator[str]:
    """A port that takes connections (the kernel completes the handshake from the listen
    backlog) and never answers: every request to it hangs until its timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


# ---- 1 and 2: two drifted batches -> one run, tracked to success; replays change nothing ----


@dataclass
class Triggered:
    """What a daemon did with two drifted batches, captured before anything else happens."""

    tmp: Path
    cfg: Path
    port: int
    daemon: DaemonProcess
    tag: str
    batches: dict[str, pd.DataFrame]
    run_id: str
    metrics: Samples = field(default_factory=dict)
    status: str = ""

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"


@pytest.fixture(scope="module")
def triggered(
    airflow_server: AirflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Triggered]:
    tmp = tmp_path_factory.mktemp("daemon-airflow")
    port = free_port()
    cfg = write_config(
        tmp, metrics_port=port, extra_top=airflow_toml(airflow_server), model_extra=RETRAIN
    )
    tag = new_tag()
    batches = {f"{tag}-1.parquet": drifted(21), f"{tag}-2.parquet": drifted(22)}
    run_id = run_id_for("m", f"{tag}-2.parquet")
    daemon = DaemonProcess(cfg, tmp / "daemon.log")
    try:
        wait_for(lambda: ready(port), 60, what="/readyz")
        for name, df in batches.items():
            drop(tmp / "incoming", name, df)
        wait_for(
            lambda: handled_run(tmp / "state", run_id),
            RUN_TIMEOUT,
            interval=0.3,
            what=f"run {run_id} tracked to its end",
        )
        t = Triggered(tmp, cfg, port, daemon, tag, batches, run_id)
        # The tracker exports its gauges right after marking the run handled.
        wait_for(
            lambda: sample(scrape(port), "watcher_retrain_runs", model="m", state="success") == 1,
            10,
            what="watcher_retrain_runs{state=success} exported",
        )
        t.metrics = scrape(port)
        status = watcher_cli("status", "--config", str(cfg))
        assert status.returncode == 0, status.stderr
        t.status = status.stdout
        yield t
    finally:
        try:
            assert daemon.stop() == 0, daemon.log.read_text()[-3000:]
        finally:
            if daemon.alive():
                daemon.kill()


def test_two_drifted_batches_trigger_one_run_that_succeeds(
    triggered: Triggered, airflow_server: AirflowServer
) -> None:
    t = triggered
    b1, b2 = t.batches
    [run] = runs_tagged(airflow_server, t.tag)
    assert run["dag_run_id"] == t.run_id
    assert run["state"] == "success"
    assert run["note"] == "watcher: dataset drift in 2 consecutive batches (threshold 2)"

    # The conf: model, batches, why, the drifted features with scores and thresholds, where.
    conf = run["conf"]
    assert conf["model"] == "m"
    assert conf["batches"] == [b1, b2]
    assert conf["reason"] == "dataset drift in 2 consecutive batches (threshold 2)"
    assert conf["reference_version"].startswith("file-")
    processed = t.tmp / "incoming" / "processed"
    assert conf["data"] == {
        "source_kind": "directory",
        "batches_path": str(processed),
        "labels_path": None,
    }
    assert (processed / b1).exists()
    assert (processed / b2).exists()
    assert conf["window"]["from"] <= conf["window"]["to"]
    with store_at(t.state_dir) as store:
        [ledger] = [b for b in store.recent_batches("m") if b.batch_id == b2]
    assert ledger.result is not None
    columns = ledger.result["drift"]["columns"]
    assert conf["drift"]["drift_share"] == ledger.drift_share
    assert conf["drift"]["features"] == [
        {"feature": n, "stattest": c["stattest"], "score": c["score"], "threshold": c["threshold"]}
        for n, c in columns.items()
        if c["drifted"]
    ]
    assert {"a", "b"} <= {f["feature"] for f in conf["drift"]["features"]}
    for f in conf["drift"]["features"]:
        assert isinstance(f["score"], float)
        assert f["threshold"] > 0
    # What Airflow received is what the outbox held, byte for byte after JSON.
    [trigger] = db_triggers(t.state_dir)
    assert trigger["key"] == t.run_id
    assert trigger["status"] == "done"
    assert trigger["attempts"] == 1
    assert trigger["payload"]["conf"] == conf

    # The decisions, with their reasons, in the state store.
    assert [(d.batch_id, d.outcome, d.run_id) for d in db_decisions(t.state_dir)] == [
        (b1, "streak_building", None),
        (b2, "triggered", t.run_id),
    ]

    # The tracker followed the run to its end.
    [tracked] = db_runs(t.state_dir)
    assert (tracked.run_id, tracked.dag_id, tracked.state) == (t.run_id, DAG, "success")
    assert tracked.handled
    assert tracked.ended_at is not None
    assert tracked.conf == conf

    # Metrics, scraped over HTTP.
    v = t.metrics
    assert sample(v, "watcher_retrain_decisions_total", model="m", outcome="triggered") == 1
    assert sample(v, "watcher_retrain_decisions_total", model="m", outcome="streak_building") == 1
    assert sample(v, "watcher_retrain_deliveries_total", model="m", outcome="delivered") == 1
    assert sample(v, "watcher_retrain_deliveries_total", model="m", outcome="failed") == 0
    assert sample(v, "watcher_retrain_runs", model="m", state="success") == 1
    assert sample(v, "watcher_retrain_runs", model="m", state="running") == 0
    assert sample(v, "watcher_retrain_runs", model="m", state="queued") == 0
    assert (sample(v, "watcher_retrain_last_success_timestamp_seconds", model="m") or 0) > 0
    assert sample(v, "watcher_outbox_pending", kind="trigger") == 0
    assert sample(v, "watcher_drift_streak", model="m") == 0  # the trigger restarted it

    # `watcher status`: the run, its state and why the last decision was taken.
    assert "drift streak 0" in t.status
    assert "last decision: triggered" in t.status
    assert "dataset drift in 2 consecutive batches (threshold 2)" in t.status
    # The runs table (the pending alerts name the run id too).
    [run_row] = [ln.split() for ln in t.status.splitlines() if ln.split()[:1] == [t.run_id]]
    assert run_row[1] == "success"

    # The drift alert raised with the trigger cites the batch's evidently report, which is
    # rendered in the background after the commit (it may still be rendering when the test
    # stops the daemon; test_big_drift_batch.py follows one to the mail).
    with store_at(t.state_dir) as store:
        alerts = [i["payload"] for i in store.outbox_items("m") if i["kind"] == "alert"]
    [drift_alert] = [a for a in alerts if a["alert"] == "drift_persisting"]
    report = Path(drift_alert["report_path"])
    assert report.parent == t.state_dir / "reports" / "m"
    assert report.name.endswith(".html")
    [triggered_alert] = [a for a in alerts if a["alert"] == "retrain_triggered"]
    assert triggered_alert["run"] == {"dag_id": DAG, "run_id": t.run_id}


def test_replayed_batches_and_redelivery_still_make_one_run(
    triggered: Triggered, airflow_server: AirflowServer
) -> None:
    t = triggered
    b1, b2 = t.batches
    incoming = t.tmp / "incoming"

    # (a) The same files land again under the same names: the ledger knows them.
    for name in t.batches:
        (incoming / "processed" / name).rename(incoming / name)
    wait_for(
        lambda: all((incoming / "processed" / n).exists() for n in t.batches),
        30,
        what="replayed files moved on",
    )
    # (b) The trigger delivered twice: its outbox row back to pending, as a crash between
    # the POST and `mark_done` leaves it. Airflow answers 409, counted as a duplicate.
    with sqlite3.connect(t.state_dir / "state.db", timeout=30) as conn:
        conn.execute(
            "UPDATE outbox SET status = 'pending', next_attempt_at = 0 WHERE key = ?", (t.run_id,)
        )
    conn.close()
    wait_for(
        lambda: (
            sample(
                scrape(t.port), "watcher_retrain_deliveries_total", model="m", outcome="duplicate"
            )
            == 1
        ),
        30,
        what="the second delivery answered 409",
    )
    v = scrape(t.port)
    assert sample(v, "watcher_batches_total", model="m", outcome="scored") == 2
    assert sample(v, "watcher_retrain_decisions_total", model="m", outcome="triggered") == 1
    assert len(db_decisions(t.state_dir)) == 2
    [trigger] = db_triggers(t.state_dir)
    assert trigger["status"] == "done"
    assert trigger["attempts"] == 2

    # (c) A second daemon with no memory at all (fresh state dir) gets the same batches:
    # it decides to trigger again, with the same run id, and Airflow keeps the first run.
    other = t.tmp / "replay"
    other.mkdir()
    cfg = write_config(other, extra_top=airflow_toml(airflow_server), model_extra=RETRAIN)
    with daemon_thread(cfg) as replay:
        for name, df in t.batches.items():
            drop(other / "incoming", name, df)
        wait_for(
            lambda: handled_run(other / "state", t.run_id),
            RUN_TIMEOUT,
            interval=0.3,
            what="the replayed trigger delivered and its run tracked",
        )
        assert replay.sample("watcher_retrain_decisions_total", model="m", outcome="triggered") == 1
        assert (
            replay.sample("watcher_retrain_deliveries_total", model="m", outcome="duplicate") == 1
        )
        assert (
            replay.sample("watcher_retrain_deliveries_total", model="m", outcome="delivered")
            is None
        )
    assert [d.run_id for d in db_decisions(other / "state") if d.outcome == "triggered"] == [
        t.run_id
    ]
    assert db_runs(other / "state")[0].state == "success"

    [run] = runs_tagged(airflow_server, t.tag)
    assert run["dag_run_id"] == t.run_id
    # The first trigger's conf, not the replay's (whose batches live elsewhere).
    assert run["conf"]["data"]["batches_path"] == str(incoming / "processed")
    assert run["conf"]["batches"] == [b1, b2]


# ---- 3: SIGKILL between the outbox write and the delivery -------------------------------------


def test_sigkill_before_delivery_then_restart_makes_exactly_one_run(
    tmp_path: Path, airflow_server: AirflowServer
) -> None:
    tag = new_tag()
    b1, b2 = f"{tag}-1.csv", f"{tag}-2.csv"
    run_id = run_id_for("m", b2)
    state = tmp_path / "state"
    with blackhole() as url:
        # Airflow "answers" nothing: the delivery hangs until its 60 s timeout, and the
        # daemon is killed long before, with the trigger committed and not delivered.
        cfg = write_config(
            tmp_path,
            extra_top=airflow_toml(airflow_server, url=url, request_timeout_seconds=60.0),
            model_extra=RETRAIN,
        )
        first = DaemonProcess(cfg, tmp_path / "daemon.log")
        try:
            drop(tmp_path / "incoming", b1, drifted(31))
            drop(tmp_path / "incoming", b2, drifted(32))
            [pending] = wait_for(
                lambda: db_triggers(state), 60, interval=0.2, what="the trigger in the outbox"
            )
            first.kill()
        finally:
            if first.alive():
                first.kill()
    assert pending["key"] == run_id
    assert pending["status"] == "pending"
    assert pending["attempts"] == 0
    assert runs_tagged(airflow_server, tag) == []
    assert db_runs(state) == []

    # Restart against the real Airflow: the trigger goes out once, and nothing is rescored.
    cfg = write_config(tmp_path, extra_top=airflow_toml(airflow_server), model_extra=RETRAIN)
    second = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        run = wait_for(
            lambda: handled_run(state, run_id),
            RUN_TIMEOUT,
            interval=0.3,
            what="the trigger delivered after the restart and its run tracked",
        )
        assert second.stop() == 0
    finally:
        if second.alive():
            second.kill()
    assert run.state == "success"
    [airflow_run] = runs_tagged(airflow_server, tag)
    assert airflow_run["dag_run_id"] == run_id
    assert airflow_run["state"] == "success"
    assert airflow_run["conf"]["batches"] == [b1, b2]
    [trigger] = db_triggers(state)
    assert trigger["status"] == "done"
    assert trigger["attempts"] == 1
    assert [d.outcome for d in db_decisions(state)] == ["streak_building", "triggered"]
    with store_at(state) as store:
        assert store.processed_ids("m") == {b1, b2}
    assert "delivered" in (tmp_path / "daemon.log").read_text()


# ---- 4: Airflow down while drift happens ------------------------------------------------------


@pytest.mark.slow  # an api-server restart (10-20 s) plus the dispatcher's backoff
def test_api_server_down_during_drift_then_back_makes_exactly_one_run(
    tmp_path: Path, airflow_server: AirflowServer
) -> None:
    tag = new_tag()
    b1, b2 = f"{tag}-1.parquet", f"{tag}-2.parquet"
    run_id = run_id_for("m", b2)
    state = tmp_path / "state"
    # One attempt per delivery: the failure goes back to the outbox at once and the
    # dispatcher's own backoff (about 10 s, then 20 s) decides when to look again.
    cfg = write_config(
        tmp_path,
        extra_top=airflow_toml(
            airflow_server, retry_attempts=1, unreachable_alert_after_seconds=0.0
        ),
        model_extra=RETRAIN,
    )
    airflow_server.wait_until_idle()  # task runners need the api-server too
    with daemon_thread(cfg) as d:
        airflow_server.stop_api_server()
        try:
            drop(tmp_path / "incoming", b1, drifted(61))
            drop(tmp_path / "incoming", b2, drifted(62))
            [pending] = wait_for(
                lambda: [t for t in db_triggers(state) if t["attempts"] >= 1],
                60,
                interval=0.2,
                what="a failed delivery back in the outbox",
            )
            wait_for(lambda: d.sample("watcher_airflow_up") == 0, 30, what="airflow_up 0")
        finally:
            airflow_server.start_api_server()
        back = time.monotonic()
        run = wait_for(
            lambda: handled_run(state, run_id),
            RUN_TIMEOUT,
            interval=0.3,
            what="the trigger delivered after the outage and its run tracked",
        )
        recovered_in = time.monotonic() - back
        wait_for(lambda: d.sample("watcher_airflow_up") == 1, 30, what="airflow_up 1")
    assert pending["key"] == run_id
    assert pending["status"] == "pending"
    assert "refused" in pending["last_error"].lower()
    assert run.state == "success"
    [airflow_run] = runs_tagged(airflow_server, tag)
    assert airflow_run["dag_run_id"] == run_id
    assert airflow_run["conf"]["batches"] == [b1, b2]
    [trigger] = db_triggers(state)
    assert trigger["status"] == "done"
    assert trigger["attempts"] >= 2
    with store_at(state) as store:
        alerts = [i["payload"]["alert"] for i in store.outbox_items() if i["kind"] == "alert"]
        assert "airflow:unreachable" not in {i["key"] for i in store.open_incidents()}
    assert "airflow_unreachable" in alerts
    assert "airflow_recovered" in alerts
    # Delivered at the next scheduled attempt, not minutes later.
    assert recovered_in < 60, recovered_in


# ---- 5 and 6: cooldown, daily cap, an active run and dry run, in one daemon -------------------


PAUSED_DAG = "retrain_paused"
POLICY_MODELS = {
    # consecutive=1: every drifted batch asks for a retrain.
    "cool": f"policy = {{ consecutive = 1, cooldown_seconds = 3600 }}\n{RETRAIN}",
    "cap": f"policy = {{ consecutive = 1, cooldown_seconds = 0, daily_cap = 1 }}\n{RETRAIN}",
    "dry": f"policy = {{ consecutive = 1, cooldown_seconds = 0, dry_run = true }}\n{RETRAIN}",
    # Its DAG is paused (and watcher may not unpause it): the first trigger stays in the
    # outbox, and a trigger not yet delivered counts as an active run.
    "busy": "policy = { consecutive = 1, cooldown_seconds = 0 }\n"
    f'retrain = {{ dag_id = "{PAUSED_DAG}" }}',
}


@dataclass
class PolicyRun:
    tmp: Path
    tag: str
    batches: dict[str, list[str]]  # model -> batch names, in order
    decisions: dict[str, list[Decision]]
    triggers: dict[str, list[dict[str, Any]]]
    metrics: dict[str, dict[str, float | None]]  # model -> outcome -> counter value
    log: list[str]
    status: str


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def policy_run(
    airflow_server: AirflowServer, tmp_path_factory: pytest.TempPathFactory
) -> PolicyRun:
    tmp = tmp_path_factory.mktemp("daemon-policy")
    cfg = write_config(tmp, extra_top=airflow_toml(airflow_server))  # writes the reference
    text = cfg.read_text()
    text = text[: text.index("[models.m]")]
    for name, extra in POLICY_MODELS.items():
        incoming = tmp / name / "incoming"
        incoming.mkdir(parents=True)
        text += model_toml(incoming, tmp / "reference.parquet", extra=extra, name=name)
    cfg.write_text(text)
    tag = new_tag()
    batches = {name: [f"{tag}-{i}.parquet" for i in (1, 2)] for name in POLICY_MODELS}
    state = tmp / "state"
    airflow_server.set_paused(PAUSED_DAG, True)  # as the fixture made it; other tests restore it
    logger = logging.getLogger("watcher.pipeline")
    collect, level = _Collect(), logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        with daemon_thread(cfg) as d:
            for seed, name in enumerate(POLICY_MODELS):
                drop(tmp / name / "incoming", batches[name][0], drifted(40 + seed))
            # The first real triggers run to their end, so no active run suppresses the second
            # batches: what stops them must be the cooldown and the cap.
            wait_for(
                lambda: all(
                    handled_run(state, run_id_for(n, batches[n][0]), n) for n in ("cool", "cap")
                ),
                RUN_TIMEOUT,
                interval=0.3,
                what="the first runs of cool and cap tracked to their end",
            )
            for seed, name in enumerate(POLICY_MODELS):
                drop(tmp / name / "incoming", batches[name][1], drifted(50 + seed))
            wait_for(
                lambda: all(len(batch_decisions(state, n)) == 2 for n in POLICY_MODELS),
                60,
                what="two batch decisions per model",
            )
            outcomes = (
                "triggered",
                "suppressed_cooldown",
                "suppressed_cap",
                "suppressed_active_run",
                "dry_run",
            )
            metrics = {
                n: {
                    o: d.sample(
                        "watcher_retrain_deliveries_total"
                        if o == "delivered"
                        else "watcher_retrain_decisions_total",
                        model=n,
                        outcome=o,
                    )
                    for o in (*outcomes, "delivered")
                }
                for n in POLICY_MODELS
            }
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    status = watcher_cli("status", "--config", str(cfg))
    assert status.returncode == 0, status.stderr
    return PolicyRun(
        tmp=tmp,
        tag=tag,
        batches=batches,
        decisions={n: batch_decisions(state, n) for n in POLICY_MODELS},
        triggers={n: db_triggers(state, n) for n in POLICY_MODELS},
        metrics=metrics,
        log=collect.messages,
        status=status.stdout,
    )


def _status_section(status: str, model: str) -> str:
    """The part of `watcher status` about one model (each starts with a rule naming it)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in status.splitlines():
        words = line.strip("─ ").split()
        if words and words[0] in POLICY_MODELS and "reference" in line:
            current = sections.setdefault(words[0], [])
        current.append(line)
    return "\n".join(sections[model])


def test_cooldown_suppresses_the_next_trigger(
    policy_run: PolicyRun, airflow_server: AirflowServer
) -> None:
    p = policy_run
    first, second = p.batches["cool"]
    d1, d2 = p.decisions["cool"]
    assert (d1.batch_id, d1.outcome, d1.run_id) == (first, "triggered", run_id_for("cool", first))
    assert (d2.batch_id, d2.outcome, d2.run_id) == (second, "suppressed_cooldown", None)
    assert d2.reason.startswith("last trigger ")
    assert d2.reason.endswith(" ago; cooldown is 1.0 h")
    assert [t["key"] for t in p.triggers["cool"]] == [run_id_for("cool", first)]
    assert p.metrics["cool"]["triggered"] == 1
    assert p.metrics["cool"]["suppressed_cooldown"] == 1
    assert p.metrics["cool"]["delivered"] == 1
    [run] = [r for r in runs_tagged(airflow_server, p.tag) if r["conf"]["model"] == "cool"]
    assert run["conf"]["batches"] == [first]
    section = _status_section(p.status, "cool")
    assert "last decision: suppressed_cooldown" in section
    assert "cooldown is 1.0 h" in section


def test_daily_cap_suppresses_the_next_trigger(
    policy_run: PolicyRun, airflow_server: AirflowServer
) -> None:
    p = policy_run
    first, second = p.batches["cap"]
    assert [(d.batch_id, d.outcome) for d in p.decisions["cap"]] == [
        (first, "triggered"),
        (second, "suppressed_cap"),
    ]
    assert p.decisions["cap"][1].reason == "1 trigger(s) in the last 24 h; the daily cap is 1"
    assert [t["key"] for t in p.triggers["cap"]] == [run_id_for("cap", first)]
    assert p.metrics["cap"]["triggered"] == 1
    assert p.metrics["cap"]["suppressed_cap"] == 1
    assert p.metrics["cap"]["suppressed_cooldown"] is None
    [run] = [r for r in runs_tagged(airflow_server, p.tag) if r["conf"]["model"] == "cap"]
    assert run["state"] == "success"
    section = _status_section(p.status, "cap")
    assert "last decision: suppressed_cap" in section
    assert "the daily cap is 1" in section


def test_dry_run_decides_logs_counts_and_never_calls_airflow(
    policy_run: PolicyRun, airflow_server: AirflowServer
) -> None:
    p = policy_run
    reason = "dataset drift in 1 consecutive batches (threshold 1); dry run: Airflow not called"
    assert [(d.batch_id, d.outcome, d.reason) for d in p.decisions["dry"]] == [
        (b, "dry_run", reason) for b in p.batches["dry"]
    ]
    assert p.triggers["dry"] == []  # nothing for the dispatcher to deliver
    assert p.metrics["dry"]["dry_run"] == 2
    assert p.metrics["dry"]["triggered"] == 0
    assert p.metrics["dry"]["delivered"] is None
    for b in p.batches["dry"]:
        assert airflow_server.get_run(DAG, run_id_for("dry", b)) is None
        assert any(b in m and "decision: dry_run" in m for m in p.log), p.log
    assert not [r for r in runs_tagged(airflow_server, p.tag) if r["conf"]["model"] == "dry"]
    assert "last decision: dry_run" in _status_section(p.status, "dry")


def test_a_trigger_not_yet_delivered_suppresses_the_next_as_active_run(
    policy_run: PolicyRun, airflow_server: AirflowServer
) -> None:
    p = policy_run
    first, second = p.batches["busy"]
    assert [(d.batch_id, d.outcome) for d in p.decisions["busy"]] == [
        (first, "triggered"),
        (second, "suppressed_active_run"),
    ]
    assert p.decisions["busy"][1].reason == "a retrain run is already queued or running"
    [trigger] = p.triggers["busy"]
    assert trigger["key"] == run_id_for("busy", first)
    assert trigger["status"] == "pending"  # its DAG is paused
    assert p.metrics["busy"]["triggered"] == 1
    assert p.metrics["busy"]["suppressed_active_run"] == 1
    assert airflow_server.get_run(PAUSED_DAG, run_id_for("busy", first)) is None
    assert "last decision: suppressed_active_run" in _status_section(p.status, "busy")
