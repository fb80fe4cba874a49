"""The retraining DAG under real Airflow 3.3.2: it parses, it runs, it retries, it mails.

Airflow runs in subprocesses (`airflow dags test` is `dag.test()`), against a migrated
SQLite AIRFLOW_HOME per session, so its global configuration stays out of this process.
Mails go to a real aiosmtpd server through the `smtp_default` connection.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures_retrain import DAGS, MODEL, AirflowHome, Workspace, smtp_connection, write_config

pytestmark = pytest.mark.slow

EXPECTED_ORDER = [
    "ingest",
    "validate",
    "engineer_features",
    "select_features",
    "tune_and_train",
    "evaluate",
    "gate",
    "deploy",
    "notify",
]

_DESCRIBE = textwrap.dedent(
    """
    import json
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=DAGS_FOLDER)
    out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
    for dag_id, dag in bag.dags.items():
        out["dags"][dag_id] = {
            "schedule": dag.schedule,
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "dagrun_timeout": dag.dagrun_timeout.total_seconds() if dag.dagrun_timeout else None,
            "doc_md": bool(dag.doc_md and "Retrain" in dag.doc_md),
            "params": {k: dag.params.get_param(k).schema for k in dag.params},
            "tasks": {
                t.task_id: {
                    "upstream": sorted(t.upstream_task_ids),
                    "retries": t.retries,
                    "retry_delay": t.retry_delay.total_seconds(),
                    "backoff": t.retry_exponential_backoff,
                    "max_retry_delay": t.max_retry_delay.total_seconds(),
                    "execution_timeout": (
                        t.execution_timeout.total_seconds() if t.execution_timeout else None
                    ),
                    "on_failure": [type(c).__name__ for c in t.on_failure_callback or []],
                    "on_retry": [type(c).__name__ for c in t.on_retry_callback or []],
                    "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
                }
                for t in dag.tasks
            },
            "order": [t.task_id for t in dag.topological_sort()]
            if hasattr(dag, "topological_sort") else None,
        }
    print("JSON" + json.dumps(out))
    """
)


def describe_dags(airflow_home: AirflowHome, config: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", f"DAGS_FOLDER = {str(DAGS)!r}\n" + _DESCRIBE],
        env=airflow_home.env(config),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("JSON")), None)
    assert line is not None, done.stdout[-2000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(line[4:])
    return result


def test_dagbag_has_one_retrain_dag_per_model_with_retries_and_mail_callbacks(
    airflow_home: AirflowHome, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        retries=3,
        retry_delay_seconds=30,
        dagrun_timeout_seconds=5400,
        task_timeout_seconds=900,
    )
    # A second model: the DAG file generates one DAG per configured model.
    text = config.read_text()
    second = text[text.index("[models.bikeshare") :].replace("models.bikeshare", "models.other")
    config.write_text(text + "\n" + second)

    described = describe_dags(airflow_home, config)

    assert described["errors"] == {}
    assert sorted(described["dags"]) == ["retrain_bikeshare", "retrain_other"]
    dag = described["dags"]["retrain_bikeshare"]
    assert dag["schedule"] is None
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    # A hung run is failed by the scheduler and frees the model (issue 16).
    assert dag["dagrun_timeout"] == 5400
    assert dag["doc_md"]
    for param in ("model", "reason", "batches", "window", "drift", "data", "margin"):
        assert param in dag["params"], param
    assert dag["params"]["margin"]["type"] == ["null", "number"]
    tasks = dag["tasks"]
    assert sorted(tasks) == sorted(EXPECTED_ORDER)
    for before, after in itertools.pairwise(EXPECTED_ORDER):
        assert tasks[after]["upstream"] == [before], after
    assert tasks["ingest"]["upstream"] == []
    assert tasks["notify"]["trigger_rule"] == "none_failed"  # runs after a skipped deploy
    for task_id, task in tasks.items():
        assert task["retries"] == 3, task_id
        assert task["retry_delay"] == 30
        assert task["backoff"] == 2.0
        assert task["max_retry_delay"] == 1800
        assert task["execution_timeout"] == 900, task_id
        # Failure and retry mails go through watcher's alert renderer (TaskMail).
        assert task["on_failure"] == ["TaskMail"], task_id
        assert task["on_retry"] == ["TaskMail"], task_id


def test_a_broken_config_is_an_import_error_not_a_silent_empty_folder(
    airflow_home: AirflowHome, tmp_path: Path
) -> None:
    config = tmp_path / "watcher.toml"
    config.write_text("[models.bikeshare.source]\nkind = 'directory'\n")  # no path

    described = describe_dags(airflow_home, config)

    assert described["dags"] == {}
    (error,) = described["errors"].values()
    assert "source.directory.path" in error or "path" in error


def test_dag_run_deploys_version_2_and_mails_the_metrics(
    airflow_home: AirflowHome,
    bikeshare_workspace: Callable[..., Workspace],
    smtp_server: Any,
) -> None:
    ws = bikeshare_workspace()
    conf = {"reason": "dataset drift in 2 batches", "batches": ["week-12.parquet"]}

    code, log = airflow_home.run(
        ws.config, conf, AIRFLOW_CONN_SMTP_DEFAULT=smtp_connection(smtp_server.port)
    )

    assert code == 0, log[-4000:]
    registry = ws.registry
    assert registry.production_version(MODEL) == "2"
    v2 = registry.get(MODEL, "2")
    assert v2.run_id is not None
    assert v2.run_id.startswith("manual__")
    assert v2.extra["decision"]["deploy"] is True
    assert v2.metrics["mae"] < v2.extra["decision"]["champion"]["mae"]
    record = registry.run_record(MODEL, v2.run_id)
    assert record is not None
    assert record["deployed"] is True
    assert record["version"] == "2"
    # The new reference is the training window: production weeks 9-12 with predictions.
    reference = registry.load_reference(MODEL, "2")
    assert {"prediction", "bikers", "temp", "ts", "id"} <= set(reference.columns)
    assert reference["ts"].min() >= v2.training_window[0]  # type: ignore[index]

    (mail,) = smtp_server.wait_for(1, timeout=30)
    message = mail.message
    assert message["Subject"].startswith(f"[watcher] INFO {MODEL}: version 2 deployed (mae ")
    body = message.get_body(("html",)).get_content()
    for expected in ("champion (v1)", "challenger", "rmse", "r2"):
        assert expected in body
    assert mail.rcpt_tos == ["oncall@example.org"]


def test_impossible_margin_ends_without_deploying_and_says_why(
    airflow_home: AirflowHome, bikeshare_workspace: Callable[..., Workspace]
) -> None:
    ws = bikeshare_workspace()

    # No smtp_default connection here: the end-of-run mail is skipped, the run succeeds.
    code, log = airflow_home.run(ws.config, {"margin": 1.0, "reason": "manual"})

    assert code == 0, log[-4000:]
    registry = ws.registry
    assert registry.production_version(MODEL) == "1"
    assert [v.version for v in registry.list_versions(MODEL)] == ["1"]
    runs = ws.settings.registry.path / MODEL / "runs"
    (record_file,) = (f for f in runs.glob("*.json") if f.name.startswith("manual__"))
    record = json.loads(record_file.read_text())
    assert record["deployed"] is False
    assert "does not beat champion v1" in record["reason"]
    assert "margin of 100.0%" in record["reason"]
    assert "not deployed: challenger mae" in log  # deploy skipped with the reason
    assert "no smtp_default connection; not mailing" in log


def test_a_task_that_fails_once_is_retried_and_the_run_succeeds(
    airflow_home: AirflowHome,
    bikeshare_workspace: Callable[..., Workspace],
    smtp_server: Any,
) -> None:
    # The batch folder is not there yet (a late mount, a slow copy): ingest fails, the
    # retry mail goes out, the folder appears, the retry succeeds.
    ws = bikeshare_workspace(source_missing=True, retries=2, retry_delay_seconds=5)
    proc = airflow_home.dags_test(
        ws.config, {}, AIRFLOW_CONN_SMTP_DEFAULT=smtp_connection(smtp_server.port)
    )
    try:
        (retry_mail,) = smtp_server.wait_for(1, timeout=240)
        shutil.copytree(ws.folder / "staged", ws.folder / "late")
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (ws.folder / "dags-test.log").read_text()

    assert code == 0, log[-4000:]
    assert (
        retry_mail.message["Subject"]
        == f"[watcher] WARNING {MODEL}: retrain task ingest will be retried"
    )
    retry_body = retry_mail.message.get_body(("html",)).get_content()
    assert "does not exist" in retry_body
    assert "Retrain task will be retried" in retry_body  # watcher's renderer, not a template
    assert ws.registry.production_version(MODEL) == "2"
    subjects = [m["Subject"] for m in smtp_server.parsed()]
    assert subjects[-1].startswith(f"[watcher] INFO {MODEL}: version 2 deployed")
    assert not any("failed" in s for s in subjects)


def test_a_task_that_always_fails_sends_a_failure_mail(
    airflow_home: AirflowHome,
    bikeshare_workspace: Callable[..., Workspace],
    smtp_server: Any,
) -> None:
    ws = bikeshare_workspace(source_missing=True, retries=0)
    started = time.monotonic()

    code, log = airflow_home.run(
        ws.config, {}, AIRFLOW_CONN_SMTP_DEFAULT=smtp_connection(smtp_server.port)
    )

    assert code != 0
    assert "DagRun failed" in log
    (mail,) = smtp_server.wait_for(1, timeout=30)
    assert mail.message["Subject"] == f"[watcher] CRITICAL {MODEL}: retrain task ingest failed"
    body = mail.message.get_body(("html",)).get_content()
    assert "Retrain task failed" in body
    assert "source folder" in body
    assert "does not exist" in body
    assert mail.rcpt_tos == ["oncall@example.org"]
    assert ws.registry.production_version(MODEL) == "1"
    assert time.monotonic() - started < 300


def test_bad_training_data_fails_at_once_without_retries(
    airflow_home: AirflowHome,
    bikeshare_workspace: Callable[..., Workspace],
    smtp_server: Any,
) -> None:
    # Retrying cannot create labelled rows: validate fails on its first try, mails why.
    ws = bikeshare_workspace(retries=2, retry_delay_seconds=1, min_rows=100_000)

    code, log = airflow_home.run(
        ws.config, {}, AIRFLOW_CONN_SMTP_DEFAULT=smtp_connection(smtp_server.port)
    )

    assert code != 0
    (mail,) = smtp_server.wait_for(1, timeout=30)
    assert mail.message["Subject"] == f"[watcher] CRITICAL {MODEL}: retrain task validate failed"
    body = mail.message.get_body(("html",)).get_content()
    # Weeks 9-12 (657 rows) and the 1,268 rows of weeks 1-8 that version 1 was trained on.
    assert "too few rows: 1925 labelled rows, retrain.min_rows is 100000" in body
    assert len(smtp_server.messages) == 1  # no "will be retried" mail
    assert log.count("[DAG TEST] starting task_id=validate") == 1
    assert ws.registry.production_version(MODEL) == "1"
