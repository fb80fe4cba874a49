"""What a backtest found, for people (a table, a PNG) and for tools (JSON).

The schedules trace a frontier of error against runs; a policy is worth its runs when its
point lies on or below that frontier (its error at most the frontier's, interpolated at the
same number of runs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from watcher.backtest import PolicyResult
from watcher.signals import loss_of

# Cost of a run, as a share of the never-retrained model's loss: error + α·runs.
ALPHA_SHARES = (0.001, 0.005, 0.01)


def frontier(results: list[PolicyResult]) -> tuple[list[int], list[float]]:
    """(runs, loss) of `never` and the schedules that no cheaper one beats, by runs: the
    lower envelope of what a fixed schedule buys with a number of runs."""
    points = sorted((r.runs, r.loss) for r in results if r.kind in ("never", "schedule"))
    runs: list[int] = []
    losses: list[float] = []
    for n, loss in points:
        if math.isnan(loss) or (losses and loss >= losses[-1]):
            continue
        if runs and n == runs[-1]:
            losses[-1] = loss
        else:
            runs.append(n)
            losses.append(loss)
    return runs, losses


def frontier_at(results: list[PolicyResult], runs: int) -> float:
    """The schedules' loss interpolated at `runs` (flat beyond the last schedule)."""
    xs, ys = frontier(results)
    if not xs:
        return float("nan")
    return float(np.interp(runs, xs, ys))


def _alphas(results: list[PolicyResult]) -> list[float]:
    never = next((r for r in results if r.kind == "never"), None)
    base = abs(never.loss) if never is not None and not math.isnan(never.loss) else 1.0
    return [share * base for share in ALPHA_SHARES]


def to_dict(results: list[PolicyResult], *, periods: int, seed: int) -> dict[str, Any]:
    """The `--json` document: metric and one entry per policy (plus extra keys)."""
    metric = results[0].metric if results else ""
    alphas = _alphas(results)
    return {
        "metric": metric,
        "periods": periods,
        "seed": seed,
        "alphas": alphas,
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
                "vs_frontier": _num(r.loss - frontier_at(results, r.runs)),
                "cost": [_num(r.loss + a * r.runs) for a in alphas],
                "period_errors": [_num(e) for e in r.period_errors],
                "period_rows": r.period_rows,
                "decisions": [vars(d) for d in r.decisions],
            }
            for r in results
        ],
    }


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")


def table(results: list[PolicyResult], title: str) -> Table:
    metric = results[0].metric if results else "error"
    alphas = _alphas(results)
    t = Table(title=title)
    for name in ("policy", "runs", "deployed", "failed", metric, "vs frontier", "train s"):
        t.add_column(name, justify="left" if name == "policy" else "right")
    for share in ALPHA_SHARES:
        t.add_column(f"cost α={share:.1%}", justify="right")
    for r in results:
        gap = r.loss - frontier_at(results, r.runs)
        t.add_row(
            r.name,
            str(r.runs),
            str(r.deployed),
            str(r.failed),
            f"{r.error:.4g}",
            "-" if r.kind != "policy" else f"{gap:+.3g}",
            f"{r.train_seconds:.0f}",
            *(f"{r.loss + a * r.runs:.4g}" for a in alphas),
        )
    return t


def markdown(results: list[PolicyResult]) -> str:
    """The same table as Markdown (for READMEs and issue comments)."""
    metric = results[0].metric if results else "error"
    lines = [
        f"| policy | runs | deployed | failed | {metric} | vs frontier |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        gap = r.loss - frontier_at(results, r.runs)
        lines.append(
            f"| {r.name} | {r.runs} | {r.deployed} | {r.failed} | {r.error:.4g} | "
            f"{'-' if r.kind != 'policy' else f'{gap:+.3g}'} |"
        )
    return "\n".join(lines)


def plot(results: list[PolicyResult], path: Path, *, title: str, starts: list[Any]) -> None:
    """Loss against runs (the schedules' frontier, each policy a point) and error per period."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    metric = results[0].metric if results else "error"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    xs, ys = frontier(results)
    oriented = [_plain(metric, y) for y in ys]
    left.plot(xs, oriented, "-o", color="grey", label="schedules (frontier)")
    for r in results:
        if r.kind == "schedule":
            left.annotate(
                f"{r.every}", (r.runs, r.error), textcoords="offset points", xytext=(4, 4)
            )
    for r in results:
        if r.kind == "policy":
            left.plot([r.runs], [r.error], "*", markersize=12, label=r.name)
    left.set_xlabel("retraining runs")
    left.set_ylabel(metric)
    left.set_title("error against runs")
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
