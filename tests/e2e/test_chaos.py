"""Chaos: `watcher run` killed with SIGKILL at random points while batches keep arriving,
against a real SMTP server (aiosmtpd, alive across the kills) and the session's real
Airflow 3.3.2. Afterwards:

- every batch is in the ledger exactly once (scored or rejected, none left claimed) and
  every scored batch has exactly one decision;
- every trigger in the outbox became exactly one DAG run (the run id is the trigger key);
- every alert was mailed, and a mail arrived twice only when a kill landed inside its
  delivery (the outbox marks a mail in flight, durably, right before the SMTP transaction):
  at most one duplicate per such kill.

Size: CHAOS_KILLS (default 30, the issue's minimum) kills over CHAOS_BATCHES (default 100)
batches. Each round waits for the daemon to be ready (imports dominate: about 5 s on an idle
2-core machine), so the defaults take three to four minutes there, much longer on a loaded
one; set smaller values for a quick local check, larger ones for a soak.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from fixtures_airflow import AirflowServer
from fixtures_smtp import SmtpServer
from harness import DaemonProcess
from support import drop, frame, wait_for, write_config

from watcher.alerts.compose import message_id
from watcher.config import toml_value
from watcher.dev.localservices import free_port
from watcher.state import StateStore

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DAG = "retrain_test"
# The minimums are the defaults (CI sets nothing); a developer may shrink or grow them.
KILLS = int(os.environ.get("CHAOS_KILLS", "30"))
BATCHES = int(os.environ.get("CHAOS_BATCHES", "100"))
SENDER = "watcher@example.org"


def _batch(i: int) -> pd.DataFrame:
    """Blocks of drifted batches between clean ones, and now and then a bad one."""
    if i % 10 == 7:
        return frame(120, seed=1000 + i).drop(columns="b")  # rejected: missing column
    drifted = (i // 4) % 8 == 0
    return frame(120, seed=1000 + i, shift=2.0 if drifted else 0.0)


def _store(state: Path) -> StateStore:
    return StateStore(state / "state.db")


def _in_flight(state: Path) -> list[str]:
    """Alerts whose delivery had begun and was not marked done when the daemon died."""
    store = _store(state)
    try:
        return [
            i["key"]
            for i in store.outbox_items(status="pending")
            if i["kind"] == "alert" and i["sending_at"] is not None
        ]
    finally:
        store.close()


# 30 restarts: each waits for the daemon's imports, which take seconds on a loaded machine.
@pytest.mark.timeout(1800)
def test_kill_9_at_random_points_loses_and_repeats_nothing(
    tmp_path: Path, airflow_server: AirflowServer
) -> None:
    tag = uuid.uuid4().hex[:8]
    rng = random.Random(int(tag, 16))
    smtp = SmtpServer().start()
    try:
        airflow = airflow_server.airflow_config(
            poll_interval_seconds=0.3, request_timeout_seconds=30.0
        )
        extra = "[airflow]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in airflow.items())
        extra += "[smtp]\n" + "".join(
            f"{k} = {toml_value(v)}\n" for k, v in smtp.smtp_settings(sender=SENDER).items()
        )
        extra += "[alerts]\ndigest_threshold = 100000\nreport_wait_seconds = 0\n"
        port = free_port()
        cfg = write_config(
            tmp_path,
            metrics_port=port,
            extra_top=extra,
            model_extra=(
                f'retrain = {{ dag_id = "{DAG}" }}\n'
                "policy = { consecutive = 2, cooldown_seconds = 0, daily_cap = 1000 }"
            ),
            poll=0.1,
        )
        incoming = tmp_path / "incoming"
        state = tmp_path / "state"
        log = tmp_path / "daemon.log"
        names = [f"{tag}-{i:03d}.csv" for i in range(BATCHES)]
        per_round = -(-BATCHES // KILLS)  # ceil: every batch is dropped before the last kill
        dropped = 0
        in_flight: Counter[str] = Counter()
        kills_in_delivery = 0
        for k in range(KILLS):
            daemon = DaemonProcess(cfg, log)
            try:
                for i in range(dropped, min(BATCHES, dropped + per_round)):
                    drop(incoming, names[i], _batch(i))
                dropped = min(BATCHES, dropped + per_round)
                wait_for(lambda: _ready(port), 120, interval=0.05, what="the daemon ready")
                if k % 3 == 2:
                    # Aim at the window this is about: kill as soon as a mail is in flight.
                    _wait_in_flight(state / "state.db", 3.0)
                else:
                    # Random points: scoring, commits, deliveries, idle.
                    time.sleep(rng.uniform(0.0, 1.5))
            finally:
                daemon.kill()
            keys = _in_flight(state)
            in_flight.update(keys)
            kills_in_delivery += bool(keys)

        # A last daemon finishes everything: every batch, every trigger, every mail.
        final = DaemonProcess(cfg, log)
        try:
            wait_for(lambda: _ready(port), 120, interval=0.05, what="the last daemon ready")
            wait_for(
                lambda: _all_finished(state, names), 180, interval=0.5, what="every batch done"
            )
            wait_for(
                lambda: _settled(state), 240, interval=0.5, what="runs tracked, outbox drained"
            )
            assert final.stop() == 0
        finally:
            if final.alive():
                final.kill()
    finally:
        smtp.stop()

    store = _store(state)
    try:
        records = {n: store.batch("m", n) for n in names}
        decisions = [d for d in store.decisions("m", limit=100_000) if d.batch_id is not None]
        outbox = store.outbox_items()
    finally:
        store.close()

    # Every batch exactly once.
    assert all(r is not None and r.status in ("scored", "rejected") for r in records.values())
    per_batch = Counter(d.batch_id for d in decisions)
    scored = {n for n, r in records.items() if r is not None and r.status == "scored"}
    assert {b for b, n in per_batch.items() if n > 1} == set()
    assert set(per_batch) == scored
    assert len(scored) >= BATCHES * 8 // 10 - 1
    processed = {p.name for p in (incoming / "processed").iterdir()}
    quarantined = {p.name for p in (incoming / "quarantine").iterdir()}
    assert scored <= processed
    assert set(names) - scored <= quarantined

    # One DAG run per trigger.
    triggers = [i for i in outbox if i["kind"] == "trigger"]
    assert triggers, "the drifted blocks should have triggered at least one retrain"
    assert all(t["status"] == "done" for t in triggers)
    runs = [r["dag_run_id"] for r in airflow_server.list_runs(DAG) if tag in r["dag_run_id"]]
    assert Counter(runs) == Counter(t["key"] for t in triggers)

    # Every alert mailed; a duplicate only for a kill inside its delivery, at most one each.
    alerts = [i for i in outbox if i["kind"] == "alert"]
    assert all(a["status"] == "done" for a in alerts), [a for a in alerts if a["status"] != "done"]
    copies = Counter(str(m.message["Message-ID"]) for m in smtp.messages)
    duplicates = 0
    for a in alerts:
        n = copies[message_id(a["key"], SENDER)]
        assert n >= 1, f"{a['key']} was never mailed"
        assert n - 1 <= in_flight[a["key"]], (a["key"], n, in_flight[a["key"]])
        duplicates += n - 1
    assert duplicates <= kills_in_delivery
    print(
        f"\nchaos: {KILLS} kills over {BATCHES} batches; {len(scored)} scored, "
        f"{len(triggers)} trigger(s) = {len(runs)} DAG run(s); {len(alerts)} alerts, "
        f"{sum(copies.values())} mails, {duplicates} duplicate(s), "
        f"{kills_in_delivery} kill(s) inside a delivery"
    )


def _all_finished(state: Path, names: list[str]) -> bool:
    store = _store(state)
    try:
        return all(store.batch_status("m", n) in ("scored", "rejected") for n in names)
    finally:
        store.close()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_in_flight(db: Path, timeout: float) -> None:
    """Return as soon as a mail is marked in flight (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
    try:
        while time.monotonic() < deadline:
            try:
                row = conn.execute(
                    "SELECT 1 FROM outbox WHERE status = 'pending' AND sending_at IS NOT NULL"
                ).fetchone()
            except sqlite3.OperationalError:  # locked or not created yet
                row = None
            if row is not None:
                return
            time.sleep(0.002)
    finally:
        conn.close()


def _settled(state: Path) -> bool:
    """Every trigger's run ended and was acted on, and no action waits in the outbox."""
    store = _store(state)
    try:
        triggers = {i["key"] for i in store.outbox_items() if i["kind"] == "trigger"}
        handled = {r.run_id for r in store.runs("m", limit=10_000) if r.handled}
        return triggers <= handled and not store.outbox_items(status="pending")
    finally:
        store.close()
