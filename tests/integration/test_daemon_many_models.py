"""A few hundred models in one `watcher run` process (issue 18): the daemon is ready in
seconds (references are read and prepared on each model's first batch), every model is
scored, and with the default `[metrics] detail` ("model") each model exports the
documented number of series (README, "Many models in one daemon"), whatever its number
of features."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from harness import DaemonProcess
from prometheus_client.parser import text_string_to_metric_families
from support import NUMERIC, drop, frame, model_toml, wait_for

from watcher.dev.localservices import free_port

MODELS = 200
# Series carrying model="<name>" once a model has scored a batch, with detail = "model".
SERIES_PER_MODEL = 17


def _scrape(port: int) -> tuple[list[tuple[str, dict[str, str], float]], int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        body = resp.read()
    samples = [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    ]
    return samples, len(body)


def _scored(samples: list[tuple[str, dict[str, str], float]]) -> set[str]:
    return {
        labels["model"]
        for name, labels, value in samples
        if name == "watcher_batches_total" and labels.get("outcome") == "scored" and value >= 1
    }


def test_a_daemon_with_200_models_scores_every_one(tmp_path: Path) -> None:
    port = free_port()
    reference = tmp_path / "reference.parquet"
    frame(2_000, seed=1).to_parquet(reference)
    models = []
    for i in range(MODELS):
        incoming = tmp_path / "incoming" / f"m{i}"
        incoming.mkdir(parents=True)
        models.append(model_toml(incoming, reference, name=f"m{i}"))
    cfg = tmp_path / "watcher.toml"
    cfg.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
poll_interval_seconds = 0.2

[metrics]
port = {port}

[registry]
path = "{tmp_path / "registry"}"
"""
        + "".join(models)
    )
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        started = time.monotonic()

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, 180, what="/readyz with 200 models")
        startup = time.monotonic() - started
        # Lazy preparation: start-up reads each model's config and version, not its data
        # (the daemon process's own imports included; 200 eager preparations took minutes).
        assert startup < 60, startup
        batch = frame(500, seed=7, shift=0.5)
        for i in range(MODELS):
            drop(tmp_path / "incoming" / f"m{i}", "b1.parquet", batch)
        wait_for(
            lambda: len(_scored(_scrape(port)[0])) == MODELS,
            300,
            interval=1.0,
            what="every model scored once",
        )
        samples, size = _scrape(port)
        per_model: dict[str, int] = {}
        for _, labels, _ in samples:
            if labels.get("model"):
                per_model[labels["model"]] = per_model.get(labels["model"], 0) + 1
        assert len(per_model) == MODELS
        assert set(per_model.values()) == {SERIES_PER_MODEL}, sorted(set(per_model.values()))
        # No per-feature series at this detail, and the stage histogram is shared.
        assert not any("feature" in labels for _, labels, _ in samples)
        durations = [labels for n, labels, _ in samples if n.startswith("watcher_batch_duration")]
        assert {labels["stage"] for labels in durations} >= {"load", "quality", "drift"}
        assert {labels["model"] for labels in durations} == {""}
        names: dict[str, int] = {}
        for n, labels, _ in samples:
            if labels.get("model") == "m0":
                names[n] = names.get(n, 0) + 1
        print(sorted(names.items()))
        print(
            f"{MODELS} models x {len(NUMERIC) + 1} features: start-up {startup:.1f}s, "
            f"{len(samples)} series, scrape {size / 1024:.0f} KB"
        )
        assert daemon.stop() == 0
    finally:
        daemon.kill()
