"""Bikeshare 2011 replayed week by week: what retraining buys, and at what cost.

A thin call of `watcher backtest` (watcher/backtest.py) on the bundled example: version 1
from the first 8 weeks, weeks 9-53 served by the model in production, labels one week
late; never, schedules every 1-8 weeks, the configured policy and each signal alone, every
run through the DAG's own steps and gate. Extra arguments go to `watcher backtest`.

    .venv/bin/python benchmarks/bench_retraining.py [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

from watcher.cli import app

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    app(["backtest", "--config", str(REPO / "examples/bikeshare/watcher.toml"), *args])


if __name__ == "__main__":
    main()
