"""Shared fixtures. Each area keeps its fixtures in a plugin module listed here.

The tests sit in three folders by what they need, and each test gets its folder's marker
(registered in pyproject.toml), so `pytest tests/unit` or `pytest -m "not e2e"` picks a cost:
- unit/: no Airflow, PostgreSQL, network or daemon process; each file runs in seconds.
- integration/: real services or processes: PostgreSQL, aiosmtpd, Prometheus, Alertmanager,
  an MLflow server, `watcher run` and the CLI as subprocesses, evidently as the oracle.
- e2e/: a real Airflow (LocalExecutor or Celery on Redis), the demo, chaos.
Helpers and fixture plugins stay here in tests/: pytest puts this folder (the root
conftest's) on sys.path, so `from support import ...` works from every folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may leak to the developer's Airflow, SMTP or state by accident.
os.environ.pop("AIRFLOW_HOME", None)

# fixtures_postgres first: fixtures_airflow and fixtures_state import it, and pytest only
# rewrites the asserts of a plugin it imports itself.
pytest_plugins: list[str] = [
    "fixtures_postgres",
    "fixtures_airflow",
    "fixtures_smtp",
    "fixtures_dashboards",
    "fixtures_retrain",
    "fixtures_state",
    "fixtures_mlflow",
    "fixtures_celery",
]


TESTS = Path(__file__).resolve().parent
FOLDERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its folder; a test file outside the three folders is refused."""
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:  # not under tests/ (pytest given another path): no folder marker
            continue
        if folder not in FOLDERS:
            raise pytest.UsageError(
                f"{item.path} is in tests/ itself: move it into tests/unit, tests/integration "
                "or tests/e2e (see tests/conftest.py for which holds what)"
            )
        item.add_marker(getattr(pytest.mark, folder))
