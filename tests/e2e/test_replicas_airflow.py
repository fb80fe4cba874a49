"""Replicas against the session's real Airflow 3.3.2 and the real PostgreSQL: three
`watcher run` share 10 models whose drift triggers retrains, while replicas are killed
(SIGKILL) and restarted; every model's retrain arrives in Airflow as exactly one DAG run,
and the run tracker (one replica's duty) follows them to their end."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from fixtures_airflow import AirflowServer
from fixtures_state import pg_backend
from replicas_support import Fleet, drop_wave, fleet_config, model_name, wait_finished
from support import wait_for

from watcher.config import toml_value

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]

MODELS = 10
WAVES = 4  # clean, drift, drift (the retrain), clean
KILLS = 10  # as the issue asks: at least ten kills while triggers are in flight
DAG = "retrain_test"


def test_three_replicas_killed_and_restarted_trigger_each_retrain_once(
    tmp_path: Path, state_pg_database: str, airflow_server: AirflowServer
) -> None:
    backend = pg_backend(state_pg_database)
    assert backend.dsn is not None
    tag = f"_{uuid.uuid4().hex[:8]}"  # run ids derive from model + batch: unique per test
    airflow = airflow_server.airflow_config(poll_interval_seconds=0.5, request_timeout_seconds=30.0)
    cfg = fleet_config(
        tmp_path,
        backend.dsn,
        MODELS,
        extra_top="\n[airflow]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in airflow.items()),
        model_extra=f'retrain = {{ dag_id = "{DAG}" }}',
    )
    fleet = Fleet(cfg, tmp_path)
    store = backend.open()
    rng = random.Random(7)
    kills = 0
    try:
        for i in range(3):
            fleet.start(i)
        wait_for(lambda: len(store.live_leases()) >= MODELS, timeout=90, what="models owned")
        for wave in range(WAVES):
            drop_wave(tmp_path, MODELS, wave, tag=tag)
            for _ in range(3):
                time.sleep(rng.uniform(0.5, 2.0))
                if kills < KILLS:
                    victim = rng.randrange(3)
                    fleet.kill(victim)
                    kills += 1
                    fleet.start(victim)
        assert kills == KILLS
        assert wait_finished(store, MODELS * WAVES, timeout=240) == MODELS * WAVES, fleet.logs()

        def ours() -> list[dict[str, object]]:
            return [r for r in airflow_server.list_runs(DAG) if tag in str(r["dag_run_id"])]

        listing_timeouts = 0

        def count_ours() -> int:
            nonlocal listing_timeouts
            try:
                return len(ours())
            except TimeoutError:  # the one api-server worker is busy running DAGs: ask again
                listing_timeouts += 1
                return 0

        def everything() -> str:
            try:
                return str(len(airflow_server.list_runs(DAG)))
            except TimeoutError:
                return "?"

        try:
            wait_for(lambda: count_ours() >= MODELS, timeout=180, what="a DAG run per model")
        except AssertionError as exc:  # say where the missing runs are: CI keeps nothing else
            triggers = [
                {k: i[k] for k in ("key", "status", "attempts", "last_error")}
                for i in store.outbox_items()
                if i["kind"] == "trigger"
            ]
            raise AssertionError(
                f"{exc}: {count_ours()} of ours in Airflow, {listing_timeouts} listings "
                "timed out "
                f"({everything()} runs of {DAG} in all); "
                f"triggers in the outbox: {triggers}\n"
                f"api-server: {airflow_server.log_tail('api-server')}\n"
                f"scheduler: {airflow_server.log_tail('scheduler')}\n{fleet.logs()}"
            ) from None
        # The outbox drained: every trigger delivered (none left to deliver twice later).
        wait_for(
            lambda: store.pending_counts()["trigger"] == 0, timeout=120, what="triggers delivered"
        )
        runs = ours()
        ids = Counter(str(r["dag_run_id"]) for r in runs)
        models = Counter(str(r["dag_run_id"]).split("__")[1] for r in runs)
        print(
            f"\nreplicas + Airflow: {kills} kills, {fleet.started} starts; {len(runs)} DAG runs "
            f"for {MODELS} models, {sum(n - 1 for n in ids.values())} duplicate run ids; "
            f"{len(airflow_server.list_runs(DAG))} runs of {DAG} in this Airflow"
        )
        assert models == {model_name(i): 1 for i in range(MODELS)}, models
        assert all(n == 1 for n in ids.values())
        # The run tracker (on the replica holding the duties) sees every run to its end.
        wait_for(
            lambda: (
                all(
                    r.state in ("success", "failed")
                    for m in range(MODELS)
                    for r in store.runs(model_name(m))
                )
                and sum(len(store.runs(model_name(m))) for m in range(MODELS)) == MODELS
            ),
            timeout=300,
            what="every run tracked to its end",
        )
        assert fleet.stop_all_cleanly() == 3
    finally:
        fleet.kill_all()
        store.close()
