"""A retrain DAG whose task hangs, with its timeouts taken from a watcher RetrainConfig the
way retrain_dags/retrain.py takes them: the run must be failed by `dagrun_timeout`.

Added to the session's Airflow by tests/e2e/test_dag_timeout.py only (not in tests/airflow_dags,
so no other test sees it). The task's own execution_timeout is longer than the run's, so
what ends the run is the run timeout, the one that frees a model whatever its tasks do.
"""

from __future__ import annotations

import time
from datetime import timedelta

from airflow.sdk import dag, task

from watcher.config import RetrainConfig

CFG = RetrainConfig(dagrun_timeout_seconds=15, task_timeout_seconds=600, retries=0)


@task
def hang() -> None:
    time.sleep(3600)  # a stuck download, a deadlocked training job...


@dag(
    dag_id="retrain_hangs",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    dagrun_timeout=timedelta(seconds=CFG.dagrun_timeout_seconds),
    default_args={
        "retries": CFG.retries,
        "execution_timeout": timedelta(seconds=CFG.task_timeout_seconds),
    },
    tags=["watcher-test"],
)
def retrain_hangs() -> None:
    hang()


retrain_hangs()
