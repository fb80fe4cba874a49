"""Bikeshare 2011 replayed week by week: what retraining buys, and at what cost.

Version 1 is trained on the first 8 weeks (the example's bootstrap). Each later week is
served by the model then in production; labels arrive one week late, as in the demo.
Three strategies, each with its own registry, run the same retraining steps the DAG runs
(`watcher.retrain.steps.run_all`, gate included):

- none:   version 1 forever;
- weekly: a retraining run after every week;
- drift:  the daemon's rule: the week's batch scored against the production version's
          reference with watcher.drift.engine; dataset drift in `policy.consecutive` (2)
          weeks in a row triggers a run, and the streak restarts.

Prints MAE per month for each strategy, then runs and deployments.

    .venv/bin/python benchmarks/bench_retraining.py [--config examples/bikeshare/watcher.toml]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from watcher.config import Settings, load_config
from watcher.demo import dump_toml
from watcher.drift import engine
from watcher.errors import TrainingDataError
from watcher.registry import ModelRegistry
from watcher.retrain import steps
from watcher.retrain.bootstrap import EXAMPLE_WEEKS, bootstrap, load_example_data
from watcher.retrain.example_data import batch_and_labels, weekly_batches

REPO = Path(__file__).resolve().parents[1]

MODEL = "bikeshare"


@dataclass
class Strategy:
    name: str
    settings: Settings
    registry: ModelRegistry
    errors: list[pd.DataFrame] = field(default_factory=list)
    runs: int = 0
    deploys: int = 0
    failed: int = 0
    seconds: float = 0.0
    streak: int = 0
    prepared: engine.PreparedReference | None = None


def _config(src: Path, workdir: Path) -> Path:
    """The example config with state, source and registry moved into `workdir`."""
    raw = tomllib.loads(src.read_text(encoding="utf-8"))
    m = raw["models"][MODEL]
    m["source"] = {
        "kind": "directory",
        "path": str(workdir / "incoming"),
        "labels_path": str(workdir / "labels"),
    }
    m.pop("reference", None)
    raw["daemon"] = {"state_dir": str(workdir / "state")}
    raw["registry"] = {"path": str(workdir / "registry"), "keep_versions": 3}
    path = workdir / "watcher.toml"
    path.write_text(dump_toml(raw), encoding="utf-8")
    return path


def _prepared(s: Strategy) -> engine.PreparedReference:
    version = s.registry.production_version(MODEL)
    assert version is not None
    if s.prepared is None or s.prepared.version != version:
        cfg = s.settings.models[MODEL]
        specs, prediction = engine.specs_from_config(cfg)
        frame = s.registry.load_reference(MODEL, version)
        s.prepared = engine.prepare_reference(frame, specs, version=version, prediction=prediction)
    return s.prepared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "examples/bikeshare/watcher.toml")
    parser.add_argument("--weeks", type=int, default=None, help="stop after this many weeks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    data = load_example_data(load_config(args.config), MODEL)
    root = Path(tempfile.mkdtemp(prefix="bench-retraining-"))
    try:
        template = root / "template"
        template.mkdir()
        t0 = time.monotonic()
        v1 = bootstrap(
            load_config(_config(args.config, template)), MODEL, data, weeks=EXAMPLE_WEEKS
        )
        print(
            f"version 1 trained on weeks 1-{EXAMPLE_WEEKS} in {time.monotonic() - t0:.1f}s "
            f"(holdout MAE {v1.metrics['mae']:.1f}, features {v1.features})"
        )
        strategies = []
        for name in ("none", "weekly", "drift"):
            work = root / name
            shutil.copytree(template / "registry", work / "registry")
            settings = load_config(_config(args.config, work))
            strategies.append(Strategy(name, settings, ModelRegistry(settings.registry.path)))

        weeks = list(weekly_batches(data, first_week=EXAMPLE_WEEKS + 1))
        if args.weeks:
            weeks = weeks[: args.weeks]
        previous: dict[str, tuple[int, pd.DataFrame]] = {}
        for week, rows in weeks:
            for s in strategies:
                cfg = s.settings.models[MODEL]
                src = cfg.source
                version = s.registry.production_version(MODEL)
                assert version is not None
                info = s.registry.get(MODEL, version)
                estimator = s.registry.load_model(MODEL, version)
                pred = np.asarray(estimator.predict(rows[info.features]), dtype=float)
                batch, labels = batch_and_labels(rows, pred)
                s.errors.append(
                    pd.DataFrame(
                        {"month": rows["ts"].dt.month, "err": np.abs(pred - rows["bikers"])}
                    )
                )
                (src.path / "processed").mkdir(parents=True, exist_ok=True)
                assert src.labels_path is not None
                src.labels_path.mkdir(parents=True, exist_ok=True)
                batch.to_parquet(src.path / "processed" / f"week-{week:02d}.parquet", index=False)
                # Labels arrive one week late: last week's become available now.
                if s.name in previous:
                    prev_week, prev_labels = previous[s.name]
                    prev_labels.to_csv(src.labels_path / f"labels-{prev_week:02d}.csv", index=False)
                previous[s.name] = (week, labels)

                retrain = s.name == "weekly"
                if s.name == "drift":
                    result = engine.score(
                        _prepared(s),
                        batch,
                        drift_share=cfg.drift.drift_share,
                        num_stattest=cfg.drift.num_stattest,
                        cat_stattest=cfg.drift.cat_stattest,
                    )
                    s.streak = s.streak + 1 if result.dataset_drift else 0
                    if s.streak >= cfg.policy.consecutive:
                        retrain, s.streak = True, 0
                if retrain:
                    t0 = time.monotonic()
                    ctx = steps.RunContext(s.settings, MODEL, f"{s.name}-week-{week:02d}")
                    try:
                        outcome = steps.run_all(ctx)
                    except TrainingDataError as exc:  # the DAG run would fail the same way
                        s.failed += 1
                        print(f"  {s.name} run after week {week} failed: {exc.message}")
                    else:
                        s.deploys += outcome.version is not None
                    s.seconds += time.monotonic() - t0
                    s.runs += 1
            print(
                f"week {week:2d}: "
                + "  ".join(
                    f"{s.name} v{s.registry.production_version(MODEL)}" for s in strategies
                ),
                flush=True,
            )

        months = [
            "Jan",
            "Feb",
            "Mar",
            "Apr",
            "May",
            "Jun",
            "Jul",
            "Aug",
            "Sep",
            "Oct",
            "Nov",
            "Dec",
        ]
        table = {s.name: pd.concat(s.errors).groupby("month")["err"].mean() for s in strategies}
        overall = {s.name: pd.concat(s.errors)["err"].mean() for s in strategies}
        print()
        header = f"| month | {' | '.join(f'MAE {s.name}' for s in strategies)} |"
        print(header)
        print("|" + "---|" * (len(strategies) + 1))
        for m in sorted(table["none"].index):
            print(
                f"| {months[m - 1]} | "
                + " | ".join(f"{table[s.name][m]:.1f}" for s in strategies)
                + " |"
            )
        print(
            f"| **all weeks {weeks[0][0]}-{weeks[-1][0]}** | "
            + " | ".join(f"**{overall[s.name]:.1f}**" for s in strategies)
            + " |"
        )
        print("| retraining runs | " + " | ".join(str(s.runs) for s in strategies) + " |")
        print("| deployed | " + " | ".join(str(s.deploys) for s in strategies) + " |")
        print("| failed (data) | " + " | ".join(str(s.failed) for s in strategies) + " |")
        print("| training time (s) | " + " | ".join(f"{s.seconds:.0f}" for s in strategies) + " |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
