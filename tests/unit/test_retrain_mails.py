"""The retraining DAG's failure and retry mails, rendered by watcher's one alert renderer.
No Airflow here: the DAG's callback only passes the task's context to this function."""

from __future__ import annotations

from pathlib import Path

from watcher.config import AirflowConfig, AlertsConfig, Settings, load_config
from watcher.retrain.mails import NO_ERROR, task_problem_mail

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bikeshare" / "watcher.toml"


def settings() -> Settings:
    """The bundled example (model "bikeshare") with a password to mask and known URLs."""
    return load_config(EXAMPLE).model_copy(
        update={
            "airflow": AirflowConfig(url="http://airflow.example:8080", password="s3cret-pw"),
            "alerts": AlertsConfig(grafana_url="http://grafana.example:3000"),
        }
    )


def test_a_task_that_fails_for_good_is_a_critical_alert_with_the_error_and_the_run() -> None:
    error = FileNotFoundError("source folder /data/in does not exist")

    subject, html = task_problem_mail(
        settings(),
        "bikeshare",
        task_id="ingest",
        run_id="manual__2026-01-01",
        try_number=3,
        error=error,
        will_retry=False,
    )

    assert subject == "[watcher] CRITICAL bikeshare: retrain task ingest failed"
    assert "Retrain task failed" in html  # the kind's headline and advice
    assert "fails and the current model stays" in html
    assert "source folder /data/in does not exist" in html
    assert "Failed task" in html
    assert "ingest" in html
    assert "http://airflow.example:8080/dags/retrain_bikeshare/runs/manual__2026-01-01" in html
    assert "http://grafana.example:3000/d/watcher-operations" in html


def test_a_retry_is_a_warning_and_says_it_will_be_retried() -> None:
    subject, html = task_problem_mail(
        settings(),
        "bikeshare",
        task_id="validate",
        run_id="r1",
        try_number=1,
        error=RuntimeError("connection reset"),
        will_retry=True,
    )

    assert subject == "[watcher] WARNING bikeshare: retrain task validate will be retried"
    assert "failed" not in subject
    assert "Retrain task will be retried" in html
    assert "connection reset" in html


def test_no_exception_in_the_context_points_at_the_task_log() -> None:
    _, html = task_problem_mail(
        settings(),
        "bikeshare",
        task_id="train",
        run_id="r1",
        try_number=1,
        error=None,
        will_retry=False,
    )

    assert NO_ERROR in html


def test_configured_secrets_in_the_error_are_masked() -> None:
    _, html = task_problem_mail(
        settings(),
        "bikeshare",
        task_id="ingest",
        run_id="r1",
        try_number=1,
        error=RuntimeError("login failed with password s3cret-pw"),
        will_retry=False,
    )

    assert "login failed with password" in html
    assert "s3cret-pw" not in html
