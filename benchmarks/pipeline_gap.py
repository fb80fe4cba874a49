"""Which difference between the pipeline and a plain default model costs the weekly error?

    .venv/bin/python benchmarks/pipeline_gap.py [--data bikeshare|flights] [--variants a,b]

The weekly schedule of `watcher backtest` (version 1 on the first 8 periods, then a run
after every period, labels one period late, no gate: every run deployed), each run fitted
on the rows the DAG's validate step keeps (`training_rows` + `validation.validate`), in
several ways that each differ from the pipeline's deployed model (the configured
preprocessing + estimator refit on every row, `steps.train`) in one respect:

- `pipeline`: `make_pipeline(cfg, ...)` on the features `select` keeps, every row.
- `challenger`: the same, on the oldest 80 % only (no refit on the holdout).
- `corr_on`: with the correlation filter that `select` applied before it was limited to
  the selection methods (`selection = "none"` dropped Bikeshare's atemp).
- `es_off`: HistGradientBoosting with `early_stopping=False`, as the pipeline had it
  (the estimator's default is "auto": on above 10,000 rows).
- `no_clip`: no outlier clipping; `no_impute`: NaN left to the estimator;
  `no_pool`: one-hot without pooling rare categories.
- `plain`: a default HistGradientBoosting on `pd.get_dummies` of the configured features
  (as `benchmarks/plain_replay.py`), on the same rows.

Prints each variant's weighted error and its paired difference from `pipeline` with a 90 %
interval from resampling the served periods (`watcher.backtest_report.period_bootstrap`).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy_matrix import DATASETS, example_history

from watcher.backtest import PolicyResult
from watcher.backtest_history import training_rows
from watcher.backtest_report import period_bootstrap
from watcher.config import RetrainConfig
from watcher.retrain import validation
from watcher.retrain.evaluation import limited_threads, score, split_holdout
from watcher.retrain.features import build_preprocessor
from watcher.retrain.selection import correlation_filter, select_features
from watcher.retrain.tuning import estimator_for
from watcher.signals import loss_of

VARIANTS = (
    "pipeline",
    "challenger",
    "corr_on",
    "es_off",
    "no_clip",
    "no_impute",
    "no_pool",
    "plain",
)


def _pipeline(cfg: RetrainConfig, num: list[str], cat: list[str], variant: str) -> Any:
    from sklearn.pipeline import Pipeline

    if variant == "no_clip":
        cfg = cfg.model_copy(update={"outliers": "none"})
    prep = build_preprocessor(cfg, num, cat)
    steps = {name: pipe for name, pipe, _ in prep.transformers}
    if variant == "no_impute" and "num" in steps:
        steps["num"].steps = [s for s in steps["num"].steps if s[0] != "impute"] or [
            ("id", "passthrough")
        ]
    if variant == "no_pool" and "cat" in steps:
        steps["cat"].named_steps["encode"].set_params(min_frequency=None, handle_unknown="ignore")
    est = estimator_for("hist_gradient_boosting", cfg.task, cfg.seed)
    if variant == "es_off":
        est.set_params(early_stopping=False)
    return Pipeline([("prep", prep), ("model", est)])


def _plain(cfg: RetrainConfig) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = (
        HistGradientBoostingRegressor
        if cfg.task == "regression"
        else HistGradientBoostingClassifier
    )
    return cls(random_state=cfg.seed)


_STATE: dict[str, Any] = {}


def _init(name: str) -> None:
    _STATE["settings"], _STATE["model_cfg"], _STATE["history"] = example_history(name)


def _run(after: int, delay: int, variants: tuple[str, ...]) -> dict[str, list[float]]:
    """Each variant's metric on every period, trained after period `after`."""
    model_cfg, history = _STATE["model_cfg"], _STATE["history"]
    cfg, cols = model_cfg.retrain, model_cfg.columns
    target = cols.target
    rows = training_rows(history, model_cfg, after, delay)
    valid, report = validation.validate(rows, cols, cfg)
    train, _ = split_holdout(valid, cfg.holdout_share)
    chosen = select_features(train, train[target], report.numeric, report.categorical, cfg)
    num = [c for c in report.numeric if c in chosen.features]
    cat = [c for c in report.categorical if c in chosen.features]
    dropped = correlation_filter(train, train[target], num, cfg.correlation_threshold)
    frame = history.frame
    dummies_all = pd.get_dummies(
        frame[[*cols.numeric, *cols.categorical]], columns=list(cols.categorical), dtype=float
    )
    out: dict[str, list[float]] = {}
    with limited_threads(1):
        for v in variants:
            if v == "plain":
                # get_dummies over the whole history: columns of categories a window has
                # not seen are all zero, which a tree ignores (as plain_replay.py).
                est = _plain(cfg)
                pos = frame.index[frame[cols.id].isin(valid[cols.id])]
                est.fit(dummies_all.loc[pos], frame.loc[pos, target])
                inputs = list(dummies_all.columns)
                source = dummies_all
            else:
                use_num = [c for c in num if c not in dropped] if v == "corr_on" else num
                est = _pipeline(cfg, use_num, cat, v)
                fit_rows = train if v == "challenger" else valid
                inputs = [*use_num, *cat]
                est.fit(fit_rows[inputs], fit_rows[target])
                source = frame
            errs = []
            for t in range(history.n_periods):
                if t < history.skip or t <= after:
                    errs.append(float("nan"))
                    continue
                sel = frame[frame["_period"].to_numpy() == t]
                X = source.loc[sel.index, inputs]
                errs.append(score(est, X, sel[target], cfg.task)[cfg.primary_metric])
            out[v] = errs
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(DATASETS), default="bikeshare")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    variants = tuple(args.variants.split(","))
    _init(args.data)
    history, cfg = _STATE["history"], _STATE["model_cfg"].retrain
    n, skip, delay = history.n_periods, history.skip, history.label_delay
    jobs = {-1: (skip - 1, 0), **{w: (w, delay) for w in range(skip, n - 1)}}
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(args.data,)) as pool:
        futs = {w: pool.submit(_run, a, d, variants) for w, (a, d) in jobs.items()}
        errors = {w: f.result() for w, f in futs.items()}
    rows = np.bincount(history.frame["_period"].to_numpy(), minlength=n)[skip:]
    results = []
    for v in variants:
        # Weekly: period t is served by the run after t - 1 (version 1 serves period skip).
        per = [errors[-1 if t == skip else t - 1][v][t] for t in range(skip, n)]
        r = PolicyResult(v, "schedule", 1, cfg.primary_metric)
        r.period_errors, r.period_rows = per, [int(x) for x in rows]
        results.append(r)
    boot = period_bootstrap(results, draws=2000, seed=0)
    base = 0
    print(f"{args.data} weekly, {cfg.primary_metric}, every run deployed (no gate)")
    print("| variant | error | minus pipeline (loss) | 90 % interval |")
    for i, r in enumerate(results):
        err = float(np.average(r.period_errors, weights=r.period_rows))
        point = loss_of(cfg.primary_metric, err) - loss_of(
            cfg.primary_metric, float(np.average(results[base].period_errors, weights=rows))
        )
        lo, hi = np.quantile(boot[:, i] - boot[:, base], [0.05, 0.95])
        print(f"| {r.name} | {err:.4f} | {point:+.4f} | [{lo:+.4f}, {hi:+.4f}] |")


if __name__ == "__main__":
    main()
