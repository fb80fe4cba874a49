"""Evaluate retraining policies over a precomputed error matrix (fast policy design).

    .venv/bin/python benchmarks/policy_matrix.py [--cache .cache/policy_matrix] [--only NAME ...]
        [--fast] [--window expanding|last_days:N] [--deploy-all]

A model trained after period w is the same whatever policy asked for it (its window and
seed are fixed by the config), so the expensive part of a backtest is done once per data
set: every period's training run (`watcher.backtest.train_all`), then E[w][t], the error of
the model trained after w on labelled period t, and the gate's verdict for every
(challenger, champion) pair. Both are cached on disk (git-ignored `.cache/`), and any
policy is then simulated over them in milliseconds.

A cache file's name carries a hash of everything it was computed from (`cache_path`): the
data file, the config file's text, the `--window`/`--deploy-all` overrides, the source of
the code that trains, scores and gates (`CODE`), the versions of the numeric libraries and
`CACHE_VERSION`. Change any of them and the matrix is rebuilt, not silently reused (a cache
built with flights' old 12-week window was once read after the config moved to every row).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watcher import backtest as bt
from watcher.config import ModelConfig, PerformanceSignalConfig, load_config
from watcher.fileio import read_table
from watcher.retrain.bootstrap import load_example_data
from watcher.retrain.evaluation import (
    classification_metrics,
    limited_threads,
    regression_metrics,
    score,
)
from watcher.signals import PeriodLoss, loss_of, performance_metric, performance_reading

ROOT = Path(__file__).resolve().parent.parent
DATASETS = {
    "bikeshare": (
        ROOT / "examples/bikeshare/data/bikeshare_2011_hourly.csv",
        ROOT / "examples/bikeshare/watcher.toml",
    ),
    "flights": (
        ROOT / "examples/flights/data/flights_2013_sample.csv",
        ROOT / "examples/flights/watcher.toml",
    ),
}


# Bump when `build`, `build_fast` or `_trainings` compute something different.
CACHE_VERSION = 3
# What the cached trainings and matrices are computed by (files, or folders of *.py).
CODE = (
    "watcher/backtest.py",
    "watcher/backtest_history.py",
    "watcher/config.py",
    "watcher/retrain",
)


def cache_key(files: list[Path], params: dict[str, str]) -> str:
    """A short hash of the files' bytes (folders: every *.py under them, by relative
    path) and of `params`: equal only when every input is."""
    h = hashlib.sha256(json.dumps(sorted(params.items())).encode())
    for f in files:
        members = sorted(f.rglob("*.py")) if f.is_dir() else [f]
        for member in members:
            h.update(str(member.relative_to(f.parent) if f.is_dir() else member.name).encode())
            h.update(hashlib.sha256(member.read_bytes()).digest())
    return h.hexdigest()[:16]


def cache_path(cache: Path, name: str, kind: str, override: dict[str, str] | None = None) -> Path:
    """Where `kind` ("trainings", "matrix" or "fast") of data set `name` is cached, with the
    overrides in effect (default: the command line's), keyed by what it depends on."""
    import sklearn

    over = dict(OVERRIDE if override is None else override)
    if kind == "trainings":
        over.pop("deploy_all", None)  # the trainings are the same with or without the gate
    data, config = DATASETS[name]
    params = {
        "kind": kind,
        "version": str(CACHE_VERSION),
        "libraries": f"{sklearn.__version__} {np.__version__} {pd.__version__}",
        **{f"override.{k}": v for k, v in over.items()},
    }
    key = cache_key([data, config, *(ROOT / c for c in CODE)], params)
    return cache / f"{name}.{kind}.{key}.pkl"


# `--window`: the training window to try instead of the config's ("expanding", or
# "last_days:N"); `--deploy-all`: skip the gate (every challenger deployed). Both change
# the cache's keys (`cache_path`), so matrices of different settings live side by side.
OVERRIDE: dict[str, str] = {}


def example_history(name: str) -> tuple[Any, ModelConfig, Any]:
    """(settings, the model's config, its backtest history) of a bundled example."""
    data, config = DATASETS[name]
    settings = load_config(config)
    model = next(iter(settings.models))
    model_cfg = settings.models[model]
    if "window" in OVERRIDE:
        kind, _, size = OVERRIDE["window"].partition(":")
        update: dict[str, Any] = {"window": kind}
        if size:
            update["window_size"] = int(size)
        model_cfg = model_cfg.model_copy(
            update={"retrain": model_cfg.retrain.model_copy(update=update)}
        )
        settings = settings.model_copy(update={"models": {model: model_cfg}})
    frame = load_example_data(settings, model) if name == "bikeshare" else read_table(data)
    return settings, model_cfg, bt.load_history(frame, model_cfg, model)


@dataclass
class Matrix:
    """Everything a policy simulation needs, for one data set."""

    name: str
    metric: str
    skip: int
    n: int  # periods
    delay: int
    rows: np.ndarray  # rows per period
    loss: dict[int, np.ndarray]  # loss[w][t]: loss of the model trained after w on period t
    holdout: dict[int, float]  # loss of challenger w on its own holdout
    ok: dict[int, bool]
    gate: dict[tuple[int, int], bool]  # (challenger, champion) -> deploy
    # The same in the metric the performance signal follows (`performance_metric`:
    # accuracy for a roc_auc model without columns.score, as in the daemon); None: the
    # primary metric.
    followed: dict[int, np.ndarray] | None = None
    followed_holdout: dict[int, float] | None = None


def _trainings(name: str, cache: Path, jobs: int) -> tuple[Any, Any, Any]:
    settings, model_cfg, history = example_history(name)
    path = cache_path(cache, name, "trainings")
    if path.exists():
        with path.open("rb") as fh:
            return model_cfg, history, pickle.load(fh)  # noqa: S301 - our own cache, written below
    with (
        tempfile.TemporaryDirectory() as tmp,
        bt.pool_for(settings, history, jobs, Path(tmp)) as pool,
    ):
        trainings = bt.train_all(settings, history, pool, lambda: print(".", end="", flush=True))
    print()
    cache.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(trainings, fh)
    return model_cfg, history, trainings


def build_fast(name: str, cache: Path) -> Matrix:
    """The same matrix with a plain scikit-learn model instead of the DAG's steps: the
    estimator's defaults (HistGradientBoosting, categoricals one-hot), the config's window
    and label delay, version 1 on the first `skip` periods, the holdout figure from a fit on
    the older 80 % of the window; every challenger deployed (the examples' gate tolerates
    20 %). Minutes instead of an hour on a loaded machine, for exploring policies."""
    path = cache_path(cache, name, "fast")
    if path.exists():
        with path.open("rb") as fh:
            cached: Matrix = pickle.load(fh)  # noqa: S301 - our own cache, written below
        return cached
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    _, model_cfg, history = example_history(name)
    cfg, cols = model_cfg.retrain, model_cfg.columns
    f = history.frame.copy()
    feats = list(cols.numeric) + list(cols.categorical)
    # One-hot categoricals, as the examples' pipeline (`encoding = "onehot"`).
    X = pd.get_dummies(f[feats], columns=list(cols.categorical), dtype=float)
    y, per = f[cols.target], f["_period"].to_numpy()
    ts = f[cols.timestamp]
    n, metric = history.n_periods, cfg.primary_metric
    rows = np.bincount(per, minlength=n)
    reg = cfg.task == "regression"

    def fit(sel: np.ndarray) -> Any:
        est = (HistGradientBoostingRegressor if reg else HistGradientBoostingClassifier)(
            random_state=cfg.seed
        )
        return est.fit(X[sel], y[sel])

    followed_metric = performance_metric(model_cfg)

    def losses(est: Any, sel: np.ndarray) -> tuple[float, float]:
        """(primary, followed) losses of `est` on the rows `sel`."""
        pred = est.predict(X[sel])
        if reg:
            vals = regression_metrics(y[sel], pred)
        else:
            vals = classification_metrics(y[sel], pred, est.predict_proba(X[sel]))
        return loss_of(metric, vals[metric]), loss_of(followed_metric, vals[followed_metric])

    loss: dict[int, np.ndarray] = {}
    holdout: dict[int, float] = {}
    followed: dict[int, np.ndarray] = {}
    followed_holdout: dict[int, float] = {}
    ok: dict[int, bool] = {}
    keys = {-1: (history.skip - 1, 0)}
    keys.update({a: (a, history.label_delay) for a in range(history.skip, n - 1)})
    with limited_threads(1):
        for w, (after, delay) in keys.items():
            labelled = per <= after - delay
            if cfg.window == "last_days":  # counted back from the newest labelled row
                start = ts[labelled].max() - pd.Timedelta(days=cfg.window_size)
                labelled &= (ts > start).to_numpy()
            idx = np.flatnonzero(labelled)
            cut = idx[: int(len(idx) * (1 - cfg.holdout_share))]
            train = np.zeros(len(f), bool)
            train[cut] = True
            hold = labelled & ~train
            holdout[w], followed_holdout[w] = losses(fit(train), hold)
            final = fit(labelled)
            out, out_f = np.full(n, np.nan), np.full(n, np.nan)
            for t in range(history.skip, n):
                out[t], out_f[t] = losses(final, per == t)
            loss[w], followed[w], ok[w] = out, out_f, True
            print(".", end="", flush=True)
    print()
    gate = {(w, c): True for w in keys for c in keys if c < w}
    m = Matrix(name, metric, history.skip, n, history.label_delay, rows, loss, holdout, ok, gate)
    m.followed, m.followed_holdout = followed, followed_holdout
    cache.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(m, fh)
    return m


def build(name: str, cache: Path, jobs: int) -> Matrix:
    path = cache_path(cache, name, "matrix")
    if path.exists():
        with path.open("rb") as fh:
            cached: Matrix = pickle.load(fh)  # noqa: S301 - our own cache, written below
        return cached
    model_cfg, history, trainings = _trainings(name, cache, jobs)
    cfg, cols = model_cfg.retrain, model_cfg.columns
    n, metric = history.n_periods, cfg.primary_metric
    rows = np.array([len(history.rows(t)) for t in range(n)])
    served = history.frame[history.frame["_period"] >= history.skip]
    followed_metric = performance_metric(model_cfg)
    loss: dict[int, np.ndarray] = {}
    holdout: dict[int, float] = {}
    followed: dict[int, np.ndarray] = {}
    followed_holdout: dict[int, float] = {}
    ok: dict[int, bool] = {}
    with limited_threads(1):
        for w, run in trainings.items():
            ok[w] = run.ok
            out, out_f = np.full(n, np.nan), np.full(n, np.nan)
            if run.ok:
                assert run.holdout is not None
                pred = run.final.predict(served[run.features])
                proba = None
                if cfg.task == "classification":
                    proba = run.final.predict_proba(served[run.features])
                periods = served["_period"].to_numpy()
                y = served[cols.target].to_numpy()
                for t in range(history.skip, n):
                    sel = periods == t
                    if cfg.task == "regression":
                        vals = regression_metrics(y[sel], pred[sel])
                    else:
                        vals = classification_metrics(y[sel], pred[sel], proba[sel])
                    out[t] = loss_of(metric, vals[metric])
                    out_f[t] = loss_of(followed_metric, vals[followed_metric])
                h = score(
                    run.challenger, run.holdout[run.features], run.holdout[cols.target], cfg.task
                )
                holdout[w] = loss_of(metric, h[metric])
                followed_holdout[w] = loss_of(followed_metric, h[followed_metric])
            loss[w], followed[w] = out, out_f
        gate: dict[tuple[int, int], bool] = {}
        for w, run in trainings.items():
            if w < 0 or not run.ok:
                continue
            for c, champ in trainings.items():
                if c < w and champ.ok:
                    deploy_all = OVERRIDE.get("deploy_all")
                    gate[(w, c)] = bool(deploy_all) or bt._gate(run, champ, model_cfg).deploy
    m = Matrix(name, metric, history.skip, n, history.label_delay, rows, loss, holdout, ok, gate)
    m.followed, m.followed_holdout = followed, followed_holdout
    with path.open("wb") as fh:
        pickle.dump(m, fh)
    return m


# A policy: called after each served period with (period, state) -> retrain?
@dataclass
class State:
    period: int
    deployed_at: int  # period after which the serving model was deployed
    model: int  # key of the serving model
    baseline: float  # its holdout loss
    labelled: list[float]  # its losses on labelled periods since deployment, oldest first
    labelled_rows: list[int]
    since_run: int  # periods since the last run (deployed or not)


Policy = Callable[[State], bool]


def simulate(m: Matrix, policy: Policy) -> tuple[int, int, float]:
    """(runs, deployed, row-weighted loss) of a policy over the matrix."""
    runs, deployed, errs, weights = serve(m, policy)
    loss = float(np.average(errs, weights=weights))
    value = 1 - loss if m.metric in ("roc_auc", "accuracy", "f1", "r2") else loss
    return runs, deployed, value


def serve(m: Matrix, policy: Policy) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(runs, deployed, loss per served period, rows per served period) of a policy."""
    model, deployed_at, last_run = -1, m.skip - 1, m.skip - 1
    # The performance signal reads the metric the daemon follows (see Matrix.followed).
    seen = m.followed if m.followed is not None else m.loss
    seen_holdout = m.followed_holdout if m.followed_holdout is not None else m.holdout
    state = State(m.skip, deployed_at, model, seen_holdout[-1], [], [], 0)
    errs, weights, runs, deployed = [], [], 0, 0
    for t in range(m.skip, m.n):
        errs.append(m.loss[model][t])
        weights.append(m.rows[t])
        if t == m.n - 1:
            break
        known = t - m.delay
        if known > deployed_at and known >= m.skip:
            state.labelled.append(float(seen[model][known]))
            state.labelled_rows.append(int(m.rows[known]))
        state.period, state.since_run = t, t - last_run
        if not policy(state):
            continue
        runs += 1
        last_run = t
        if m.ok.get(t) and m.gate.get((t, model), False):
            deployed += 1
            model, deployed_at = t, t
            state = State(t, t, t, seen_holdout[t], [], [], 0)
    return runs, deployed, np.asarray(errs, dtype=float), np.asarray(weights, dtype=float)


def schedule(k: int) -> Policy:
    return lambda s: s.since_run >= k


def phased(m: Matrix, k: int, phase: int) -> Policy:
    """Every k periods at `phase`, as `watcher.backtest.schedule_fires` (phase 0 is
    `schedule(k)`): retrain after served periods phase, phase + k, ... (1-based)."""
    return lambda s: (s.period - m.skip + 1) % k == phase % k


def never() -> Policy:
    return lambda s: False


def perf(max_age: int | None = None, **kw: Any) -> Policy:
    """The shipped `performance` signal itself (watcher.signals), with an optional floor."""
    cfg = PerformanceSignalConfig(**kw)

    def p(s: State) -> bool:
        if max_age is not None and s.since_run >= max_age:
            return True
        periods = [PeriodLoss(x, r) for x, r in zip(s.labelled, s.labelled_rows, strict=True)]
        return performance_reading(s.baseline, periods, cfg).fired

    return p


def oracle(m: Matrix, max_runs: int) -> dict[int, float]:
    """The best possible error with at most k runs (k <= max_runs), in hindsight: a dynamic
    programme over the retrain periods, every challenger deployed. No causal policy can beat
    it; it says how much of a runs budget's possible gain a policy gets."""
    s, n = m.skip, m.n
    weighted = {a: m.rows * np.nan_to_num(m.loss[a]) for a in m.loss}
    cum = {a: np.concatenate([[0.0], np.cumsum(v)]) for a, v in weighted.items()}

    def served(a: int, b: int) -> float:  # model a serves periods max(a + 1, s)..b
        return float(cum[a][b + 1] - cum[a][max(a + 1, s)])

    keys = [w for w in range(s, n - 1) if m.ok.get(w)]
    best: dict[int, float] = {-1: 0.0}  # last retrain -> loss of the periods up to it
    total = m.rows[s:].sum()
    higher = m.metric in ("roc_auc", "accuracy", "f1", "r2")
    out: dict[int, float] = {}
    for k in range(max_runs + 1):
        if best:
            loss = min(v + served(a, n - 1) for a, v in best.items()) / total
            loss = min(loss, 1 - out[k - 1] if higher else out[k - 1]) if k else loss
            out[k] = float(1 - loss if higher else loss)
        best = {
            w: min(v + served(a, w) for a, v in best.items() if a < w)
            for w in keys
            if any(a < w for a in best)
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache/policy_matrix")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--fast", action="store_true", help="plain scikit-learn, see build_fast")
    ap.add_argument("--window", help='instead of the config\'s: "expanding" or "last_days:N"')
    ap.add_argument("--deploy-all", action="store_true", help="no gate: deploy every run")
    args = ap.parse_args()
    if args.window:
        OVERRIDE["window"] = args.window
    if args.deploy_all:
        OVERRIDE["deploy_all"] = "1"
    names = args.only or list(DATASETS)
    for name in names:
        m = build_fast(name, args.cache) if args.fast else build(name, args.cache, args.jobs)
        print(f"== {name} ({m.metric}), periods {m.n}, skip {m.skip}")
        cands: list[tuple[str, Policy]] = [("never", never())]
        cands += [(f"every {k}", schedule(k)) for k in (1, 2, 3, 4, 6, 8)]
        for base in ("holdout", "first_period", "min"):
            for det, tols, thrs in (
                ("cusum", (0.0, 0.05, 0.1, 0.2), (0.1, 0.25, 0.5, 1.0)),
                ("cost", (0.0,), (0.1, 0.25, 0.5, 1.0, 1.5, 2.0)),
            ):
                for tol in tols:
                    for thr in thrs:
                        for ma in (None, 3, 4, 6):
                            label = f"{det} {base} k={tol} h={thr} age={ma}"
                            pol = perf(
                                ma, detector=det, tolerance=tol, threshold=thr, baseline=base
                            )
                            cands.append((label, pol))
        results = [(label, *simulate(m, pol)) for label, pol in cands]
        higher = m.metric in ("roc_auc", "accuracy", "f1", "r2")
        pts: list[tuple[int, float]] = []
        for _, runs, _, val in sorted(results[:7], key=lambda r: r[1]):
            loss = 1 - val if higher else val
            if not pts or loss < pts[-1][1]:
                pts.append((runs, loss))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        for label, runs, dep, val in results:
            gap = (1 - val if higher else val) - float(np.interp(runs, xs, ys))
            head = f"{label:45s} runs {runs:3d} dep {dep:3d}"
            print(f"{head} {m.metric} {val:.4f} vs frontier {gap:+.4f}")
        best = oracle(m, 44)
        shown = ", ".join(f"{k}: {best[k]:.4f}" for k in (5, 8, 10, 11, 12, 14, 15, 22, 44))
        print(f"oracle, best possible with at most k runs in hindsight ({m.metric}): {shown}")


if __name__ == "__main__":
    main()
