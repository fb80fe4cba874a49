"""The pipeline against its own default estimator retrained on the same schedules.

    .venv/bin/python benchmarks/plain_replay.py [--data bikeshare|flights] [--backtest FILE]

The replay of `watcher backtest` (weekly periods, version 1 on the first 8, labels one
period late) with a plain scikit-learn HistGradientBoosting at its defaults instead of the
DAG's steps: the example's features, categoricals one-hot (or native), no holdout, no
gate, no tuning, every run deployed. Two training windows of `window_size` days:

- `newest row`: counted back from the newest row of the window, as ingest did before. With
  labels one period late, 8 weeks hold 7 labelled weeks.
- `newest labelled row`: counted back from the newest labelled row, as ingest does now
  (`watcher.retrain.data.window_mask`): 8 labelled weeks.

Both use the example config's `window`: with `window = "expanding"` (flights) every
labelled row so far, and the two columns are the same.

`--backtest FILE` (a `watcher backtest --json` output for the same data) prints the
pipeline's runs and error next to the plain model's, measured on the same periods, and
the pipeline-minus-plain difference (in loss: MAE, or 1 - AUC) with a 90 % interval from
resampling the served periods with replacement, paired (the same draw for both:
`watcher.backtest_report.period_bootstrap`), against the plain model from the newest
labelled row (the window ingest uses). Each schedule at phase 0, as the backtest's table.
Seconds per data set: every plain model is fitted once and shared by the schedules.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_matrix import DATASETS, example_history

from watcher.backtest import PolicyResult
from watcher.backtest_report import period_bootstrap
from watcher.retrain.evaluation import classification_metrics, limited_threads, regression_metrics
from watcher.signals import loss_of

SCHEDULES = (1, 2, 3, 4, 6, 8)


Replay = tuple[str, dict[int, tuple[int, float]], dict[int, list[float]]]


def replay(name: str, *, anchor: str, encoding: str) -> Replay:
    """(metric, {every k: (runs, error)}, {every k: error per served period}) of the plain
    model over the backtest's periods."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    _, model_cfg, history = example_history(name)
    cfg, cols = model_cfg.retrain, model_cfg.columns
    f = history.frame
    feats = [*cols.numeric, *cols.categorical]
    kw: dict[str, Any] = {}
    if encoding == "onehot":
        X = pd.get_dummies(f[feats], columns=list(cols.categorical), dtype=float)
    else:
        X = f[feats].astype({c: "category" for c in cols.categorical})
        kw["categorical_features"] = "from_dtype"
    y, per, ts = f[cols.target], f["_period"].to_numpy(), f[cols.timestamp]
    n, skip, delay = history.n_periods, history.skip, history.label_delay
    metric = cfg.primary_metric
    reg = cfg.task == "regression"
    est_cls = HistGradientBoostingRegressor if reg else HistGradientBoostingClassifier

    def window(after: int, lag: int) -> np.ndarray:
        sel = per <= after - lag
        if cfg.window == "last_days":
            end = ts[per <= after].max() if anchor == "newest row" else ts[sel].max()
            sel &= (ts > end - pd.Timedelta(days=cfg.window_size)).to_numpy()
        return sel

    def error(est: Any, t: int) -> float:
        sel = per == t
        pred = est.predict(X[sel])
        if reg:
            return regression_metrics(y[sel], pred)[metric]
        return classification_metrics(y[sel], pred, est.predict_proba(X[sel]))[metric]

    rows = np.bincount(per, minlength=n)
    errors: dict[int, list[float]] = {}
    with limited_threads(1):
        for w in (-1, *range(skip, n - 1)):
            sel = window(skip - 1, 0) if w < 0 else window(w, delay)
            est = est_cls(random_state=cfg.seed, **kw).fit(X[sel], y[sel])
            errors[w] = [error(est, t) if t >= skip else np.nan for t in range(n)]
    out: dict[int, tuple[int, float]] = {}
    per_period: dict[int, list[float]] = {}
    for k in (0, *SCHEDULES):
        serving, runs, errs = -1, 0, []
        for t in range(skip, n):
            errs.append(errors[serving][t])
            if k and t < n - 1 and (t - skip + 1) % k == 0:
                serving, runs = t, runs + 1
        out[k] = (runs, float(np.average(errs, weights=rows[skip:])))
        per_period[k] = [float(e) for e in errs]
    return metric, out, per_period


def paired_gap(metric: str, piped: list[float], plain: list[float], rows: list[int]) -> str:
    """Pipeline minus plain in loss, with a 90 % interval over resampled periods."""
    results = []
    for name, errs in (("pipeline", piped), ("plain", plain)):
        r = PolicyResult(name, "schedule", 1, metric)
        r.period_errors, r.period_rows = errs, rows
        results.append(r)
    point = loss_of(metric, float(np.average(piped, weights=rows))) - loss_of(
        metric, float(np.average(plain, weights=rows))
    )
    boot = period_bootstrap(results, draws=2000, seed=0)
    lo, hi = np.quantile(boot[:, 0] - boot[:, 1], [0.05, 0.95])
    return f"{point:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(DATASETS), default="bikeshare")
    ap.add_argument("--encoding", choices=["onehot", "native"], default="onehot")
    ap.add_argument("--backtest", type=Path, help="a `watcher backtest --json` file")
    args = ap.parse_args()
    piped: dict[int, tuple[int, float]] = {}
    piped_periods: dict[int, list[float]] = {}
    period_rows: list[int] = []
    if args.backtest:
        for p in json.loads(args.backtest.read_text())["policies"]:
            if p["kind"] in ("never", "schedule"):
                piped[p["every"] or 0] = (p["runs"], p["error"])
                piped_periods[p["every"] or 0] = p["period_errors"]
                period_rows = p["period_rows"]
    results = {
        a: replay(args.data, anchor=a, encoding=args.encoding)
        for a in ("newest row", "newest labelled row")
    }
    metric = next(iter(results.values()))[0]
    head = "| schedule | plain, window from newest row | plain, from newest labelled row |"
    print(f"{args.data} ({metric}, plain HistGradientBoosting defaults, {args.encoding})")
    tail = " pipeline (`watcher backtest`) | pipeline − plain (loss), 90 % interval |"
    print(head + (tail if piped else ""))
    for k in (0, *SCHEDULES):
        label = "never" if k == 0 else ("every period" if k == 1 else f"every {k} periods")
        cells = [f"{r[1][k][0]} runs, {r[1][k][1]:.4g}" for r in results.values()]
        if piped and k in piped:
            cells.append(f"{piped[k][0]} runs, {piped[k][1]:.4g}")
            plain = results["newest labelled row"][2][k]
            cells.append(paired_gap(metric, piped_periods[k], plain, period_rows))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
