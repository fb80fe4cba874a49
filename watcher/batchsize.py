"""Is a batch big enough for its drift tests to mean anything against this reference?

Distance tests (evidently's choice for a reference above 1,000 rows: wasserstein and
jensenshannon at 0.1) measure how far a batch's distribution is from the reference's, and
a small sample is far from any distribution by chance alone: a few dozen rows drawn from
the reference itself already exceed 0.1. p-value tests (ks, chisquare, z) account for the
sample size and hold their false-alarm rate at any size.

`noise_line` measures, once per reference, where that line is: it scores batches drawn
from the reference itself (no change at all) at growing sizes and returns the smallest
size at which fewer than `max_false_alarm` of them show dataset drift. Below that size a
"drift" verdict is noise, and the daemon says so (result, metric, log, `watcher status`)
and, with `[models.X.drift] small_batches = "pvalue"` (the default), scores such a batch
with p-value tests instead, which hold their false-alarm rate at any size. Measured on
Bikeshare (benchmarks/bench_small_batches.py): against the first 8 weeks (1,268 rows,
wasserstein/jensenshannon) no-change batches of 24/48/96/168/336 rows show dataset drift
100/100/78/22/0 % of the time; with ks/chisquare 0 % at every size, and the real next
weeks still drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from watcher.config import StatTest
from watcher.drift import engine

# Sizes tried, in rows; past the last one a reference is "too noisy at any size we try".
SIZES = (25, 50, 100, 200, 400, 800, 1600, 3200)
SAMPLES = 20  # no-change batches scored per size
MAX_FALSE_ALARM = 0.1  # share of no-change batches allowed to show dataset drift


@dataclass(frozen=True)
class NoiseLine:
    """Where dataset drift starts to mean something for one reference."""

    rows: int  # smallest batch size with few enough false alarms (0: every size tried is fine)
    false_alarm: dict[int, float]  # per size tried: share of no-change batches "drifted"
    tests: tuple[str, ...]  # the stat tests the reference's columns use

    def too_small(self, rows: int) -> bool:
        return rows < self.rows

    def sentence(self, rows: int) -> str:
        """The diagnosis, with the false-alarm rate measured nearest below `rows`."""
        tried = [n for n in self.false_alarm if n <= rows]
        alarms = (
            f" ({self.false_alarm[max(tried)]:.0%} of no-change batches of {max(tried)} rows did)"
            if tried
            else ""
        )
        return (
            f"a batch of {rows} rows is too small for {'/'.join(self.tests)} against this "
            f"reference: below {self.rows} rows, batches drawn from the reference itself show "
            f"dataset drift{alarms}"
        )


def noise_line(
    prepared: engine.PreparedReference,
    frame: pd.DataFrame,
    *,
    drift_share: float,
    num_stattest: StatTest | None = None,
    cat_stattest: StatTest | None = None,
    seed: int = 0,
) -> NoiseLine:
    """Score no-change batches (rows drawn from the reference) at growing sizes."""
    rng = np.random.default_rng(seed)
    alarms: dict[int, float] = {}
    tests: set[str] = set()
    line = 0
    for size in SIZES:
        if size >= len(frame):
            break
        drifted = 0
        for _ in range(SAMPLES):
            batch = frame.iloc[rng.choice(len(frame), size=size, replace=False)]
            result = engine.score(
                prepared,
                batch,
                drift_share=drift_share,
                num_stattest=num_stattest,
                cat_stattest=cat_stattest,
            )
            tests.update(c.stattest for c in result.columns.values())
            drifted += int(result.dataset_drift)
        alarms[size] = drifted / SAMPLES
        if alarms[size] < MAX_FALSE_ALARM:
            break
        line = size * 2 if size * 2 <= SIZES[-1] else size
    return NoiseLine(line, alarms, tuple(sorted(tests)))
