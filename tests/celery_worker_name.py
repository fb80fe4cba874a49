"""Airflow's `[core] hostname_callable` for the test Celery workers.

Both test workers run on one host, so the task instances' `hostname` (what Airflow records
for the worker that ran a task) would be the same for both. Each worker is started with
TEST_CELERY_WORKER set to its own name and this callable reports it.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("TEST_CELERY_WORKER") or socket.getfqdn()
