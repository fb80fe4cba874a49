"""Schema versions: a state file written by watcher 0.1 is upgraded in place and keeps its
history; a database from a newer release is refused, untouched; `watcher migrate`."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import psycopg
import pytest
from fixtures_state import StateBackend
from harness import watcher_cli

from watcher.config import load_config
from watcher.errors import ConfigError
from watcher.state import Action, StateSchemaError, StateStore
from watcher.state.migrate import revisions

FIXTURE = Path(__file__).resolve().parents[1] / "state_fixtures" / "watcher_0_1_state.sql"
HEAD = revisions()[0]


def _v0_1_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(FIXTURE.read_text(encoding="utf-8"))
    db.close()
    return path


def _dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def _revision(path: Path) -> str:
    with sqlite3.connect(path) as db:
        (rev,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    db.close()
    return str(rev)


def test_a_watcher_0_1_state_file_is_upgraded_and_keeps_its_history(tmp_path: Path) -> None:
    path = _v0_1_file(tmp_path / "state.db")
    store = StateStore(path)
    try:
        assert _revision(path) == HEAD
        assert store.processed_ids("bikeshare") == {f"batch-{i:03d}" for i in range(6)} | {
            "bad-000"
        }
        assert store.batch_reason("bikeshare", "bad-000") == "column temp is missing"
        newest = store.recent_batches("bikeshare", limit=1)[0]
        assert newest.batch_id == "bad-000"
        assert newest.seq == 7
        assert store.drift_streak("bikeshare") == 3
        assert store.reference_version("bikeshare") == "0001"
        decisions = store.decisions("bikeshare", limit=100)
        assert len(decisions) == 6
        assert decisions[0].outcome == "triggered"
        assert decisions[0].readings == [{"signal": "drift", "value": 5}]
        (run,) = store.runs("bikeshare")
        assert (run.state, run.ended_at is not None) == ("success", True)
        assert [i["key"] for i in store.open_incidents()] == ["drift:bikeshare"]
        items = {i["key"]: i["status"] for i in store.outbox_items()}
        assert items == {"watcher__bikeshare__batch-005": "pending", "drift:bikeshare:1": "done"}
        assert store.watermark("sql:bikeshare") == '{"next": "2026-01-01T00:00:00+00:00"}'
        with store.transaction() as conn:
            periods = store.label_periods(conn, "bikeshare", "0001")
            assert [p.loss for p in periods] == [40.0]
            # Life goes on: the next batch continues the ledger's sequence.
            assert not store.enqueue(conn, Action("alert", "drift:bikeshare:1", "bikeshare", {}))
        assert store.claim_batch("bikeshare", "batch-006", "/in/batch-006.parquet")
        assert store.batch("bikeshare", "batch-006").seq == 8  # type: ignore[union-attr]
        # The retention indexes of revision 0002 exist.
        with sqlite3.connect(path) as db:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        db.close()
        assert {"batches_finished_at", "decisions_at", "outbox_done_at"} <= names
    finally:
        store.close()
    StateStore(path).close()  # opening again is a no-op
    assert _revision(path) == HEAD


def test_auto_migrate_off_refuses_until_watcher_migrate(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    path = _v0_1_file(state_dir / "state.db")
    config = tmp_path / "watcher.toml"
    config.write_text(f'[daemon]\nstate_dir = "{state_dir}"\n\n[state]\nauto_migrate = false\n')
    before = _dump(path)
    with pytest.raises(StateSchemaError, match="watcher migrate"):
        StateStore(path, auto_migrate=False)
    assert _dump(path) == before  # refused, untouched

    def watcher(*args: str) -> subprocess.CompletedProcess[str]:
        return watcher_cli(*args, "--config", str(config), timeout=120)

    check = watcher("migrate", "--check")
    assert check.returncode == 1, check.stderr
    assert f"revision none, this watcher needs {HEAD}; run `watcher migrate`" in check.stdout
    done = watcher("migrate")
    assert done.returncode == 0, done.stderr
    assert f"upgraded from revision none to {HEAD}" in done.stdout
    assert watcher("migrate", "--check").returncode == 0
    assert "already at revision" in watcher("migrate").stdout
    store = StateStore(path, auto_migrate=False)
    assert len(store.processed_ids("bikeshare")) == 7
    store.close()


def test_a_database_from_a_newer_release_is_refused(state_backend: StateBackend) -> None:
    state_backend.open().close()
    if state_backend.name == "sqlite":
        assert state_backend.target.path is not None
        with sqlite3.connect(state_backend.target.path) as db:
            db.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
        db.close()
    else:
        with psycopg.connect(state_backend.conninfo(), autocommit=True) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    with pytest.raises(StateSchemaError) as caught:
        state_backend.open()
    message = str(caught.value)
    assert "schema revision '0099_from_the_future', written by a newer watcher release" in message
    assert f"knows revisions up to '{HEAD}'" in message
    assert "run the newer watcher release" in message


def test_an_older_revision_is_upgraded_on_both_backends(state_backend: StateBackend) -> None:
    """A database at revision 0001 with rows in it reaches the head and keeps them."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, pool

    from watcher.state.migrate import MIGRATIONS

    engine = create_engine(state_backend.target.sqlalchemy_url, poolclass=pool.NullPool)
    if state_backend.target.path is not None:
        state_backend.target.path.parent.mkdir(parents=True, exist_ok=True)
    with engine.begin() as connection:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")
        connection.exec_driver_sql(
            "INSERT INTO batches (model, batch_id, uri, status, claimed_at) "
            "VALUES ('m', 'b1', '/in', 'scored', 1.5)"
        )
    engine.dispose()
    store = state_backend.open()
    try:
        assert store.processed_ids("m") == {"b1"}
        with store.transaction() as conn:
            rev = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert rev["version_num"] == HEAD
    finally:
        store.close()


def test_state_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        '[state]\nbackend = "postgres"\ndsn = "postgresql://watcher@db:5432/watcher"\n'
        f'password_file = "{secret}"\nretention_days = 30\n'
    )
    settings = load_config(cfg)
    assert settings.state.password is not None
    assert settings.state.password.get_secret_value() == "s3cret"
    from watcher.secrets import secret_values
    from watcher.state.config import state_target

    assert "s3cret" in secret_values(settings)
    target = state_target(settings.state, settings.daemon.state_dir)
    assert "s3cret" in target.conninfo
    assert "s3cret" not in target.where
    monkeypatch.setenv("WATCHER_STATE__PASSWORD", "from-env")
    cfg.write_text('[state]\nbackend = "postgres"\ndsn = "postgresql://watcher@db/w"\n')
    assert load_config(cfg).state.password.get_secret_value() == "from-env"  # type: ignore[union-attr]
    for body, message in [
        ('[state]\nbackend = "postgres"\n', "needs state.dsn"),
        ('[state]\nbackend = "postgres"\ndsn = "postgresql://u:pw@db/w"\n', "holds a password"),
        ('[state]\nbackend = "postgres"\ndsn = "mysql://u@db/w"\n', "must be a postgresql://"),
        ('[state]\ndsn = "postgresql://u@db/w"\n', 'only read with state.backend = "postgres"'),
        ("[state]\nretention_days = 0.5\n", "retention_days"),
    ]:
        cfg.write_text(body)
        with pytest.raises(ConfigError, match=message):
            load_config(cfg)


@pytest.mark.postgres
def test_an_unreachable_postgres_state_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    # Port 22999 (this branch's range): nothing listens there.
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}"\n\n[state]\nbackend = "postgres"\n'
        'dsn = "postgresql://postgres@127.0.0.1:22999/watcher"\nconnect_timeout_seconds = 2\n'
    )
    for command in (["status"], ["run"]):
        done = watcher_cli(*command, "--config", str(cfg), timeout=120)
        assert done.returncode == 2, done.stderr
        assert "cannot open the state database postgresql://postgres@127.0.0.1:22999" in (
            done.stderr
        )
        assert "Traceback" not in done.stderr
