"""Test DAGs for watcher's Airflow tests: one that succeeds and echoes its conf, one that
fails, one paused at creation. Each finishes in seconds; none imports anything heavy."""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import dag, get_current_context, task

_COMMON: dict[str, Any] = {
    "catchup": False,
    "tags": ["watcher-test"],
    "default_args": {"retries": 0},
}


@task
def echo_conf() -> dict[str, Any]:
    """Print the trigger's conf and pass it on, so tests can see what arrived."""
    conf = dict(get_current_context()["dag_run"].conf or {})
    print("conf:", json.dumps(conf, sort_keys=True))
    return conf


@task
def fail() -> None:
    raise RuntimeError("retrain_fails always fails: it tests watcher's failure handling")


@dag(dag_id="retrain_test", schedule=None, is_paused_upon_creation=False, **_COMMON)
def retrain_test() -> None:
    echo_conf()


@dag(dag_id="retrain_fails", schedule=None, is_paused_upon_creation=False, **_COMMON)
def retrain_fails() -> None:
    echo_conf() >> fail()


@dag(dag_id="retrain_paused", schedule=None, is_paused_upon_creation=True, **_COMMON)
def retrain_paused() -> None:
    echo_conf()


retrain_test()
retrain_fails()
retrain_paused()
