"""What a backtest found, for people (a table, a PNG) and for tools (JSON).

The schedules trace a frontier of error against runs; a policy is worth its runs when its
point lies on or below that frontier (its error at most the frontier's, interpolated at the
same number of runs). Each schedule counts at the mean over its phases (`phase_mean`: its
error and runs averaged over the k ways "every k periods" can fall on the calendar), since
a cron job's phase in production is arbitrary; a frontier traced from one phase per
schedule is a minimum over single noisy draws and sits below what a schedule gives on
average (on the flights example, every 6 weeks' phase 0 was the best of its 6 phases).
"vs frontier" is against the phase-averaged frontier; the single-phase one (each
schedule's phase 0, what earlier versions reported) is printed beside it. The JSON keeps
each schedule's phase-0 replay in its own fields (`runs` stays a count) and adds
`phase_mean` and `phases`. Each policy's distance to the frontier comes with a 90 % interval
from resampling the served periods (`period_bootstrap`): with a few hundred rows a period
the week-to-week noise can be as large as what a retrain buys, and the interval says when
"below the frontier" is within it.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from watcher.backtest import PolicyResult
from watcher.signals import loss_of

# Cost of a run, as a share of the never-retrained model's loss: error + α·runs.
ALPHA_SHARES = (0.001, 0.005, 0.01)


def phase_mean(r: PolicyResult) -> PolicyResult:
    """A schedule as the mean over its phases (`r.phases`): runs, deployed, failed and
    training seconds averaged, and each period's error averaged, so the error (row-weighted
    over periods, the same rows for every phase) is the phases' mean error and the period
    bootstrap resamples it like any policy. Anything without phases is returned as is."""
    if len(r.phases) <= 1:
        return r
    ph = r.phases
    out = PolicyResult(r.name, r.kind, r.every, r.metric)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a period no phase could score
        errs = np.nanmean(np.array([p.period_errors for p in ph], dtype=float), axis=0)
    out.period_errors = [float(e) for e in errs]
    out.period_rows = list(r.period_rows)
    out.runs = float(np.mean([p.runs for p in ph]))
    out.deployed = float(np.mean([p.deployed for p in ph]))
    out.failed = float(np.mean([p.failed for p in ph]))
    out.train_seconds = float(np.mean([p.train_seconds for p in ph]))
    out.phases = list(ph)
    return out


def averaged(results: list[PolicyResult]) -> list[PolicyResult]:
    """The results with every schedule replaced by its phase mean (same order)."""
    return [phase_mean(r) for r in results]


def envelope(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The lower envelope of (runs, loss) points: each point that no cheaper one beats."""
    runs: list[float] = []
    losses: list[float] = []
    for n, loss in sorted(points):
        if math.isnan(loss) or (losses and loss >= losses[-1]):
            continue
        if runs and n == runs[-1]:
            losses[-1] = loss
        else:
            runs.append(n)
            losses.append(loss)
    return runs, losses


def frontier(results: list[PolicyResult]) -> tuple[list[float], list[float]]:
    """(runs, loss) of `never` and the schedules that no cheaper one beats, by runs: the
    lower envelope of what a fixed schedule buys with a number of runs."""
    return envelope([(r.runs, r.loss) for r in results if r.kind in ("never", "schedule")])


def frontier_at(results: list[PolicyResult], runs: float) -> float:
    """The schedules' loss interpolated at `runs` (flat beyond the last schedule)."""
    xs, ys = frontier(results)
    if not xs:
        return float("nan")
    return float(np.interp(runs, xs, ys))


def _envelope_at(runs: np.ndarray, losses: np.ndarray, at: float) -> float:
    """`frontier_at` over plain arrays: the lower envelope of (runs, loss), interpolated."""
    xs, ys = envelope([(float(n), float(loss)) for n, loss in zip(runs, losses, strict=True)])
    return float(np.interp(at, xs, ys)) if xs else float("nan")


def period_bootstrap(
    results: list[PolicyResult], *, draws: int = 2000, seed: int = 0
) -> np.ndarray:
    """Every policy's loss on `draws` resamples of the served periods (drawn with
    replacement, the same draw for every policy, so comparisons are paired): shape
    (draws, policies). Each period's error counts with its rows, as in `error`."""
    if not results or not results[0].period_rows:
        return np.empty((draws, len(results)))
    rows = np.asarray(results[0].period_rows, dtype=float)
    losses = np.array(
        [[loss_of(r.metric, e) for e in r.period_errors] for r in results], dtype=float
    )
    known = ~np.isnan(losses)
    rng = np.random.default_rng(seed)
    n = len(rows)
    counts = np.stack(
        [np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(draws)]
    ).astype(float)
    weights = counts * rows  # (draws, periods)
    total = weights @ known.T.astype(float)  # (draws, policies): rows with a known error
    summed: np.ndarray = weights @ np.where(known, losses, 0.0).T
    return summed / np.where(total > 0, total, np.nan)


def gap_interval(
    results: list[PolicyResult], index: int, boot: np.ndarray, level: float = 0.9
) -> tuple[float, float]:
    """A `level` interval of policy `index`'s distance to the frontier (its loss minus the
    schedules' envelope at its runs) over the period resamples in `boot`: how much of
    "above" or "below" the served periods' week-to-week noise could produce. The frontier
    is traced afresh in every resample, from the same schedules."""
    sched = [i for i, r in enumerate(results) if r.kind in ("never", "schedule")]
    runs = np.array([results[i].runs for i in sched], dtype=float)
    at = results[index].runs
    gaps = np.array([b[index] - _envelope_at(runs, b[sched], at) for b in boot])
    return _quantiles(gaps, level)


def difference_interval(
    boot: np.ndarray, a: int, b: int, level: float = 0.9
) -> tuple[float, float]:
    """A `level` interval of policy a's loss minus policy b's over the period resamples."""
    return _quantiles(boot[:, a] - boot[:, b], level)


@dataclass(frozen=True)
class Distance:
    """A policy's distance to the frontier (loss minus the frontier at its runs), with a
    90 % interval, against the phase-averaged frontier (a schedule: its phase mean's) and
    against the single-phase one (a schedule: its phase 0's)."""

    gap: float
    interval: tuple[float, float]
    single: float
    single_interval: tuple[float, float]


def distances(results: list[PolicyResult], level: float = 0.9) -> list[Distance]:
    """`Distance` of every entry of `results` (schedules carrying their `phases`): two
    period bootstraps, so a caller that renders several views computes it once and passes
    it as `dist`."""
    avg = averaged(results)
    boot_avg, boot_one = period_bootstrap(avg), period_bootstrap(results)
    return [
        Distance(
            a.loss - frontier_at(avg, a.runs),
            gap_interval(avg, i, boot_avg, level),
            r.loss - frontier_at(results, r.runs),
            gap_interval(results, i, boot_one, level),
        )
        for i, (a, r) in enumerate(zip(avg, results, strict=True))
    ]


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    ok = values[~np.isnan(values)]
    if not len(ok):
        return float("nan"), float("nan")
    lo, hi = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _alphas(results: list[PolicyResult]) -> list[float]:
    never = next((r for r in results if r.kind == "never"), None)
    base = abs(never.loss) if never is not None and not math.isnan(never.loss) else 1.0
    return [share * base for share in ALPHA_SHARES]


def to_dict(
    results: list[PolicyResult],
    *,
    periods: int,
    seed: int,
    dist: list[Distance] | None = None,
) -> dict[str, Any]:
    """The `--json` document: metric and one entry per policy (plus extra keys). A
    schedule's own fields are its phase-0 replay; `phase_mean` and `phases` hold the mean
    over its phases and each phase; its `vs_frontier` is its phase mean's."""
    metric = results[0].metric if results else ""
    alphas = _alphas(results)
    return {
        "metric": metric,
        "periods": periods,
        "seed": seed,
        "alphas": alphas,
        "frontier": "phase mean",
        "policies": [
            {
                "name": r.name,
                "kind": r.kind,
                "every": r.every,
                "runs": r.runs,
                "deployed": r.deployed,
                "failed": r.failed,
                "error": _num(r.error),
                "train_seconds": round(r.train_seconds, 2),
                "loss": _num(r.loss),
                "vs_frontier": _num(d.gap),
                "vs_frontier_90": [_num(x) for x in d.interval],
                "vs_frontier_single_phase": _num(d.single),
                "vs_frontier_single_phase_90": [_num(x) for x in d.single_interval],
                "cost": [_num(r.loss + a * r.runs) for a in alphas],
                "period_errors": [_num(e) for e in r.period_errors],
                "period_rows": r.period_rows,
                "decisions": [vars(d) for d in r.decisions],
                **(
                    {
                        "phase_mean": _summary(phase_mean(r)),
                        "phases": [{"phase": p.phase, **_summary(p)} for p in r.phases],
                    }
                    if r.phases
                    else {}
                ),
            }
            for r, d in zip(results, dist or distances(results), strict=True)
        ],
    }


def _summary(r: PolicyResult) -> dict[str, Any]:
    return {
        "runs": r.runs,
        "deployed": r.deployed,
        "failed": r.failed,
        "error": _num(r.error),
        "loss": _num(r.loss),
        "train_seconds": round(r.train_seconds, 2),
    }


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")


def _phases_cell(r: PolicyResult) -> str:
    """A schedule's phase mean (runs, error) and its phases' error range."""
    if len(r.phases) <= 1:
        return "-"
    m = phase_mean(r)
    errs = [p.error for p in r.phases]
    return f"{m.runs:.3g}, {m.error:.4g} ({min(errs):.4g}–{max(errs):.4g})"


def _row(r: PolicyResult, d: Distance) -> list[str]:
    shown = r.kind == "policy"
    lo, hi = d.interval
    return [
        r.name,
        f"{r.runs:g}",
        f"{r.deployed:g}",
        f"{r.failed:g}",
        f"{r.error:.4g}",
        _phases_cell(r),
        f"{d.gap:+.3g}" if shown else "-",
        f"[{lo:+.2g}, {hi:+.2g}]" if shown else "-",
        f"{d.single:+.3g}" if shown else "-",
    ]


_COLUMNS = (
    "policy",
    "runs",
    "deployed",
    "failed",
    "{metric}",
    "phase mean: runs, {metric} (phases' range)",
    "vs frontier",
    "90 % interval",
    "vs 1-phase frontier",
)


def table(results: list[PolicyResult], title: str, dist: list[Distance] | None = None) -> Table:
    """Schedules show their phase-0 replay, and their phase mean beside it; "vs frontier"
    is against the phase-averaged frontier, "vs 1-phase frontier" against phase 0's."""
    metric = results[0].metric if results else "error"
    alphas = _alphas(results)
    t = Table(title=title)
    for name in (*(c.format(metric=metric) for c in _COLUMNS), "train s"):
        t.add_column(name, justify="left" if name == "policy" else "right")
    for share in ALPHA_SHARES:
        t.add_column(f"cost α={share:.1%}", justify="right")
    for r, d in zip(results, dist or distances(results), strict=True):
        t.add_row(
            *_row(r, d),
            f"{r.train_seconds:.0f}",
            *(f"{r.loss + a * r.runs:.4g}" for a in alphas),
        )
    return t


def markdown(results: list[PolicyResult]) -> str:
    """The same table as Markdown (for READMEs and issue comments)."""
    metric = results[0].metric if results else "error"
    heads = [c.format(metric=metric) for c in _COLUMNS]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    for r, d in zip(results, distances(results), strict=True):
        lines.append("| " + " | ".join(_row(r, d)) + " |")
    return "\n".join(lines)


def plot(
    results: list[PolicyResult],
    path: Path,
    *,
    title: str,
    starts: list[Any],
    dist: list[Distance] | None = None,
) -> None:
    """Loss against runs (the schedules' frontier, each policy a point) and error per period."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    metric = results[0].metric if results else "error"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    avg = averaged(results)
    xs, ys = frontier(avg)
    left.plot(
        xs,
        [_plain(metric, y) for y in ys],
        "-o",
        color="grey",
        label="schedules, phase mean (frontier)",
    )
    xs1, ys1 = frontier(results)
    left.plot(
        xs1, [_plain(metric, y) for y in ys1], "--", color="silver", label="schedules, phase 0 only"
    )
    for r in results:
        if r.kind == "schedule":
            m = phase_mean(r)
            left.annotate(
                f"{r.every}", (m.runs, m.error), textcoords="offset points", xytext=(4, 4)
            )
            phases = r.phases or [r]
            left.plot([p.runs for p in phases], [p.error for p in phases], ".", color="silver")
    for r, d in zip(results, dist or distances(results), strict=True):
        if r.kind == "policy":
            (point,) = left.plot([r.runs], [r.error], "*", markersize=12, label=r.name)
            # Where the frontier at its runs plus its 90 % interval of distance puts it.
            at = frontier_at(avg, r.runs)
            ends = sorted(_plain(metric, at + gap) for gap in d.interval)
            left.vlines(r.runs, ends[0], ends[1], color=point.get_color(), alpha=0.5)
    left.set_xlabel("retraining runs")
    left.set_ylabel(metric)
    left.set_title(
        "error against runs (dots: each schedule's phases; bars: 90 % interval of the "
        "distance to the frontier)",
        fontsize=9,
    )
    left.legend(fontsize=8)
    for r in results:
        if r.kind == "schedule" and r.every not in (1, 4):
            continue
        right.plot(starts[-len(r.period_errors) :], r.period_errors, label=r.name, linewidth=1)
    right.set_ylabel(f"{metric} per period")
    right.set_title("error per period")
    right.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plain(metric: str, loss: float) -> float:
    """Back from loss to the metric's own scale (the plot shows the metric)."""
    return loss_of(metric, loss)  # the map is its own inverse (x or 1 - x)
