"""Fixtures for the dashboards/Prometheus tests: the real promtool and prometheus binaries.

They come from the Debian package `prometheus` (`make system-deps` / `.ci/run` install it).
A missing binary fails the test with the install command instead of skipping it: the
rules and dashboards are only proven when these tools ran.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _binary(name: str) -> str:
    debian = Path("/usr/bin") / name
    found = shutil.which(name) or (str(debian) if debian.exists() else None)
    if found is None:
        pytest.fail(
            f"{name} is not installed: install the Debian package 'prometheus' "
            "(sudo apt-get install prometheus, or `make system-deps` as root)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _binary("prometheus")
