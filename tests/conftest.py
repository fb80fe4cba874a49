"""Shared fixtures. Each area keeps its fixtures in a plugin module listed here."""

from __future__ import annotations

import os

# No test may leak to the developer's Airflow, SMTP or state by accident.
os.environ.pop("AIRFLOW_HOME", None)

pytest_plugins: list[str] = [
    "fixtures_airflow",
    "fixtures_smtp",
    "fixtures_dashboards",
    "fixtures_postgres",
    "fixtures_retrain",
    "fixtures_state",
    "fixtures_mlflow",
    "fixtures_celery",
]
