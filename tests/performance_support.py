"""Labelled batches, a model-`m` config on a folder with labels, and the daemon's per-model
steps driven by hand; shared by the performance-trigger tests in every folder
(unit/test_performance_trigger.py, integration/test_policy_cli.py,
e2e/test_daemon_performance_airflow.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from support import drop, frame

from watcher.config import dump_toml, load_config
from watcher.metrics import Metrics
from watcher.model_quality import PerformanceTracker
from watcher.pipeline import ModelRuntime, Pipeline
from watcher.reference import load_reference
from watcher.sources.directory import DirectorySource
from watcher.state import StateStore


def labelled(n: int, seed: int, *, concept_shift: float = 0.0, start_id: int = 0) -> pd.DataFrame:
    """Features like the reference, a prediction `p` from the true relation, and a target
    `y`: `concept_shift` moves the target (not the inputs), so the model's loss rises
    while the input distribution stays put."""
    df = frame(n, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    df["p"] = 2 * df["a"] + df["b"]
    df["y"] = df["p"] + rng.normal(0, 1.0, n) + concept_shift
    df["id"] = np.arange(start_id, start_id + n)
    return df


def config(
    tmp: Path,
    top: dict[str, Any] | None = None,
    *,
    reference_rows: int = 800,
    drift: dict[str, Any] | None = None,
    drift_signal: dict[str, Any] | None = None,
    reference_frame: pd.DataFrame | None = None,
    model: dict[str, Any] | None = None,
    **policy: Any,
) -> Path:
    """Model `m` on a folder with labels; `top` overrides top-level tables, `policy` keys of
    `[models.m.policy]`, `drift` keys of `[models.m.drift]`, `model` keys of `[models.m]`
    (whole tables: `columns`, `retrain`); `reference_frame` replaces the regression one."""
    reference = tmp / "reference.parquet"
    # 800 rows: evidently's rule picks KS below 1000 (see test_small_batches for above).
    if reference_frame is None:
        reference_frame = labelled(reference_rows, seed=1).drop(columns=["id"])
    reference_frame.to_parquet(reference)
    raw = {
        "daemon": {"state_dir": str(tmp / "state")},
        "metrics": {"enabled": False},
        # Airflow on, so triggers are real outbox actions; nothing here delivers them.
        "airflow": {"enabled": True},
        "registry": {"path": str(tmp / "registry")},
        "models": {
            "m": {
                "reference": str(reference),
                "source": {
                    "kind": "directory",
                    "path": str(tmp / "incoming"),
                    "labels_path": str(tmp / "labels"),
                    "settle_seconds": 0,
                },
                "columns": {
                    "numeric": ["a", "b", "température", "wind speed"],
                    "categorical": ["c"],
                    "prediction": "p",
                    "target": "y",
                    "id": "id",
                },
                "policy": {"triggers": ["drift", "performance"], "cooldown_seconds": 0}
                | policy
                | ({"drift": drift_signal} if drift_signal else {}),
                "drift": drift or {},
            }
            | (model or {})
        },
    }
    raw |= top or {}
    raw["models"] = raw.pop("models")  # tables after the top-level ones
    path = tmp / "watcher.toml"
    path.write_text(dump_toml(raw), encoding="utf-8")
    (tmp / "incoming").mkdir()
    (tmp / "labels").mkdir()
    return path


@dataclass
class Loop:
    """The daemon's per-model steps, driven by hand: score a batch, deliver labels."""

    tmp: Path
    pipeline: Pipeline
    rt: ModelRuntime
    store: StateStore
    metrics: Metrics

    def period(self, i: int, shift: float = 0.0, rows: int = 200) -> None:
        """Serve period i (scored now) and deliver the labels of period i (read now)."""
        data = labelled(rows, seed=100 + i, concept_shift=shift, start_id=i * 10_000)
        drop(self.tmp / "incoming", f"b{i:02d}.parquet", data.drop(columns=["y"]))
        asyncio.run(self.rt.source.poll())  # a file is taken once it looks the same twice
        refs = asyncio.run(self.rt.source.poll())
        assert [r.batch_id for r in refs] == [f"b{i:02d}.parquet"]
        assert self.pipeline.process(self.rt, refs[0]).status == "scored"
        drop(self.tmp / "labels", f"labels-{i:02d}.csv", data[["id", "y"]])
        # A label file is read once it looks the same twice (it may still be written).
        assert self.pipeline.on_labels(self.rt) is None
        self.pipeline.on_labels(self.rt)

    def decisions(self) -> list[tuple[str, str, str | None]]:
        """Label decisions, oldest first: (point, outcome, signal)."""
        return [
            (d.batch_id or "", d.outcome, d.signal)
            for d in reversed(self.store.decisions("m", 1000))
            if (d.batch_id or "").startswith("labels:")
        ]

    def triggers(self) -> list[dict[str, Any]]:
        return [i for i in self.store.outbox_items("m") if i["kind"] == "trigger"]


def make_loop(cfg_path: Path) -> Loop:
    settings = load_config(cfg_path)
    store = StateStore(settings.daemon.state_dir / "state.db")
    metrics = Metrics()
    cfg = settings.models["m"]
    rt = ModelRuntime(
        "m",
        cfg,
        DirectorySource("m", cfg.source, store),  # type: ignore[arg-type]
        load_reference("m", cfg, settings),
        PerformanceTracker("m", cfg, settings.daemon.state_dir, store, metrics),
    )
    store.set_reference_version("m", rt.reference.version)
    return Loop(cfg_path.parent, Pipeline(settings, store, metrics), rt, store, metrics)
