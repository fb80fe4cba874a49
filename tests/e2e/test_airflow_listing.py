"""The test helpers' view of Airflow sees every run, however many the session has made.

Airflow 3.3.2 caps a listing's `limit` at `[api] maximum_page_limit` (100) and lists the
oldest first. The helpers asked for `limit=1000` and believed they had everything, so once
a session had made more than 100 runs of `retrain_test` a test counting its own new runs
found none (stop 24's CI: the replicas test timed out "waiting for a DAG run per model"
though the runs were in Airflow). This test makes more than a page of runs of the paused
DAG (they stay queued and cost nothing) and expects to see the newest.
"""

from __future__ import annotations

import uuid

import pytest
from fixtures_airflow import AirflowServer

pytestmark = pytest.mark.airflow

DAG = "retrain_paused"
PAGE = 100  # Airflow's default [api] maximum_page_limit


def test_list_runs_sees_past_the_api_page_limit(airflow_server: AirflowServer) -> None:
    airflow_server.set_paused(DAG, True)
    tag = uuid.uuid4().hex[:8]
    made: list[str] = []
    try:
        for i in range(PAGE + 5):
            run_id = f"listing_{tag}_{i:03d}"
            status, body = airflow_server.api(
                "POST", f"/dags/{DAG}/dagRuns", {"dag_run_id": run_id, "logical_date": None}
            )
            assert status == 200, body
            made.append(run_id)
        # One page really is capped, or this test would prove nothing about paging.
        status, body = airflow_server.api("GET", f"/dags/{DAG}/dagRuns?limit=1000")
        assert status == 200, body
        assert len(body["dag_runs"]) == PAGE < body["total_entries"]

        seen = {str(r["dag_run_id"]) for r in airflow_server.list_runs(DAG)}
        assert set(made) <= seen, sorted(set(made) - seen)[:5]
    finally:
        for run_id in made:
            airflow_server.api("DELETE", f"/dags/{DAG}/dagRuns/{run_id}")
    assert not any(
        str(r["dag_run_id"]).startswith(f"listing_{tag}") for r in airflow_server.list_runs(DAG)
    )
