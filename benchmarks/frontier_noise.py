"""Is a backtest's frontier signal or noise? Paired period bootstrap and staleness curve.

    .venv/bin/python benchmarks/frontier_noise.py [--only flights] [--fast] [--draws 2000]

Over the cached matrices of `benchmarks/policy_matrix.py` (DAG steps, or `--fast`):

- every schedule's and the examples' policy's loss, with a 90 % interval of its
  difference from the weekly schedule and of the policy's distance to the frontier, from
  resampling the served periods with replacement (the same draw for every policy:
  `watcher.backtest_report.period_bootstrap`, which `watcher backtest` also uses), each
  schedule with its phase mean and the distance to the phase-averaged frontier beside
  the single-phase one (`watcher.backtest_report.distances`);
- with `--log-loss` (classification, DAG steps): the same, each model judged by log loss;
- the staleness curve: how much worse a model trained a periods before the freshest one
  is, on the same periods (mean over periods of loss[t - a][t] - loss[t - 1][t], with a
  90 % interval over periods). Retraining can only pay where this curve rises.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import policy_matrix as pm

from watcher import backtest_report as report
from watcher.backtest import PolicyResult
from watcher.config import load_config
from watcher.signals import loss_of

# The caches were pickled by policy_matrix.py run as a script: its Matrix is __main__'s.
sys.modules["__main__"].Matrix = pm.Matrix  # type: ignore[attr-defined]


def _result(m: pm.Matrix, name: str, kind: str, every: int | None, pol: pm.Policy) -> PolicyResult:
    runs, deployed, errs, rows = pm.serve(m, pol)
    r = PolicyResult(name, kind, every, m.metric)  # type: ignore[arg-type]
    r.period_errors = [loss_of(m.metric, e) for e in errs]  # loss back to the metric
    r.period_rows = [int(x) for x in rows]
    r.runs, r.deployed = runs, deployed
    return r


def results_of(m: pm.Matrix, policy_cfg: object) -> list[PolicyResult]:
    """Never, the schedules (phase 0, each carrying all its phases, as `watcher backtest`)
    and the examples' policy over the matrix, as a backtest's."""
    out = [_result(m, "never", "never", None, pm.never())]
    for k in (1, 2, 3, 4, 6, 8):
        phases = [_result(m, f"every {k}", "schedule", k, pm.phased(m, k, j)) for j in range(k)]
        for j, r in enumerate(phases):
            r.phase = j
        phases[0].phases = phases
        out.append(phases[0])
    perf_kw = policy_cfg.performance.model_dump()  # type: ignore[attr-defined]
    age = policy_cfg.max_age_batches  # type: ignore[attr-defined]
    out.append(_result(m, "examples' policy", "policy", None, pm.perf(age, **perf_kw)))
    return out


def log_loss_matrix(m: pm.Matrix, cache: Path) -> pm.Matrix:
    """The same runs and gate verdicts, each model's loss per period in log loss (a proper
    scoring rule: it sees a model's probabilities drift away from the week's delay rate,
    which a within-week ROC AUC, a ranking, cannot)."""
    import pickle

    from sklearn.metrics import log_loss

    _, model_cfg, history = pm.example_history(m.name)
    target = model_cfg.columns.target
    with pm.cache_path(cache, m.name, "trainings").open("rb") as fh:
        trainings = pickle.load(fh)  # noqa: S301 - policy_matrix.py's own cache
    served = history.frame[history.frame["_period"] >= history.skip]
    periods = served["_period"].to_numpy()
    labels = served[target]
    first = sorted(labels.unique())[0]
    shares = [
        (labels[(periods >= a) & (periods < a + 4)] == first).mean() for a in range(m.skip, m.n, 4)
    ]
    print(f"share of {first!r} per 4 periods: {min(shares):.1%} to {max(shares):.1%}")
    loss: dict[int, np.ndarray] = {}
    holdout: dict[int, float] = {}
    for w, run in trainings.items():
        out = np.full(m.n, np.nan)
        if run.ok:
            classes = list(run.final.classes_)
            proba = run.final.predict_proba(served[run.features])
            for t in range(m.skip, m.n):
                sel = periods == t
                out[t] = log_loss(served[target][sel], proba[sel], labels=classes)
            held = run.challenger.predict_proba(run.holdout[run.features])
            holdout[w] = float(log_loss(run.holdout[target], held, labels=classes))
        loss[w] = out
    return pm.Matrix(m.name, "log_loss", m.skip, m.n, m.delay, m.rows, loss, holdout, m.ok, m.gate)


def staleness(
    m: pm.Matrix, ages: range, draws: int, seed: int
) -> list[tuple[int, float, float, float, int]]:
    """(age, mean extra loss, 90 % low, high, periods) of a model trained `age` periods
    before the freshest one (trained after t - 1 - delay... here simply after t - 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for a in ages:
        diffs = []
        for t in range(m.skip, m.n):
            old, fresh = t - a, t - 1
            if old < m.skip or fresh not in m.loss or old not in m.loss:
                continue
            d = m.loss[old][t] - m.loss[fresh][t]
            if np.isfinite(d):
                diffs.append(d)
        if len(diffs) < 3:
            continue
        x = np.asarray(diffs)
        boots = [x[rng.integers(0, len(x), len(x))].mean() for _ in range(draws)]
        lo, hi = np.quantile(boots, [0.05, 0.95])
        out.append((a, float(x.mean()), float(lo), float(hi), len(x)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=pm.ROOT / ".cache/policy_matrix")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--log-loss", action="store_true", help="classification: judge by log loss")
    ap.add_argument("--window", help="as policy_matrix.py's")
    ap.add_argument("--deploy-all", action="store_true", help="as policy_matrix.py's")
    args = ap.parse_args()
    if args.window:
        pm.OVERRIDE["window"] = args.window
    if args.deploy_all:
        pm.OVERRIDE["deploy_all"] = "1"
    for name in args.only or list(pm.DATASETS):
        m = pm.build_fast(name, args.cache) if args.fast else pm.build(name, args.cache, args.jobs)
        if args.log_loss and m.metric in ("roc_auc", "accuracy", "f1"):
            m = log_loss_matrix(m, args.cache)
        settings = load_config(pm.DATASETS[name][1])
        policy_cfg = next(iter(settings.models.values())).policy
        results = results_of(m, policy_cfg)
        boot = report.period_bootstrap(results, draws=args.draws, seed=0)
        weekly = 1
        print(f"== {name} ({m.metric}; loss = {'1 - ' if m.metric == 'roc_auc' else ''}{m.metric})")
        print(
            f"rows per served period: min {min(results[0].period_rows)}, "
            f"median {int(np.median(results[0].period_rows))}, max {max(results[0].period_rows)}"
        )
        # Distances to the phase-averaged frontier (a schedule: its phase mean's) and to the
        # single-phase one, as `watcher backtest` prints them (the same bootstrap, seed 0).
        for i, (r, d) in enumerate(zip(results, report.distances(results), strict=True)):
            lo, hi = report.difference_interval(boot, i, weekly)
            mean = report.phase_mean(r)
            print(
                f"{r.name:18s} runs {r.runs:3g} dep {r.deployed:3g} {m.metric} {r.error:.4f} "
                f"(phase mean {mean.runs:.3g} runs, {mean.error:.4f}) "
                f"loss-weekly {r.loss - results[weekly].loss:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                f"vs frontier {d.gap:+.4f} [{d.interval[0]:+.4f}, {d.interval[1]:+.4f}] "
                f"vs 1-phase frontier {d.single:+.4f} "
                f"[{d.single_interval[0]:+.4f}, {d.single_interval[1]:+.4f}]"
            )
        print("staleness: extra loss of a model trained a periods before the freshest")
        for a, mean, lo, hi, k in staleness(m, range(2, 21, 2), args.draws, 0):
            print(f"  age {a:2d}: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] over {k} periods")


if __name__ == "__main__":
    main()
