"""Causal retraining-policy families over the cached error matrices, on both data sets.

    .venv/bin/python benchmarks/policy_families.py [--cache .cache/policy_matrix]

Needs the matrices `benchmarks/policy_matrix.py` caches (it builds them on first use). Every
rule below decides after period t from what is known then: the serving model's loss on the
labelled periods since its deployment (labels one period late), its holdout figure, the
holdout figures of the runs so far, and the periods since the last run. Each family is
swept over a small grid with the same parameters on both data sets; for each runs budget
the script prints the rules with the lowest Bikeshare error and, next to them, what the
same rule does on flights, the schedules' frontier and the hindsight oracle. The best of a
grid of 895 rules is selected on the data it is scored on: read the winners' neighbours
(`--around`) before trusting one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_matrix import ROOT, Matrix, build, build_fast, oracle

HIGHER = ("roc_auc", "accuracy", "f1", "r2")


@dataclass
class Ctx:
    """What a rule may know after serving period t."""

    labelled: list[float]  # serving model's losses on labelled periods since deployment
    holdout: float  # its holdout loss (the gate's figure)
    age: int  # periods since it was deployed
    since_run: int  # periods since the last run, deployed or not
    holdouts: list[float] = field(default_factory=list)  # holdout losses of all runs so far


Rule = Callable[[Ctx], bool]


def simulate(m: Matrix, rule: Rule) -> tuple[int, int, float]:
    """(runs, deployed, error) like policy_matrix.simulate, with the richer context."""
    model, deployed_at, last_run = -1, m.skip - 1, m.skip - 1
    labelled: list[float] = []
    holdouts = [m.holdout[-1]]
    errs, weights, runs, deployed = [], [], 0, 0
    for t in range(m.skip, m.n):
        errs.append(m.loss[model][t])
        weights.append(m.rows[t])
        if t == m.n - 1:
            break
        known = t - m.delay
        if known > deployed_at and known >= m.skip:
            labelled.append(float(m.loss[model][known]))
        ctx = Ctx(labelled, m.holdout[model], t - deployed_at, t - last_run, holdouts)
        if not rule(ctx):
            continue
        runs, last_run = runs + 1, t
        holdouts = [*holdouts, m.holdout[t]]
        if m.ok.get(t) and m.gate.get((t, model), False):
            deployed, model, deployed_at, labelled = deployed + 1, t, t, []
    loss = float(np.average(errs, weights=weights))
    return runs, deployed, 1 - loss if m.metric in HIGHER else loss


def reference(kind: str, c: Ctx) -> float | None:
    """The level the serving model's loss is compared with."""
    if kind == "holdout":
        return c.holdout
    if kind == "first":  # its own first labelled period
        return c.labelled[0] if c.labelled else None
    if kind == "min":  # the lower of its holdout and first labelled period
        return min([c.holdout, *c.labelled[:1]])
    if kind.startswith("best"):  # the best holdout figure among the last K runs
        return min(c.holdouts[-int(kind[4:]) :])
    if kind.startswith("med"):  # the median holdout figure of the last K runs
        return float(np.median(c.holdouts[-int(kind[3:]) :]))
    raise ValueError(kind)


def floor(max_age: int | None, rule: Rule) -> Rule:
    return lambda c: (max_age is not None and c.since_run >= max_age) or rule(c)


def ratio(kind: str, tol: float, need: int) -> Rule:
    """The last `need` labelled losses all above (1 + tol) x the reference."""

    def r(c: Ctx) -> bool:
        ref = reference(kind, c)
        recent = c.labelled[-need:]
        return ref is not None and len(recent) == need and all(x > (1 + tol) * ref for x in recent)

    return r


def cost(kind: str, tol: float, thr: float) -> Rule:
    """Cost-aware: the summed relative excess over the reference (beyond tol) since
    deployment, in periods' loss, reaches the retrain cost `thr`."""

    def r(c: Ctx) -> bool:
        ref = reference(kind, c)
        return ref is not None and sum(x / ref - 1 - tol for x in c.labelled) >= thr

    return r


def trend(tol: float) -> Rule:
    """The latest labelled loss (1 + tol) x above the one before (or the holdout)."""

    def r(c: Ctx) -> bool:
        prev = c.labelled[-2] if len(c.labelled) >= 2 else c.holdout
        return bool(c.labelled) and c.labelled[-1] > (1 + tol) * prev

    return r


def aged(kind: str, thr: float) -> Rule:
    """The latest relative excess times the model's age (staleness grows with age)."""

    def r(c: Ctx) -> bool:
        ref = reference(kind, c)
        return ref is not None and bool(c.labelled) and (c.labelled[-1] / ref - 1) * c.age >= thr

    return r


KINDS = ("holdout", "first", "min", "best3", "best5", "best8", "med5")
AGES = (None, 3, 4, 5, 6)


def rules() -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for ma in AGES:
        for kind in KINDS:
            for tol in (0.0, 0.1, 0.2, 0.3, 0.5):
                for need in (1, 2):
                    out[f"ratio {kind} tol={tol} need={need} age={ma}"] = floor(
                        ma, ratio(kind, tol, need)
                    )
            for thr in (0.1, 0.25, 0.5, 1.0, 2.0):
                for tol in (0.0, 0.1):
                    out[f"cost {kind} tol={tol} thr={thr} age={ma}"] = floor(
                        ma, cost(kind, tol, thr)
                    )
                out[f"aged {kind} thr={thr} age={ma}"] = floor(ma, aged(kind, thr))
        for tol in (0.0, 0.1, 0.2, 0.3):
            out[f"trend tol={tol} age={ma}"] = floor(ma, trend(tol))
    return out


def every(k: int) -> Rule:
    return lambda c: c.since_run >= k


def frontier(m: Matrix) -> Callable[[int, float], float]:
    """Gap of (runs, error) to the schedules' frontier (negative: below it, better)."""
    sign = -1.0 if m.metric in HIGHER else 1.0
    points = [simulate(m, lambda c: False)]
    points += [simulate(m, every(k)) for k in (1, 2, 3, 4, 6, 8)]
    front: list[tuple[int, float]] = []
    for runs, _, err in sorted(points):
        if not front or sign * err < front[-1][1]:
            front.append((runs, sign * err))
    xs, ys = [p[0] for p in front], [p[1] for p in front]
    return lambda runs, err: sign * err - float(np.interp(runs, xs, ys))


def summary(
    scored: dict[str, dict[str, tuple[int, int, float]]],
    gaps: dict[str, Callable[[int, float], float]],
) -> None:
    """Per family and reference: of its parameter settings, how many lie on or below the
    schedules' frontier on each data set and on both, and the best Bikeshare MAE in 15 runs
    and in 22 - a family whose good settings are rare is tuned, not found."""
    families: dict[str, list[str]] = {}
    for label in scored:
        families.setdefault(" ".join(label.split()[:2]).split(" tol")[0], []).append(label)
    for fam, labels in families.items():
        below = {n: {lab for lab in labels if gaps[n](*scored[lab][n][::2]) <= 0} for n in gaps}
        both = set.intersection(*below.values())
        firing = {lab for lab in below["flights"] if scored[lab]["flights"][0] > 0}
        bike: dict[int, float] = {}
        for budget in (15, 22):
            fits = [
                scored[lab]["bikeshare"][2]
                for lab in labels
                if scored[lab]["bikeshare"][0] <= budget
            ]
            bike[budget] = min(fits, default=float("nan"))
        print(
            f"{fam:16s} {len(labels):3d} settings; on/below frontier: bikeshare "
            f"{len(below['bikeshare']):3d}, flights {len(below['flights']):3d} "
            f"({len(firing):2d} with runs), both {len(both):3d};"
            f" best bikeshare MAE <=15 runs {bike[15]:.2f}, <=22 runs {bike[22]:.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache/policy_matrix")
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--around", help="print only the rules whose name contains this")
    ap.add_argument("--summary", action="store_true", help="per family: how many settings pay")
    ap.add_argument("--fast", action="store_true", help="the plain scikit-learn matrices")
    args = ap.parse_args()
    names = ("bikeshare", "flights")
    if args.fast:
        mats = {name: build_fast(name, args.cache) for name in names}
    else:
        mats = {name: build(name, args.cache, 1) for name in names}
    gaps = {name: frontier(m) for name, m in mats.items()}
    best = {name: oracle(m, 44) for name, m in mats.items()}
    scored = {label: {n: simulate(m, r) for n, m in mats.items()} for label, r in rules().items()}

    def line(label: str) -> str:
        out = f"{label:40s}"
        for n, (runs, dep, err) in scored[label].items():
            out += f" | {n} {runs:2d} runs ({dep:2d} dep) {err:.4g}"
            out += f" frontier {gaps[n](runs, err):+.4f} oracle@{runs} {best[n][runs]:.4g}"
        return out

    if args.summary:
        summary(scored, gaps)
        return
    if args.around:
        for label in scored:
            if args.around in label:
                print(line(label))
        return
    print(f"{len(scored)} rules, parameters shared by both data sets")
    for budget in (8, 11, 15, 22):
        ok = [lab for lab in scored if scored[lab]["bikeshare"][0] <= budget]
        ok.sort(key=lambda lab: scored[lab]["bikeshare"][2])
        print(f"-- at most {budget} runs on bikeshare, lowest MAE first")
        for label in ok[: args.top]:
            print(line(label))
        quiet = [lab for lab in ok if gaps["flights"](*scored[lab]["flights"][::2]) <= 0]
        print("   ... of those on or below the flights frontier:")
        for label in quiet[: args.top]:
            print(line(label))


if __name__ == "__main__":
    main()
