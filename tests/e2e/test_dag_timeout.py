"""A retraining run whose task hangs, in the session's real Airflow 3.3.2: the run timeout
fails it, the daemon alerts on-call (a real SMTP server), and the model is free again: the
next drifted batch triggers a new run."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_airflow import AirflowServer
from fixtures_smtp import SmtpServer
from harness import DaemonProcess
from support import drop, frame, wait_for, write_config

from watcher.config import toml_value
from watcher.policy import run_id_for
from watcher.state import StateStore

pytestmark = pytest.mark.airflow

DAG_FILE = Path(__file__).resolve().parents[1] / "airflow_timeout" / "retrain_hangs.py"
DAG = "retrain_hangs"


def _table(name: str, values: dict[str, object]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


def _decisions(state: Path) -> list[tuple[str | None, str]]:
    store = StateStore(state / "state.db")
    try:
        return [(d.batch_id, d.outcome) for d in reversed(store.decisions("m", limit=100))]
    finally:
        store.close()


def _run_state(state: Path, run_id: str) -> str | None:
    store = StateStore(state / "state.db")
    try:
        return next((r.state for r in store.runs("m") if r.run_id == run_id), None)
    finally:
        store.close()


def test_a_hung_run_is_failed_by_its_timeout_alerted_and_the_model_freed(
    airflow_server: AirflowServer, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    airflow_server.add_dag(DAG_FILE, [DAG])
    airflow = airflow_server.airflow_config(poll_interval_seconds=0.3, request_timeout_seconds=30.0)
    cfg = write_config(
        tmp_path,
        extra_top=_table("airflow", airflow)
        + _table("smtp", smtp_server.smtp_settings())
        + _table("alerts", {"digest_window_seconds": 0}),
        model_extra=f'retrain = {{ dag_id = "{DAG}" }}\n'
        "policy = { consecutive = 1, cooldown_seconds = 0, daily_cap = 10 }",
    )
    state = tmp_path / "state"
    tag = tmp_path.name[-8:].replace("_", "")
    first, during, after = (f"{tag}-{n}.parquet" for n in ("first", "during", "after"))
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        drop(tmp_path / "incoming", first, frame(300, seed=61, shift=2.0))
        run1 = run_id_for("m", first)
        wait_for(
            lambda: (airflow_server.get_run(DAG, run1) or {}).get("state") == "running",
            120,
            interval=0.5,
            what="the first run to start (and hang)",
        )
        # While it hangs, the model is held: a drifted batch is suppressed.
        drop(tmp_path / "incoming", during, frame(300, seed=62, shift=2.0))
        wait_for(lambda: len(_decisions(state)) >= 2, 60, what="the second decision")
        assert _decisions(state)[1] == (during, "suppressed_active_run")

        # Airflow's scheduler fails the run once its dagrun_timeout (15 s) has passed.
        wait_for(
            lambda: _run_state(state, run1) == "failed", 180, interval=0.5, what="run 1 failed"
        )
        assert airflow_server.get_run(DAG, run1)["state"] == "failed"
        # On-call hears of it.
        mails = wait_for(
            lambda: [
                m
                for m in smtp_server.parsed()
                if m["X-Watcher-Alert"] == "retrain_failed" and run1 in m.as_string()
            ],
            60,
            what="the retrain_failed mail",
        )
        assert len(mails) == 1

        # The model is free: the next drifted batch triggers a new run that Airflow accepts.
        drop(tmp_path / "incoming", after, frame(300, seed=63, shift=2.0))
        run2 = run_id_for("m", after)
        wait_for(lambda: airflow_server.get_run(DAG, run2), 60, what="run 2 in Airflow")
        assert _decisions(state)[2] == (after, "triggered")
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()[-3000:]
