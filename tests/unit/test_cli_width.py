"""The CLI's tables piped into a file or CI's log: full cells, not rich's 80 columns."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from watcher import backtest_report as report
from watcher import cli
from watcher.backtest import PolicyResult


def _result(name: str, kind: str, runs: int, every: int | None = None) -> PolicyResult:
    r = PolicyResult(name, kind, every, "mae")  # type: ignore[arg-type]
    r.period_errors = [30.0 + runs * 0.01 + i % 3 for i in range(20)]
    r.period_rows = [100] * 20
    r.runs = runs
    r.phase = 0 if kind == "schedule" else None
    return r


def _rendered(width: int) -> str:
    results = [
        _result("never", "never", 0),
        _result("every period", "schedule", 20, 1),
        _result("every 2 periods", "schedule", 10, 2),
        _result("policy: performance+max_age", "policy", 8),
    ]
    for r in results:
        r.phases = [r] if r.kind == "schedule" else []
    buf = io.StringIO()
    Console(file=buf, width=width).print(report.table(results, "bikeshare", None))
    return buf.getvalue()


def test_the_backtest_table_is_whole_at_the_piped_width() -> None:
    assert "…" in _rendered(80)  # what a pipe used to get
    text = _rendered(cli.PIPED_WIDTH)
    assert "…" not in text
    assert "policy: performance+max_age" in text


def test_piped_output_is_wide_unless_columns_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())  # not a terminal
    assert cli._piped_width() == cli.PIPED_WIDTH
    monkeypatch.setenv("COLUMNS", "100")
    assert cli._piped_width() is None
