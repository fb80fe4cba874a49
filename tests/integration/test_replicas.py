"""Replicas as real processes on the real PostgreSQL: three `watcher run` share 30 models
while they are killed (SIGKILL) and restarted, and while every PostgreSQL connection is
terminated; a replica frozen with SIGSTOP loses its model and, resumed, has its stale
write refused. Counted from the ledger, the decisions, the outbox and a real SMTP server
(aiosmtpd). Retrain triggers are counted in the outbox, not delivered: a real Airflow
would add minutes to this test (tests/e2e covers delivery and the dag_run_id's dedup)."""

from __future__ import annotations

import email
import random
import re
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from fixtures_smtp import SmtpServer
from fixtures_state import pg_backend
from replicas_support import (
    Fleet,
    drop_wave,
    fleet_config,
    model_name,
    per_batch_counts,
    wait_finished,
)
from support import drop, frame, wait_for

from watcher.alerts.compose import message_id

pytestmark = pytest.mark.postgres

MODELS = 30
WAVES = 6
KILLS = 10


def _scrape(log: Path) -> str:
    """The /metrics of the replica writing `log` (its port is chosen at start)."""
    found = re.search(r"metrics on (http://\S+/metrics)", log.read_text())
    assert found, log.read_text()
    with urllib.request.urlopen(found.group(1), timeout=10) as response:
        return str(response.read().decode())


def _terminate_all(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as admin:
        return len(
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'watcher' AND datname = current_database() "
                "AND pid <> pg_backend_pid()"
            ).fetchall()
        )


def test_three_replicas_killed_and_restarted_score_every_batch_once_and_mail_once(
    tmp_path: Path, state_pg_database: str, smtp_server: SmtpServer
) -> None:
    backend = pg_backend(state_pg_database)
    assert backend.dsn is not None
    smtp = smtp_server.smtp_settings(
        retry_attempts=1, retry_backoff_seconds=0.3, retry_backoff_max_seconds=1.0
    )
    fleet = Fleet(fleet_config(tmp_path, backend.dsn, MODELS, smtp=smtp), tmp_path)
    store = backend.open()
    rng = random.Random(12)
    terminated = kills = events = 0
    try:
        for i in range(3):
            fleet.start(i)
        wait_for(lambda: len(store.live_leases()) >= MODELS, timeout=60, what="models owned")

        def shares() -> list[int]:
            owners = Counter(w for m, w in store.live_leases().items() if m != "~duties")
            return sorted(owners.values())

        # Whoever started first took every model; the others get their fair share handed over.
        wait_for(lambda: shares() == [10, 10, 10], timeout=60, what="the models shared 10/10/10")
        for wave in range(WAVES):
            drop_wave(tmp_path, MODELS, wave)
            for _ in range(2):  # two kills per wave (the last wave: after it ran a while)
                time.sleep(rng.uniform(0.5, 2.5))
                if kills < KILLS:
                    victim = rng.randrange(3)
                    fleet.kill(victim)
                    kills += 1
                    time.sleep(rng.uniform(0.0, 1.0))
                    fleet.start(victim)
            if wave in (1, 3, 5):  # what a PostgreSQL restart does to every replica
                n = _terminate_all(backend.conninfo())
                terminated += n
                events += n > 0
        assert kills >= KILLS
        store.close()
        store = backend.open()  # the test's own connection may have been terminated
        done = wait_finished(store, MODELS * WAVES, timeout=240)
        assert done == MODELS * WAVES, fleet.logs()[-8000:]
        # Every alert in the outbox delivered before the count.
        wait_for(lambda: store.pending_counts()["alert"] == 0, timeout=60, what="alerts delivered")
        assert fleet.stop_all_cleanly() == 3

        ledger = store._read("SELECT model, batch_id, status FROM batches")
        assert Counter(r["status"] for r in ledger) == {"scored": MODELS * WAVES}
        decisions = per_batch_counts(store, "decisions")
        expected = {(model_name(i), f"b{w}.parquet") for i in range(MODELS) for w in range(WAVES)}
        assert set(decisions) == expected
        doubled = {k: n for k, n in decisions.items() if n != 1}
        assert doubled == {}, f"batches decided more than once: {doubled}"

        # Without Airflow the policy decides "dry_run" where it would trigger: one per
        # model (its drift streak, b1 and b2), whichever replica scored which batch.
        trig = Counter(
            str(r["model"])
            for r in store._read("SELECT model FROM decisions WHERE outcome = 'dry_run'")
        )
        assert trig == {model_name(i): 1 for i in range(MODELS)}, trig

        alerts = [r for r in store.outbox_items() if r["kind"] == "alert"]
        assert alerts
        assert all(r["status"] == "done" for r in alerts)
        wanted = {message_id(r["key"], "watcher@example.org"): r["key"] for r in alerts}
        got = Counter(email.message_from_bytes(m.data)["Message-ID"] for m in smtp_server.messages)
        lost = set(wanted) - set(got)
        duplicated = {mid: n for mid, n in got.items() if n > 1}
        # A replica killed between the SMTP server's "250 OK" and its commit of "done" leaves
        # the mail marked as being sent; the replica that takes the claim over sends it again
        # under the same Message-ID and says so. That is the one way a mail may arrive twice
        # (no SMTP transaction can be committed with a database row); any other copy is a bug.
        resent = set(fleet.log_matches(r"alert (\S+) was being mailed when watcher stopped"))
        unexplained = {mid: n for mid, n in duplicated.items() if wanted[mid] not in resent}
        print(
            f"\nreplicas: {kills} kills, {fleet.started} starts ({fleet.supervised} by the "
            f"supervisor), {terminated} connections terminated in {events} rounds; "
            f"{len(ledger)} batches, "
            f"{sum(decisions.values())} decisions, "
            f"{sum(trig.values())} triggers, {len(alerts)} alerts, "
            f"{len(smtp_server.messages)} mails, {len(duplicated)} duplicated, "
            f"{len(lost)} lost, {len(resent)} re-sent after a kill; writes refused (fenced): "
            f"{fleet.log_count('the write was refused')}"
        )
        assert not lost, f"alerts never mailed: {[wanted[m] for m in lost]}"
        assert not unexplained, f"mails received more than once: {unexplained}"
        assert len(resent) <= kills, f"mails re-sent without a kill behind them: {resent}"
        assert set(got) == set(wanted)
        assert events == 3
    finally:
        fleet.kill_all()
        store.close()


def test_a_frozen_replica_loses_its_model_and_its_stale_write_is_refused(
    tmp_path: Path, state_pg_database: str
) -> None:
    """SIGSTOP a replica while it scores a big batch; the other takes the model over
    after `lease_seconds` and scores the batch; SIGCONT: the frozen one finishes its
    scoring, its transaction is refused by the fence, and it keeps running."""
    backend = pg_backend(state_pg_database)
    assert backend.dsn is not None
    cfg = fleet_config(tmp_path, backend.dsn, 1, lease_seconds=2.0, heartbeat_seconds=0.5)
    fleet = Fleet(cfg, tmp_path)
    store = backend.open()
    try:
        first = fleet.start(0)
        wait_for(lambda: "m00" in store.live_leases(), timeout=60, what="m00 owned")
        assert f":{first.proc.pid}:" in store.live_leases()["m00"]
        second = fleet.start(1)
        wait_for(
            lambda: store._read("SELECT COUNT(*) AS n FROM replicas")[0]["n"] == 2,
            timeout=60,
            what="two replicas",
        )
        drop(tmp_path / "in" / "m00", "big.parquet", frame(400_000, seed=5, shift=2.0))
        wait_for(
            lambda: store.batch_status("m00", "big.parquet") == "claimed",
            timeout=60,
            interval=0.02,
            what="the big batch claimed",
        )
        first.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(
                lambda: f":{second.proc.pid}:" in store.live_leases().get("m00", ""),
                timeout=30,
                what="the model taken over",
            )
            assert wait_finished(store, 1, timeout=120) == 1, fleet.logs()
        finally:
            first.proc.send_signal(signal.SIGCONT)
        wait_for(
            lambda: fleet.log_count("the write was refused|does not own model m00") >= 1,
            timeout=120,
            what="the stale write refused",
        )
        assert first.alive(), fleet.logs()
        assert second.alive(), fleet.logs()
        assert per_batch_counts(store, "decisions") == {("m00", "big.parquet"): 1}
        assert store.batch_status("m00", "big.parquet") == "scored"
        # Each replica's /metrics: the frozen one counts its refused write and no longer
        # exports the model's gauges; the owner does.
        stale, owner = _scrape(first.log), _scrape(second.log)
        assert 'watcher_model_owned{model="m00"} 0.0' in stale
        assert "watcher_writes_fenced_total 1.0" in stale
        assert 'watcher_drift_streak{model="m00"}' not in stale
        assert 'watcher_model_owned{model="m00"} 1.0' in owner
        assert "watcher_models_owned 1.0" in owner
        assert 'watcher_drift_streak{model="m00"} 1.0' in owner
        assert "watcher_models_without_owner 0.0" in owner
        assert fleet.stop_all_cleanly() == 2
    finally:
        fleet.kill_all()
        store.close()
