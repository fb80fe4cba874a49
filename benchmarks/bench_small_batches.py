"""How small can a batch be before dataset drift is noise? Evidence for `min_batch_rows`.

    .venv/bin/python benchmarks/bench_small_batches.py

On the bundled Bikeshare 2011 data with the example config's columns and drift_share,
for two references (the first 5 weeks, 840 rows: evidently's rule picks ks/chisquare/z;
the first 8 weeks, 1344 rows: wasserstein/jensenshannon at 0.1), it scores 50 batches
drawn from the reference itself (no change at all) at each size and prints the share of
them that show dataset drift: a false alarm every time. Then the line
`watcher.batchsize.noise_line` measures for each (what the daemon uses), and the same
for real next weeks (weeks 9-12, 168 rows each, which do change: seasons move).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watcher.batchsize import noise_line
from watcher.config import load_config
from watcher.drift import engine
from watcher.retrain.bootstrap import load_example_data

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "bikeshare" / "watcher.toml"
SIZES = (24, 48, 96, 168, 336, 672)
SAMPLES = 50


def main() -> int:
    settings = load_config(CONFIG)
    model = settings.models["bikeshare"]
    data = load_example_data(settings, "bikeshare").sort_values("ts").reset_index(drop=True)
    specs, _ = engine.specs_from_config(model)
    week = (data["ts"] - data["ts"].min()).dt.days // 7
    share = model.drift.drift_share
    rng = np.random.default_rng(0)
    print(f"drift_share {share}; {SAMPLES} no-change batches per size; false-alarm share:")
    print(f"{'reference':<24}{'tests':<28}" + "".join(f"{n:>7}" for n in SIZES))
    for weeks, forced in ((5, None), (8, None), (8, ("ks", "chisquare"))):
        ref = data[week < weeks]
        prepared = engine.prepare_reference(ref, specs, version=f"{weeks}w")
        num, cat = forced or (None, None)
        tests: set[str] = set()
        row = []
        for n in SIZES:
            alarms = 0
            for _ in range(SAMPLES):
                batch = ref.iloc[rng.choice(len(ref), n, replace=False)]
                result = engine.score(
                    prepared, batch, drift_share=share, num_stattest=num, cat_stattest=cat
                )
                tests.update(c.stattest for c in result.columns.values())
                alarms += int(result.dataset_drift)
            row.append(alarms / SAMPLES)
        label = f"first {weeks} weeks ({len(ref)})"
        print(f"{label:<24}{'/'.join(sorted(tests)):<28}" + "".join(f"{a:>7.0%}" for a in row))
        started = time.perf_counter()
        line = noise_line(prepared, ref, drift_share=share, num_stattest=num, cat_stattest=cat)
        took = time.perf_counter() - started
        print(f"  noise_line: {line.rows} rows ({took:.1f} s); false alarms {line.false_alarm}")
        nxt = [
            engine.score(
                prepared, data[week == w], drift_share=share, num_stattest=num, cat_stattest=cat
            ).drift_share
            for w in range(weeks, weeks + 4)
        ]
        print(f"  the next 4 real weeks (168 rows): drift share {[round(s, 2) for s in nxt]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
