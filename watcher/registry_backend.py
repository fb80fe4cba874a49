"""What every model registry backend offers, and how the configured one is opened.

Two backends implement `Registry`:

- `file` (watcher/registry.py): a folder shared by the DAG's workers and the daemon, the
  embedded default;
- `mlflow` (watcher/registry_mlflow.py): an MLflow tracking server; versions are registered
  model versions, production is the `champion` alias, artifacts travel over HTTP through the
  server's artifact proxy, so nothing needs a shared disk.

The retraining steps, the daemon and the CLI only use this protocol.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pandas as pd

    from watcher.config import RegistryConfig
    from watcher.registry import VersionInfo


class Registry(Protocol):
    """Versions of models, which one is in production, and what retraining runs decided."""

    def production_version(self, model: str) -> str | None: ...

    def get(self, model: str, version: str) -> VersionInfo: ...

    def list_versions(self, model: str) -> list[VersionInfo]: ...

    def models(self) -> list[str]: ...

    def find_run(self, model: str, run_id: str) -> VersionInfo | None: ...

    def verify(self, model: str, version: str) -> VersionInfo: ...

    def load_reference(self, model: str, version: str) -> pd.DataFrame: ...

    def load_model(self, model: str, version: str) -> Any: ...

    def register(
        self,
        model: str,
        *,
        estimator: Any,
        reference: pd.DataFrame,
        metrics: dict[str, Any],
        features: list[str],
        params: dict[str, Any],
        run_id: str | None,
        extra: dict[str, Any] | None = None,
        training_window: tuple[datetime, datetime] | None = None,
    ) -> VersionInfo: ...

    def promote(self, model: str, version: str, *, reason: str = "promote") -> None: ...

    def promotions(self, model: str) -> list[dict[str, Any]]: ...

    def rollback(self, model: str, to: str | None = None) -> str: ...

    def prune(self, model: str, keep: int) -> list[str]: ...

    def record_run(self, model: str, run_id: str, record: Mapping[str, Any]) -> Any: ...

    def run_record(self, model: str, run_id: str) -> dict[str, Any] | None: ...


def open_registry(cfg: RegistryConfig) -> Registry:
    """The configured backend. MLflow is imported only when it is the one configured."""
    if cfg.backend == "mlflow":
        from watcher.registry_mlflow import MlflowRegistry

        return MlflowRegistry(cfg)
    from watcher.registry import ModelRegistry

    return ModelRegistry(Path(cfg.path))


def describe(cfg: RegistryConfig) -> str:
    """Where the registry is, for messages."""
    return f"MLflow at {cfg.tracking_uri}" if cfg.backend == "mlflow" else str(cfg.path)


def pointer_text(registry: Registry, model: str) -> str:
    """What the production pointer says, even when it is not a valid version."""
    from watcher.errors import WatcherError
    from watcher.registry import ModelRegistry

    if isinstance(registry, ModelRegistry):
        try:
            return (registry.root / model / "PRODUCTION").read_text(errors="replace").strip()
        except OSError:
            return ""
    # MLflow: the champion alias always names an existing version number.
    try:
        return registry.production_version(model) or ""
    except WatcherError:
        return ""


def roll_back(registry: Registry, model: str, existing: set[str], to: str | None) -> str:
    """Switch production back, on either backend: to `to`, or to the version that was in
    production before the current one (from the promotion history), else the newest older
    version. `existing` is the set of version numbers the registry holds."""
    from watcher.errors import RegistryError
    from watcher.registry import normalize_version

    current = registry.production_version(model)
    if to is not None:
        target = normalize_version(to)
        if target not in existing:
            raise RegistryError(
                f"model {model} has no version {target} to roll back to",
                hint=f"known versions: {', '.join(sorted(existing, key=int)) or 'none'}",
            )
    else:
        target = _previous_production(registry, model, current, existing)
    registry.promote(model, target, reason=f"rollback from {current}")
    return target


def _previous_production(
    registry: Registry, model: str, current: str | None, existing: set[str]
) -> str:
    from watcher.errors import RegistryError

    for entry in reversed(registry.promotions(model)):
        prev = entry.get("previous")
        if entry.get("version") == current and prev and prev != current and prev in existing:
            return str(prev)
    older = [int(v) for v in existing if current is None or int(v) < int(current)]
    if not older:
        raise RegistryError(
            f"model {model} has no version before {current} to roll back to",
            hint="pass --to VERSION to choose one (see `watcher models`)",
        )
    return str(max(older))
