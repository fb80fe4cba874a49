"""The local Airflow (demo and tests) on SQLite: a DAG parse that waits out SQLite's busy
timeout must not be killed and its DAG deactivated as stale (triggers then get 404)."""

from __future__ import annotations

import runpy
from pathlib import Path

from watcher.dev.localservices import airflow_env


def test_the_dag_processor_outwaits_the_sqlite_busy_timeout(tmp_path: Path) -> None:
    env = airflow_env(tmp_path / "home", 18080, tmp_path / "dags")
    module = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"].split(".")[0]
    written = runpy.run_path(str(tmp_path / "home" / "config" / f"{module}.py"))
    busy = written["CONNECT_ARGS"]["timeout"]
    parse = int(env["AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT"])
    stale = int(env["AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD"])
    assert busy >= 60  # Python's default 5 s let the scheduler die of "database is locked"
    assert parse >= 2 * busy
    assert stale > parse
