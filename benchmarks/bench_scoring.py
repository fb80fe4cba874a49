"""Drift scoring speed: watcher's engine against evidently's Report and plain SciPy.

    .venv/bin/python benchmarks/bench_scoring.py [--quick]

For 1k, 10k and 100k rows per side (reference and batch the same size) x 20 columns
(10 continuous numeric, 2 binary numeric 0/1, 6 categorical strings with 3-12 values,
2 binary categorical strings; 7 of the 20 drift), this measures in one run:

- watcher: `engine.score()` against a reference prepared beforehand (the preparation,
  done once per reference version, is timed separately);
- evidently: `Report([DataDriftPreset()], include_tests=True).run(...)`, the reference
  recomputed as the Report always does (the tests carry the per-column decisions);
- SciPy: plain `scipy.stats` calls per column on the raw arrays for the same tests
  (ks_2samp, wasserstein_distance / std, chisquare, the Z-test, jensenshannon), counting
  categories of both sides with pandas, nothing prepared.

Times are the best of N runs, taken in alternating rounds so that all three see the same
load (the machine is shared and noisy: compare the ratios).
Decisions (per-column drift flags and the dataset verdict) must be identical between
watcher and evidently, and per-column scores equal to 1e-6; the script exits 1 otherwise.
`--quick` runs 1k and 10k only, with fewer repetitions.

Then one row per test of `watcher.drift.catalog` (every evidently tabular test), on
`--family-rows` rows per side (default 1,100: above evidently's 1,000, small enough for
the permutation tests) and the columns of its kinds among num_0..num_2 / cat_0..cat_2:
watcher's `engine.score` with that test as num_/cat_stattest (on the fast path or calling
evidently's function, as the catalog says), evidently's own test function called per column
on the raw series, and `Report([DataDriftPreset(num_method=..., cat_method=...)])`. Scores
must agree to 1e-6 with the Report's. `--families-only` runs just this table.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watcher.drift import catalog, engine

NUMERIC = [f"num_{i}" for i in range(10)] + ["num_bin_0", "num_bin_1"]
CATEGORICAL = [f"cat_{i}" for i in range(6)] + ["cat_bin_0", "cat_bin_1"]
DRIFTING = {"num_0", "num_1", "num_2", "num_3", "num_bin_0", "cat_0", "cat_bin_0"}
EVIDENTLY_NAMES = {
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
}


def make_frame(n: int, rng: np.random.Generator, *, drifted: bool) -> pd.DataFrame:
    data: dict[str, Any] = {}
    for i in range(10):
        shift = 0.5 if drifted and f"num_{i}" in DRIFTING else 0.0
        if i % 3 == 0:
            data[f"num_{i}"] = rng.normal(10 * i + shift, 1.0, n)
        elif i % 3 == 1:
            data[f"num_{i}"] = rng.lognormal(shift, 0.5, n)
        else:
            data[f"num_{i}"] = rng.uniform(shift, 1 + shift, n)
    for i in range(2):
        p = 0.7 if drifted and f"num_bin_{i}" in DRIFTING else 0.4
        data[f"num_bin_{i}"] = (rng.random(n) < p).astype(float)
    for i in range(6):
        k = 3 + 2 * i
        weights = np.arange(1, k + 1, dtype=float)
        if drifted and f"cat_{i}" in DRIFTING:
            weights = weights[::-1]
        data[f"cat_{i}"] = rng.choice([f"v{j}" for j in range(k)], n, p=weights / weights.sum())
    for i in range(2):
        p = 0.75 if drifted and f"cat_bin_{i}" in DRIFTING else 0.5
        data[f"cat_bin_{i}"] = np.where(rng.random(n) < p, "yes", "no")
    return pd.DataFrame(data)


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


# --- plain SciPy, per column, nothing prepared -------------------------------------------


def _counts(ref: pd.Series, cur: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    r, c = ref.value_counts(), cur.value_counts()
    keys = r.index.union(c.index)
    return (
        r.reindex(keys, fill_value=0).to_numpy(dtype=float),
        c.reindex(keys, fill_value=0).to_numpy(dtype=float),
    )


def scipy_column(test: str, ref: pd.Series, cur: pd.Series) -> tuple[float, bool]:
    if test == "ks":
        p = float(stats.ks_2samp(ref.to_numpy(), cur.to_numpy()).pvalue)
        return p, p <= 0.05
    if test == "wasserstein":
        u, v = ref.to_numpy(), cur.to_numpy()
        d = float(stats.wasserstein_distance(u, v)) / max(float(np.std(u)), 0.001)
        return d, d >= 0.1
    r, c = _counts(ref, cur)
    if test == "chisquare":
        with np.errstate(divide="ignore", invalid="ignore"):
            p = float(stats.chisquare(c, r * (c.sum() / r.sum())).pvalue)
        return p, p < 0.05
    if test == "z":
        if len(r) == 1:
            return 1.0, False
        n1, n2 = r.sum(), c.sum()
        p1, p2 = r[1:].sum() / n1, c[1:].sum() / n2  # keys are sorted: smallest vs the rest
        pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        p = float(2 * (1 - stats.norm.cdf(abs(z))))
        return p, p < 0.05
    d = float(distance.jensenshannon(r / r.sum(), c / c.sum()))
    return d, d >= 0.1


def scipy_all(tests: dict[str, str], ref: pd.DataFrame, cur: pd.DataFrame) -> dict[str, bool]:
    return {name: scipy_column(test, ref[name], cur[name])[1] for name, test in tests.items()}


# --- evidently ---------------------------------------------------------------------------


def evidently_report(ref: pd.DataFrame, cur: pd.DataFrame) -> dict[str, Any]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
    out = snapshot.dict()
    columns: dict[str, dict[str, Any]] = {}
    by_metric: dict[str, str] = {}
    for metric in out["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            name = config["column"]
            by_metric[metric["id"]] = name
            columns[name] = {
                "stattest": EVIDENTLY_NAMES.get(config["method"], config["method"]),
                "score": float(metric["value"]),
            }
    dataset_drift = None
    for test in out["tests"]:
        name = by_metric.get(test["metric_config"]["metric_id"])
        if name is None:
            dataset_drift = test["status"] == "FAIL"
        else:
            columns[name]["drifted"] = test["status"] == "FAIL"
    return {"columns": columns, "dataset_drift": dataset_drift}


# --- the run -----------------------------------------------------------------------------


@dataclass
class Row:
    rows: int
    prepare: float
    watcher: float
    scipy: float
    report: float = float("nan")
    identical: bool | None = None
    detail: str = ""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


FAMILY_NUMERIC = ["num_0", "num_1", "num_2"]
FAMILY_CATEGORICAL = ["cat_0", "cat_1", "cat_2"]


def family_report(
    test: str, numeric: list[str], categorical: list[str], ref: pd.DataFrame, cur: pd.DataFrame
) -> dict[str, float]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    info = catalog.TESTS[test]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    preset = DataDriftPreset(
        columns=numeric + categorical,
        num_method=test if "numeric" in info.kinds else None,
        cat_method=test if "categorical" in info.kinds else None,
    )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        snapshot = Report([preset]).run(
            Dataset.from_pandas(cur[numeric + categorical], data_definition=definition),
            Dataset.from_pandas(ref[numeric + categorical], data_definition=definition),
        )
    return {
        m["config"]["column"]: float(m["value"])
        for m in snapshot.dict()["metrics"]
        if m["config"]["type"].endswith("ValueDrift")
    }


def family_function(test: str, kinds: dict[str, str], ref: pd.DataFrame, cur: pd.DataFrame) -> None:
    stattest = catalog.evidently_stattest(test)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for name, kind in kinds.items():
            stattest(ref[name], cur[name], catalog.evidently_column_type(kind), None)  # type: ignore[arg-type]


def families(rows: int, repeats: int) -> bool:
    rng = np.random.default_rng(7)
    # Equal sizes: evidently's G and Fisher tests refuse anything else.
    ref, cur = make_frame(rows, rng, drifted=False), make_frame(rows, rng, drifted=True)
    family_report("ks", FAMILY_NUMERIC, FAMILY_CATEGORICAL, ref, cur)  # untimed warm-up
    header = (
        f"{'test':>17} {'kinds':>8} {'path':>9} {'watcher s':>10} {'evidently fn s':>15} "
        f"{'Report s':>9} {'Report/watcher':>15} {'fn/watcher':>11} {'equal':>6}"
    )
    print(f"\nEvery test, {rows:,} rows per side; seconds are best of {repeats}.")
    print(header)
    print("-" * len(header))
    ok = True
    for test, info in catalog.TESTS.items():
        numeric = FAMILY_NUMERIC if "numeric" in info.kinds else []
        categorical = FAMILY_CATEGORICAL if "categorical" in info.kinds else []
        if test == "fisher_exact":  # binary columns only: evidently refuses any other
            categorical = ["cat_bin_0", "cat_bin_1"]
        kinds = {**dict.fromkeys(numeric, "numeric"), **dict.fromkeys(categorical, "categorical")}
        specs = [engine.ColumnSpec(c, k) for c, k in kinds.items()]  # type: ignore[arg-type]
        prepared = engine.prepare_reference(ref, specs, version="bench")
        options = {
            "num_stattest": test if numeric else None,
            "cat_stattest": test if categorical else None,
        }
        # The permutation tests take seconds a call: once is enough.
        n = 1 if test in ("TVD", "empirical_mmd") else repeats
        t_watch, result = best_of(n, partial(engine.score, prepared, cur, **options))
        t_fn, _ = best_of(n, partial(family_function, test, kinds, ref, cur))
        t_report, scores = best_of(1, partial(family_report, test, numeric, categorical, ref, cur))
        equal = not result.failures and all(
            abs(scores[n] - c.score) <= 1e-6 for n, c in result.columns.items()
        )
        ok = ok and equal
        print(
            f"{test:>17} {'+'.join(sorted(k[:3] for k in info.kinds)):>8} {info.path:>9} "
            f"{t_watch:>10.4f} {t_fn:>15.4f} {t_report:>9.3f} {t_report / t_watch:>14.0f}x "
            f"{t_fn / t_watch:>10.1f}x {'yes' if equal else 'NO':>6}",
            flush=True,
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k only, fewer repeats")
    parser.add_argument("--family-rows", type=int, default=1_100, help="rows per side, per test")
    parser.add_argument("--families-only", action="store_true", help="only the per-test table")
    args = parser.parse_args()
    if args.families_only:
        return 0 if families(args.family_rows, 3) else 1
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    fast_repeats = 3 if args.quick else 7
    report_repeats = {1_000: 1 if args.quick else 3, 10_000: 1 if args.quick else 3, 100_000: 2}

    rng = np.random.default_rng(20240611)
    specs = [engine.ColumnSpec(c, "numeric") for c in NUMERIC] + [
        engine.ColumnSpec(c, "categorical") for c in CATEGORICAL
    ]
    frames = {
        n: (make_frame(n, rng, drifted=False), make_frame(n, rng, drifted=True)) for n in sizes
    }

    # The machine is shared: the three are timed in alternating rounds, so each sees the
    # same load, and each keeps its best round.
    rows: dict[int, Row] = {}
    results: dict[int, engine.DriftResult] = {}
    scipy_flags: dict[int, dict[str, bool]] = {}
    prepared_refs: dict[int, engine.PreparedReference] = {}
    for n in sizes:
        ref, cur = frames[n]
        t_prep, prepared = best_of(
            fast_repeats, partial(engine.prepare_reference, ref, specs, version="bench")
        )
        result = engine.score(prepared, cur)
        chosen = {name: c.stattest for name, c in result.columns.items()}
        row = Row(n, t_prep, float("inf"), float("inf"))
        for _ in range(fast_repeats):
            t_watch, _result = best_of(3, partial(engine.score, prepared, cur))
            t_scipy, flags = best_of(1, partial(scipy_all, chosen, ref, cur))
            row.watcher, row.scipy = min(row.watcher, t_watch), min(row.scipy, t_scipy)
        rows[n], results[n], scipy_flags[n], prepared_refs[n] = row, result, flags, prepared
    rss_without_evidently = peak_rss_mib()

    # Untimed: the first Report pays for importing evidently and warming its caches.
    evidently_report(*frames[sizes[0]])
    ok = True
    for n in sizes:
        ref, cur = frames[n]
        t_report, ev = float("inf"), dict[str, Any]()
        for _ in range(report_repeats[n]):
            t, ev = best_of(1, partial(evidently_report, ref, cur))
            t_report = min(t_report, t)
            t_watch, _result = best_of(3, partial(engine.score, prepared_refs[n], cur))
            rows[n].watcher = min(rows[n].watcher, t_watch)
        row, result = rows[n], results[n]
        row.report = t_report
        problems = []
        for name, col in result.columns.items():
            e = ev["columns"][name]
            if e["stattest"] != col.stattest or e["drifted"] != col.drifted:
                problems.append(f"{name}: evidently {e} vs watcher {col.to_dict()}")
            elif abs(e["score"] - col.score) > 1e-6:
                problems.append(f"{name}: score {e['score']} vs {col.score}")
        if ev["dataset_drift"] != result.dataset_drift:
            problems.append(f"dataset: evidently {ev['dataset_drift']} vs {result.dataset_drift}")
        scipy_same = all(scipy_flags[n][k] == c.drifted for k, c in result.columns.items())
        if not scipy_same:
            problems.append("SciPy per-column flags differ")
        row.identical = not problems
        row.detail = "; ".join(problems)
        ok = ok and row.identical

    print(
        f"20 columns: {len(NUMERIC)} numeric ({len(NUMERIC) - 2} continuous, 2 binary 0/1), "
        f"{len(CATEGORICAL)} categorical strings (2 binary); {len(DRIFTING)} drift. "
        "Rows per side; seconds are best of N."
    )
    header = (
        f"{'rows':>8} {'prepare s':>10} {'watcher s':>10} {'SciPy s':>9} {'Report s':>9} "
        f"{'Report/watcher':>15} {'SciPy/watcher':>14} {'identical':>10}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        r = rows[n]
        print(
            f"{n:>8,} {r.prepare:>10.4f} {r.watcher:>10.4f} {r.scipy:>9.4f} {r.report:>9.3f} "
            f"{r.report / r.watcher:>14.0f}x {r.scipy / r.watcher:>13.1f}x "
            f"{'yes' if r.identical else 'NO':>10}"
        )
    for n in sizes:
        res = results[n]
        used = sorted({c.stattest for c in res.columns.values()})
        print(
            f"{n:>8,} rows: tests {', '.join(used)}; {res.n_drifted}/{res.n_columns} drifted, "
            f"dataset drift {res.dataset_drift}"
        )
        if rows[n].detail:
            print(f"    DIFFERENCES: {rows[n].detail}")
    print(
        f"peak RSS: {rss_without_evidently:.0f} MiB before evidently ran, "
        f"{peak_rss_mib():.0f} MiB at the end"
    )
    ok = families(args.family_rows, 1 if args.quick else 3) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
