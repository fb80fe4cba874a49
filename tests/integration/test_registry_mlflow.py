"""The MLflow registry backend against a real `mlflow server` (tests/fixtures_mlflow.py).

What MLflow holds is checked with MLflow's own client, independently of watcher's code:
registered model versions, the `champion` alias, the tags with each file's SHA-256.
Each test uses its own registered-model prefix and experiment prefix on the shared server.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fixtures_mlflow import MlflowServer
from harness import watcher_cli
from mlflow.tracking import MlflowClient
from sklearn.linear_model import Ridge

from watcher.config import RegistryConfig, Settings
from watcher.errors import ChecksumMismatch, RegistryError
from watcher.reference import load_reference
from watcher.registry import ModelRegistry
from watcher.registry_backend import open_registry
from watcher.registry_migrate import migrate
from watcher.registry_mlflow import CHAMPION, MlflowRegistry
from watcher.reports import report_path
from watcher.run_artifacts import attach_drift_reports
from watcher.state import RunRecord

MODEL = "demo"


class NotAllowed:
    """A type no allowlist knows: the artifact store must not be able to load it."""

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.zeros(len(X))


def _frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "y": 3 * x + rng.normal(scale=0.1, size=n)})


def _register(registry: Any, seed: int = 0, run_id: str | None = None, model: Any = None) -> str:
    frame = _frame(seed=seed)
    est = model if model is not None else Ridge().fit(frame[["x"]], frame["y"])
    info = registry.register(
        MODEL,
        estimator=est,
        reference=frame,
        metrics={"mae": 0.1 + seed, "r2": np.float64(0.9)},
        features=["x"],
        params={"alpha": 1.0},
        run_id=run_id,
        extra={"note": "test"},
    )
    return str(info.version)


def _cfg(server: MlflowServer) -> RegistryConfig:
    tag = f"t{uuid.uuid4().hex[:8]}"
    return RegistryConfig(
        **server.registry_config(model_name_prefix=f"{tag}-", experiment_prefix=f"watcher-{tag}")
    )


@pytest.fixture
def cfg(mlflow_server: MlflowServer) -> RegistryConfig:
    return _cfg(mlflow_server)


@pytest.fixture
def registry(cfg: RegistryConfig) -> MlflowRegistry:
    reg = open_registry(cfg)
    assert isinstance(reg, MlflowRegistry)
    return reg


@pytest.fixture
def client(mlflow_server: MlflowServer) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)


def test_versions_are_registered_model_versions_and_production_is_the_alias(
    registry: MlflowRegistry, client: MlflowClient, cfg: RegistryConfig
) -> None:
    name = f"{cfg.model_name_prefix}{MODEL}"
    assert registry.production_version(MODEL) is None
    assert registry.list_versions(MODEL) == []

    v1 = _register(registry, seed=0, run_id="run-1")
    v2 = _register(registry, seed=1, run_id="run-2")
    assert (v1, v2) == ("1", "2")
    assert registry.production_version(MODEL) is None  # registered, not deployed

    registry.promote(MODEL, v2, reason="test")
    assert registry.production_version(MODEL) == "2"
    assert client.get_model_version_by_alias(name, CHAMPION).version == "2"

    # The SHA-256 of each file is recorded in the tracking database.
    mv = client.get_model_version(name, "2")
    assert {"watcher.sha256.model", "watcher.sha256.reference", "watcher.sha256.metadata"} <= set(
        mv.tags
    )
    assert mv.tags["watcher.run_id"] == "run-2"

    info = registry.get(MODEL, "2")
    assert info.version == "2"
    assert info.run_id == "run-2"
    assert info.metrics == {"mae": 1.1, "r2": 0.9}
    assert info.features == ["x"]
    assert registry.find_run(MODEL, "run-1") is not None
    assert registry.find_run(MODEL, "run-1").version == "1"  # type: ignore[union-attr]
    assert registry.find_run(MODEL, "nope") is None
    assert [v.version for v in registry.list_versions(MODEL)] == ["1", "2"]
    assert registry.models() == [MODEL]

    est = registry.load_model(MODEL, "2")
    ref = registry.load_reference(MODEL, "2")
    pd.testing.assert_frame_equal(ref, _frame(seed=1))
    assert np.allclose(est.predict(ref[["x"]]), ref["y"], atol=1.0)

    with pytest.raises(RegistryError, match="no version 7"):
        registry.get(MODEL, "7")


def test_rollback_moves_the_alias_and_prune_keeps_the_champion(
    registry: MlflowRegistry, client: MlflowClient, cfg: RegistryConfig
) -> None:
    name = f"{cfg.model_name_prefix}{MODEL}"
    for seed in range(3):
        registry.promote(MODEL, _register(registry, seed=seed, run_id=f"run-{seed}"))
    assert registry.production_version(MODEL) == "3"

    assert registry.rollback(MODEL) == "2"
    assert client.get_model_version_by_alias(name, CHAMPION).version == "2"
    assert registry.rollback(MODEL, to="1") == "1"
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"
    history = registry.promotions(MODEL)
    assert [(h["version"], h["previous"]) for h in history][-2:] == [("2", "3"), ("1", "2")]
    with pytest.raises(RegistryError, match="no version 9"):
        registry.rollback(MODEL, to="9")

    removed = registry.prune(MODEL, keep=1)
    assert removed == ["2"]  # 3 is the newest, 1 is the champion
    assert [v.version for v in registry.list_versions(MODEL)] == ["1", "3"]


def _artifact_file(server: MlflowServer, sha_tag_value: str, filename: str) -> Path:
    from watcher.registry import sha256_file

    for path in server.artifacts.rglob(filename):
        if sha256_file(path) == sha_tag_value:
            return path
    raise AssertionError(f"{filename} not found in {server.artifacts}")


def test_a_tampered_artifact_is_refused(
    registry: MlflowRegistry,
    client: MlflowClient,
    cfg: RegistryConfig,
    mlflow_server: MlflowServer,
) -> None:
    version = _register(registry, run_id="run-t")
    registry.promote(MODEL, version)
    mv = client.get_model_version(f"{cfg.model_name_prefix}{MODEL}", version)
    # Someone with write access to the artifact store (not to the tracking database)
    # changes the model file.
    path = _artifact_file(mlflow_server, mv.tags["watcher.sha256.model"], "model.skops")
    path.write_bytes(path.read_bytes() + b"\0")

    with pytest.raises(ChecksumMismatch, match="refusing to load it"):
        registry.load_model(MODEL, version)
    with pytest.raises(ChecksumMismatch):
        registry.promote(MODEL, version)
    # The reference is untouched and still loads.
    assert len(registry.load_reference(MODEL, version)) == 40


def test_untrusted_types_are_refused_and_nothing_is_unpickled(registry: MlflowRegistry) -> None:
    version = _register(registry, run_id="run-u", model=NotAllowed())
    with pytest.raises(RegistryError, match="does not trust"):
        registry.load_model(MODEL, version)


def test_the_daemon_follows_the_champion_alias(
    cfg: RegistryConfig, registry: MlflowRegistry, tmp_path: Path
) -> None:
    """What the daemon loads as its reference: the version the alias points at."""
    settings = Settings(
        registry=cfg.model_dump(),
        models={
            MODEL: {
                "source": {"kind": "directory", "path": str(tmp_path)},
                "columns": {"numeric": ["x"], "target": "y"},
            }
        },
    )
    for seed in range(2):
        registry.promote(MODEL, _register(registry, seed=seed, run_id=f"r{seed}"))
    ref = load_reference(MODEL, settings.models[MODEL], settings)
    assert ref.version == "v2"
    # The frame is not kept once prepared; reading it again goes through the MLflow backend.
    pd.testing.assert_frame_equal(ref.load_frame(), _frame(seed=1))
    registry.rollback(MODEL)
    assert load_reference(MODEL, settings.models[MODEL], settings).version == "v1"


def test_migrate_copies_a_file_registry_and_is_rerunnable(
    registry: MlflowRegistry, client: MlflowClient, cfg: RegistryConfig, tmp_path: Path
) -> None:
    source = ModelRegistry(tmp_path / "registry")
    for seed in range(3):
        _register(source, seed=seed, run_id=f"file-run-{seed}")
    source.promote(MODEL, "2")

    copied = migrate(source, registry)
    assert [(c.source_version, c.target_version, c.skipped) for c in copied] == [
        ("1", "1", False),
        ("2", "2", False),
        ("3", "3", False),
    ]
    assert registry.production_version(MODEL) == "2"
    assert (
        client.get_model_version_by_alias(f"{cfg.model_name_prefix}{MODEL}", CHAMPION).version
        == "2"
    )
    for v in ("1", "2", "3"):
        pd.testing.assert_frame_equal(
            registry.load_reference(MODEL, v), source.load_reference(MODEL, v)
        )
        assert registry.get(MODEL, v).run_id == f"file-run-{int(v) - 1}"

    again = migrate(source, registry)
    assert all(c.skipped for c in again)
    assert len(registry.list_versions(MODEL)) == 3


def test_mlflow_down_is_a_registry_error_saying_so(mlflow_server: MlflowServer) -> None:
    # A port nothing listens on: the same failure as a server that went down.
    from watcher.dev.localservices import free_port

    cfg = RegistryConfig(
        backend="mlflow",
        tracking_uri=f"http://127.0.0.1:{free_port()}",
        request_retries=0,
        request_timeout_seconds=2,
    )
    registry = open_registry(cfg)
    with pytest.raises(RegistryError, match="cannot read registered model") as info:
        registry.production_version(MODEL)
    assert "MLflow server is up" in str(info.value)


def test_backend_mlflow_needs_an_http_tracking_uri() -> None:
    with pytest.raises(ValueError, match="needs tracking_uri"):
        RegistryConfig(backend="mlflow")
    with pytest.raises(ValueError, match="http"):
        RegistryConfig(backend="mlflow", tracking_uri="file:///tmp/mlruns")


def test_cli_models_rollback_and_migrate_on_mlflow(
    cfg: RegistryConfig, client: MlflowClient, tmp_path: Path
) -> None:
    """`watcher migrate-registry`, `watcher models --json` and `watcher rollback` as a person
    runs them, against the MLflow backend."""
    import json
    import subprocess

    from watcher.config import dump_toml

    source = ModelRegistry(tmp_path / "registry")
    for seed in range(2):
        source.promote(MODEL, _register(source, seed=seed, run_id=f"cli-{seed}"))
    config = tmp_path / "watcher.toml"
    registry_table = {k: v for k, v in cfg.model_dump(mode="json").items() if v is not None}
    config.write_text(
        dump_toml(
            {
                "registry": registry_table,
                "models": {
                    MODEL: {
                        "source": {"kind": "directory", "path": str(tmp_path)},
                        "columns": {"numeric": ["x"], "target": "y"},
                    }
                },
            }
        ),
        encoding="utf-8",
    )

    def watcher(*args: str) -> subprocess.CompletedProcess[str]:
        return watcher_cli(*args, "--config", str(config))

    done = watcher("migrate-registry", "--from", str(tmp_path / "registry"))
    assert done.returncode == 0, done.stderr
    assert "bikeshare" not in done.stdout
    assert f"{MODEL} version 2 copied as version 2" in done.stdout

    done = watcher("models", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)["models"][MODEL]
    assert doc["production"] == "2"
    assert [v["version"] for v in doc["versions"]] == ["1", "2"]

    done = watcher("rollback", MODEL)
    assert done.returncode == 0, done.stderr
    assert "from version 2 to version 1" in done.stdout
    name = f"{cfg.model_name_prefix}{MODEL}"
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"


def test_the_drift_reports_of_an_ended_run_go_to_its_mlflow_run(
    cfg: RegistryConfig, registry: MlflowRegistry, client: MlflowClient, tmp_path: Path
) -> None:
    """The daemon's reports (its own disk) reach the run's MLflow run: once, and only those
    of the batches named in the run's conf; a run MLflow never saw is left alone."""
    settings = Settings(
        registry=cfg.model_dump(),
        daemon={"state_dir": str(tmp_path / "state")},
        models={
            MODEL: {
                "source": {"kind": "directory", "path": str(tmp_path)},
                "columns": {"numeric": ["x"], "target": "y"},
            }
        },
    )
    rendered = report_path(settings.daemon.state_dir / "reports", MODEL, "b-2.parquet")
    rendered.parent.mkdir(parents=True)
    rendered.write_text("<html>evidently drift report</html>", encoding="utf-8")
    other = report_path(settings.daemon.state_dir / "reports", MODEL, "unrelated.parquet")
    other.write_text("<html>another batch</html>", encoding="utf-8")

    def run(run_id: str) -> RunRecord:
        conf = {"batches": ["b-1.parquet", "b-2.parquet"]}  # b-1 opened nothing: no report
        return RunRecord(run_id, MODEL, "dag", "failed", conf, 0.0, 0.0, 1.0, False)

    mlrun = registry.retrain_run(MODEL, "manual__r1", create=True)
    assert mlrun is not None
    assert attach_drift_reports(registry, settings, run("manual__r1")) == 1
    assert attach_drift_reports(registry, settings, run("manual__r1")) == 1  # a retried hook
    listed = [a.path for a in client.list_artifacts(mlrun, "drift")]
    assert listed == [f"drift/{rendered.name}"]
    local = client.download_artifacts(mlrun, f"drift/{rendered.name}", str(tmp_path / "dl"))
    assert Path(local).read_text(encoding="utf-8") == "<html>evidently drift report</html>"
    assert attach_drift_reports(registry, settings, run("manual__never_started")) == 0
    file_settings = settings.model_copy(update={"registry": RegistryConfig(path=tmp_path / "r")})
    assert attach_drift_reports(registry, file_settings, run("manual__r1")) == 0
