"""The model registry: versions, checksums, trusted loading, atomic pointer, rollback, prune."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge

from watcher.errors import ChecksumMismatch, RegistryError
from watcher.registry import ModelRegistry, normalize_version, sha256_file

MODEL = "demo"


class NotAllowed:
    """A type no allowlist knows: a registry folder must not be able to load it."""

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.zeros(len(X))


def _frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "y": 3 * x + rng.normal(scale=0.1, size=n)})


def _register(registry: ModelRegistry, seed: int = 0, run_id: str | None = None) -> str:
    frame = _frame(seed=seed)
    model = Ridge().fit(frame[["x"]], frame["y"])
    info = registry.register(
        MODEL,
        estimator=model,
        reference=frame,
        metrics={"mae": 0.1 + seed, "r2": np.float64(0.9)},
        features=["x"],
        params={"alpha": 1.0},
        run_id=run_id,
        extra={"note": "test"},
    )
    return info.version


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def test_register_writes_a_complete_version_with_checksums(registry: ModelRegistry) -> None:
    assert registry.production_version(MODEL) is None
    assert registry.list_versions(MODEL) == []

    version = _register(registry, run_id="run-1")

    assert version == "1"
    info = registry.get(MODEL, "1")
    assert info.path == registry.root / MODEL / "versions" / "0001"
    assert sorted(p.name for p in info.path.iterdir()) == [
        "metadata.json",
        "model.skops",
        "reference.parquet",
    ]
    for artifact in info.artifacts.values():
        assert sha256_file(info.path / artifact.path) == artifact.sha256
    assert info.metrics == {"mae": 0.1, "r2": 0.9}
    assert info.features == ["x"]
    assert info.run_id == "run-1"
    assert info.training_rows == 40
    assert registry.find_run(MODEL, "run-1") == info
    # Registered is not promoted, and nothing temporary is left behind.
    assert registry.production_version(MODEL) is None
    assert [p.name for p in (registry.root / MODEL / "versions").iterdir()] == ["0001"]


def test_promote_switches_the_pointer_and_loads_verified_artifacts(
    registry: ModelRegistry,
) -> None:
    _register(registry)
    registry.promote(MODEL, "1")

    assert registry.production_version(MODEL) == "1"
    assert (registry.root / MODEL / "PRODUCTION").read_text() == "1\n"
    model = registry.load_model(MODEL, "1")
    reference = registry.load_reference(MODEL, "1")
    pd.testing.assert_frame_equal(reference, _frame())
    assert np.allclose(model.predict(reference[["x"]]), reference["y"], atol=0.5)


def test_a_tampered_reference_is_refused_with_a_clear_error(registry: ModelRegistry) -> None:
    _register(registry)
    registry.promote(MODEL, "1")
    path = registry.get(MODEL, "1").path / "reference.parquet"
    changed = _frame()
    changed.loc[0, "x"] = 1000.0
    changed.to_parquet(path, index=False)

    with pytest.raises(ChecksumMismatch) as caught:
        registry.load_reference(MODEL, "1")

    message = str(caught.value)
    assert f"model {MODEL} version 1" in message
    assert "reference.parquet has SHA-256" in message
    assert "refusing to load it" in message
    assert f"watcher rollback {MODEL}" in message


def test_a_tampered_model_is_refused_and_cannot_be_promoted(registry: ModelRegistry) -> None:
    _register(registry)
    model_file = registry.get(MODEL, "1").path / "model.skops"
    model_file.write_bytes(model_file.read_bytes() + b"\0")

    with pytest.raises(ChecksumMismatch, match=r"model\.skops has SHA-256"):
        registry.load_model(MODEL, "1")
    with pytest.raises(ChecksumMismatch):
        registry.promote(MODEL, "1")
    assert registry.production_version(MODEL) is None


def test_a_model_of_an_untrusted_type_is_not_loaded(registry: ModelRegistry) -> None:
    info = registry.register(
        MODEL,
        estimator=NotAllowed(),
        reference=_frame(),
        metrics={},
        features=["x"],
        params={},
        run_id=None,
    )

    with pytest.raises(RegistryError, match="types watcher does not trust") as caught:
        registry.load_model(MODEL, info.version)
    assert "NotAllowed" in str(caught.value)


def test_a_missing_artifact_or_version_says_what_exists(registry: ModelRegistry) -> None:
    _register(registry)
    with pytest.raises(RegistryError, match="no version 7") as caught:
        registry.get(MODEL, "7")
    assert "known versions: 1" in str(caught.value)

    (registry.get(MODEL, "1").path / "reference.parquet").unlink()
    with pytest.raises(RegistryError, match="is missing"):
        registry.load_reference(MODEL, "1")


def test_rollback_goes_to_the_previous_production_version(registry: ModelRegistry) -> None:
    for seed in range(3):
        registry.promote(MODEL, _register(registry, seed=seed))
    assert registry.production_version(MODEL) == "3"

    assert registry.rollback(MODEL) == "2"
    assert registry.production_version(MODEL) == "2"
    assert registry.rollback(MODEL, to="v3") == "3"
    # Back from 3 goes to where production was before: 2, not blindly "3 - 1".
    registry.promote(MODEL, "1")
    assert registry.rollback(MODEL) == "3"
    history = registry.promotions(MODEL)
    assert [h["version"] for h in history] == ["1", "2", "3", "2", "3", "1", "3"]
    assert history[-1]["reason"] == "rollback from 1"

    with pytest.raises(RegistryError, match="no version 9 to roll back to"):
        registry.rollback(MODEL, to="9")


def test_rollback_without_an_earlier_version_is_an_error(registry: ModelRegistry) -> None:
    registry.promote(MODEL, _register(registry))
    with pytest.raises(RegistryError, match="no version before 1"):
        registry.rollback(MODEL)


def test_prune_keeps_the_newest_and_never_the_production_one(registry: ModelRegistry) -> None:
    for seed in range(5):
        _register(registry, seed=seed)
    registry.promote(MODEL, "2")

    removed = registry.prune(MODEL, keep=2)

    assert removed == ["1", "3"]
    assert [v.version for v in registry.list_versions(MODEL)] == ["2", "4", "5"]
    assert registry.production_version(MODEL) == "2"
    # The next version number continues after the newest, never reusing a pruned one.
    assert _register(registry, seed=9) == "6"


def test_concurrent_registrations_get_distinct_versions(registry: ModelRegistry) -> None:
    versions: list[str] = []
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            versions.append(_register(registry, seed=seed))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sorted(versions, key=int) == ["1", "2", "3", "4"]
    for info in registry.list_versions(MODEL):
        registry.verify(MODEL, info.version)


def test_run_records_keep_each_runs_decision(registry: ModelRegistry) -> None:
    run_id = "manual__2011-05-01T00:00:00+00:00"
    path = registry.record_run(MODEL, run_id, {"deployed": False, "reason": "not better"})

    assert path.name == "manual__2011-05-01T00_00_00_00_00.json"
    assert registry.run_record(MODEL, run_id) == {"deployed": False, "reason": "not better"}
    assert registry.run_record(MODEL, "other") is None
    assert json.loads(path.read_text())["reason"] == "not better"


@pytest.mark.parametrize(("given", "canonical"), [("0003", "3"), ("v12", "12"), (4, "4")])
def test_version_numbers_are_normalized(given: str | int, canonical: str) -> None:
    assert normalize_version(given) == canonical


@pytest.mark.parametrize("bad", ["", "0", "latest", "v-1"])
def test_bad_version_numbers_are_refused(bad: str) -> None:
    with pytest.raises(RegistryError, match="is not a version number"):
        normalize_version(bad)


def test_model_names_cannot_escape_the_root(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="not a valid model name"):
        registry.production_version("../etc")


def test_cli_lists_versions_and_rolls_back(registry: ModelRegistry, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from watcher.cli import app

    for seed in range(2):
        registry.promote(MODEL, _register(registry, seed=seed, run_id=f"run-{seed}"))
    config = tmp_path / "watcher.toml"
    config.write_text(f'[registry]\npath = "{registry.root}"\n')
    runner = CliRunner()

    listed = runner.invoke(app, ["models", "--config", str(config)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    lines = [ln for ln in listed.output.splitlines() if MODEL in ln]
    assert len(lines) == 2
    assert "production" in lines[1]
    assert "run-1" in lines[1]
    assert "production" not in lines[0]

    rolled = runner.invoke(app, ["rollback", MODEL, "--config", str(config)])
    assert rolled.exit_code == 0, rolled.output
    assert f"{MODEL}: production switched from version 2 to version 1" in rolled.output
    assert registry.production_version(MODEL) == "1"

    refused = runner.invoke(app, ["rollback", MODEL, "--to", "5", "--config", str(config)])
    assert refused.exit_code == 2
    assert "no version 5 to roll back to" in refused.output
