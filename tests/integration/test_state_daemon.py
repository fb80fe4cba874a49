"""`watcher run` as a real process on each state backend: batches flow, the daemon is
killed with SIGKILL mid-stream and restarted, and every batch ends in the ledger exactly
once with one decision; `watcher status` reads the same state."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_state import StateBackend
from harness import DaemonProcess
from support import drop, frame, write_config

from watcher.state import StateStore

MODEL = "m"


def _state_toml(backend: StateBackend) -> str:
    if backend.dsn is None:
        return ""
    return f'\n[state]\nbackend = "postgres"\ndsn = "{backend.dsn}"\n'


def _wait_scored(store: StateStore, n: int, timeout: float = 90.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = store.processed_ids(MODEL)
        if len(done) >= n:
            return done
        time.sleep(0.2)
    return store.processed_ids(MODEL)


def test_daemon_killed_and_restarted_scores_every_batch_once(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    cfg = write_config(tmp_path, extra_top=_state_toml(state_backend))
    incoming = tmp_path / "incoming"
    store = state_backend.open()
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        for i in range(4):
            drop(incoming, f"b{i:02d}.parquet", frame(300, seed=10 + i, shift=2.0 * (i % 2)))
        assert len(_wait_scored(store, 2)) >= 2, (tmp_path / "daemon.log").read_text()
        daemon.kill()  # SIGKILL, possibly inside a batch's transaction
        for i in range(4, 8):
            drop(incoming, f"b{i:02d}.parquet", frame(300, seed=10 + i))
        daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
        done = _wait_scored(store, 8)
        assert done == {f"b{i:02d}.parquet" for i in range(8)}, (
            tmp_path / "daemon.log"
        ).read_text()[-3000:]
        assert daemon.stop() == 0
        with store.transaction() as conn:
            rows = conn.execute(
                "SELECT batch_id, COUNT(*) AS n FROM batches WHERE model = ? GROUP BY batch_id",
                (MODEL,),
            ).fetchall()
            decided = conn.execute(
                "SELECT batch_id, COUNT(*) AS n FROM decisions WHERE model = ? "
                "AND batch_id IS NOT NULL GROUP BY batch_id",
                (MODEL,),
            ).fetchall()
        assert {r["batch_id"]: r["n"] for r in rows} == {f"b{i:02d}.parquet": 1 for i in range(8)}
        assert {r["batch_id"]: r["n"] for r in decided} == {
            f"b{i:02d}.parquet": 1 for i in range(8)
        }
        assert store.batch(MODEL, "b01.parquet").dataset_drift is True  # type: ignore[union-attr]
        assert store.batch(MODEL, "b00.parquet").dataset_drift is False  # type: ignore[union-attr]
    finally:
        daemon.kill()
        store.close()
    status = subprocess.run(
        [sys.executable, "-m", "watcher", "status", "--json", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert MODEL in json.dumps(document)
    assert "b07.parquet" in status.stdout


@pytest.mark.postgres
def test_a_second_replica_waits_and_takes_the_model_over_on_a_clean_stop(
    tmp_path: Path, state_pg_database: str
) -> None:
    """Two `watcher run` on one PostgreSQL state (another state_dir each, as on two
    hosts): the second starts, owns nothing while the first holds the only model, and
    scores the next batches once the first stopped cleanly (its leases released at once,
    not after `lease_seconds`)."""
    from fixtures_state import pg_backend

    backend = pg_backend(state_pg_database)
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first_dir.mkdir()
    second_dir.mkdir()
    lease = _state_toml(backend) + "lease_seconds = 30\nheartbeat_seconds = 0.5\n"
    first = DaemonProcess(write_config(first_dir, extra_top=lease), first_dir / "daemon.log")
    second: DaemonProcess | None = None
    store = backend.open()
    try:
        drop(first_dir / "incoming", "b.parquet", frame(300, seed=3))
        assert _wait_scored(store, 1) == {"b.parquet"}, (first_dir / "daemon.log").read_text()
        cfg = write_config(second_dir, extra_top=lease)
        # The second replica watches the first one's folder: the same model, shared.
        cfg.write_text(
            cfg.read_text().replace(str(second_dir / "incoming"), str(first_dir / "incoming"))
        )
        second = DaemonProcess(cfg, second_dir / "daemon.log")
        time.sleep(3)
        assert second.alive(), (second_dir / "daemon.log").read_text()
        owner = store.owners()[MODEL][0]
        assert f":{first.proc.pid}:" in owner
        assert first.stop() == 0
        drop(first_dir / "incoming", "c.parquet", frame(300, seed=4))
        assert _wait_scored(store, 2, timeout=20) == {"b.parquet", "c.parquet"}, (
            second_dir / "daemon.log"
        ).read_text()[-3000:]
        assert f":{second.proc.pid}:" in store.owners()[MODEL][0]
        assert second.stop() == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
        store.close()


@pytest.mark.postgres
def test_daemon_recovers_when_postgres_drops_its_connections_under_load(
    tmp_path: Path, state_pg_database: str
) -> None:
    """Every state connection terminated again and again while batches flow (what a
    PostgreSQL restart does to them): the daemon keeps running, reconnects, and every batch
    ends scored exactly once with one decision."""
    import psycopg
    from fixtures_state import pg_backend

    backend = pg_backend(state_pg_database)
    cfg = write_config(tmp_path, extra_top=_state_toml(backend))
    store = backend.open()
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    terminated = 0
    try:
        drop(tmp_path / "incoming", "first.parquet", frame(300, seed=39))
        assert _wait_scored(store, 1) == {"first.parquet"}  # the daemon is up
        with psycopg.connect(backend.conninfo(), autocommit=True) as admin:
            for i in range(10):
                drop(tmp_path / "incoming", f"b{i:02d}.parquet", frame(300, seed=40 + i))
                time.sleep(0.3)
                rows = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'watcher' AND datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                ).fetchall()
                terminated += len(rows)
        assert terminated >= 5, (tmp_path / "daemon.log").read_text()[-3000:]
        store.close()
        store = backend.open()  # the test's own store was terminated too
        done = _wait_scored(store, 11)
        log = (tmp_path / "daemon.log").read_text()
        assert done == {f"b{i:02d}.parquet" for i in range(10)} | {"first.parquet"}, log[-3000:]
        assert daemon.alive(), log[-3000:]
        with store.transaction() as conn:
            decided = conn.execute(
                "SELECT batch_id, COUNT(*) AS n FROM decisions WHERE batch_id IS NOT NULL "
                "GROUP BY batch_id"
            ).fetchall()
        assert {r["batch_id"]: r["n"] for r in decided} == {
            f"b{i:02d}.parquet": 1 for i in range(10)
        } | {"first.parquet": 1}
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        store.close()
