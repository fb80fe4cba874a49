"""One set of performance-signal parameters on both examples: which rules are on or below
both schedules' frontiers (phase-averaged, as `watcher backtest` headlines them; the
single-phase distance printed beside), and which meet Bikeshare's target too.

    .venv/bin/python benchmarks/policy_joint.py [--bikeshare FILE] [--flights FILE]

FILE is a matrix cached by `benchmarks/policy_matrix.py` under `.cache/policy_matrix/`
(default: Bikeshare's with the example's config and the gate, and flights' from
`policy_matrix.py --only flights --window expanding --deploy-all`, as `pm.cache_path`
names them: the example's every-labelled-row window, every challenger
deployed, as the gate did in every schedule of the real backtest). Rules: CUSUM, cost and
Page-Hinkley, baselines holdout / first period / min, floors (`max_age_batches`) of none
and 2-6 periods, with the same parameters on both data sets; and plain schedules.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import policy_matrix as pm

from watcher.backtest_report import envelope

# The caches were pickled by policy_matrix.py run as a script: its Matrix is __main__'s.
sys.modules["__main__"].Matrix = pm.Matrix  # type: ignore[attr-defined]

HIGHER = ("roc_auc", "accuracy", "f1", "r2")
Gap = Callable[[int, float], float]


def _envelope(points: list[tuple[float, float]]) -> Callable[[float], float]:
    """runs -> the lower envelope of (runs, loss) points (the backtest's), interpolated."""
    xs, ys = envelope(points)
    return lambda runs: float(np.interp(runs, xs, ys))


def gap_to_frontier(m: pm.Matrix) -> tuple[Gap, Gap]:
    """(phase-averaged, single-phase) distances, (runs, value) -> loss minus the schedules'
    envelope at those runs. The phase-averaged frontier counts each schedule at the mean
    over its k phases, as `watcher backtest` headlines it (a cron job's phase is arbitrary);
    the single-phase one at phase 0."""
    higher = m.metric in HIGHER

    def loss(val: float) -> float:
        return 1 - val if higher else val

    runs0, _, val0 = pm.simulate(m, pm.never())
    single: list[tuple[float, float]] = [(runs0, loss(val0))]
    mean: list[tuple[float, float]] = [(runs0, loss(val0))]
    for k in (1, 2, 3, 4, 6, 8):
        phases = [pm.simulate(m, pm.phased(m, k, ph)) for ph in range(k)]
        single.append((phases[0][0], loss(phases[0][2])))
        mean.append(
            (
                float(np.mean([p[0] for p in phases])),
                float(np.mean([loss(p[2]) for p in phases])),
            )
        )
    env_mean, env_single = _envelope(mean), _envelope(single)
    return (
        lambda runs, val: loss(val) - env_mean(runs),
        lambda runs, val: loss(val) - env_single(runs),
    )


def rules() -> list[tuple[str, pm.Policy]]:
    out: list[tuple[str, pm.Policy]] = []
    grid = (
        ("cusum", (0.0, 0.05, 0.1, 0.2), (0.1, 0.25, 0.5, 1.0)),
        ("cost", (0.0,), (0.1, 0.25, 0.5, 1.0, 1.5, 2.0)),
        ("page_hinkley", (0.0, 0.05, 0.1), (0.1, 0.25, 0.5, 1.0)),
    )
    for det, tols, thrs in grid:
        for base in ("holdout", "first_period", "min"):
            for tol in tols:
                for thr in thrs:
                    for age in (None, 2, 3, 4, 5, 6):
                        kw = {"detector": det, "tolerance": tol, "threshold": thr}
                        label = f"{det} {base} k={tol} h={thr} age={age}"
                        out.append((label, pm.perf(age, baseline=base, **kw)))
    out += [(f"schedule {k}", pm.schedule(k)) for k in (2, 3, 4, 5, 6)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    cache = pm.ROOT / ".cache/policy_matrix"
    flights = {"window": "expanding", "deploy_all": "1"}
    ap.add_argument("--bikeshare", type=Path, default=pm.cache_path(cache, "bikeshare", "matrix"))
    ap.add_argument(
        "--flights", type=Path, default=pm.cache_path(cache, "flights", "matrix", flights)
    )
    ap.add_argument("--mae", type=float, default=34.2, help="Bikeshare's target MAE")
    ap.add_argument("--runs", type=int, default=15, help="... with at most this many runs")
    args = ap.parse_args()
    mats: dict[str, pm.Matrix] = {}
    for name in ("bikeshare", "flights"):
        with getattr(args, name).open("rb") as fh:
            mats[name] = pickle.load(fh)  # noqa: S301 - policy_matrix.py's own cache
    gaps = {k: gap_to_frontier(m) for k, m in mats.items()}
    both, target = 0, 0
    cands = rules()
    for label, policy in cands:
        cells, below = [], True
        for name, m in mats.items():
            runs, _, val = pm.simulate(m, policy)
            gap, single = (g(runs, val) for g in gaps[name])
            below &= gap <= 1e-9
            cells.append(
                f"{name} {runs:3d} runs {m.metric} {val:.4f} vs frontier {gap:+.4f}"
                f" (single phase {single:+.4f})"
            )
            if name == "bikeshare":
                meets = runs <= args.runs and val <= args.mae
        both += below
        target += below and meets
        if below:
            print(f"{label:42s} " + " | ".join(cells) + (" | TARGET" if meets else ""))
    print(
        f"{both} of {len(cands)} rules on or below both frontiers; {target} of them with "
        f"Bikeshare MAE <= {args.mae} in <= {args.runs} runs"
    )


if __name__ == "__main__":
    main()
