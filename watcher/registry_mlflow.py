"""The `mlflow` registry backend: model versions, production and run records on an MLflow
tracking server, so the DAG's workers and the daemon share no disk.

    experiment "<prefix>/<model>"          one MLflow run per retraining DAG run, tagged
                                           watcher.run_id = the Airflow run id
        run artifacts  handoff/...         what one DAG task hands the next (watcher/retrain/
                                           handoff.py): data.parquet, features.json, ...
                       registry/<uuid>/    model.skops, reference.parquet, metadata.json of a
                                           version this run registered
                       run_record.json     what the run decided (record_run)
        params / metrics / tags            retrain config and trigger reason / holdout figures
                                           of challenger and champion / the gate decision
    registered model "<model>"             version N = registry/<uuid>/ of the run that made
                                           it, tagged with the SHA-256 of each file;
                                           alias `champion` = the production version;
                                           tag watcher.promotions = the alias's history

Models are stored as plain artifacts in skops format, not as an MLflow pyfunc flavour: a
pyfunc model is loaded with cloudpickle (`mlflow.pyfunc.load_model` unpickles the python
model), which would let whoever can write the artifact store run code in the daemon. Here
the same rule as the file registry holds: every file is checked against the SHA-256 that
was recorded in the tracking database (model version tags) when it was registered, and the
estimator is loaded by skops with watcher's allowlist of types. Nothing loads a pickle.

Every MLflow failure (server down, refused credentials) becomes a `RegistryError` saying
which server and what to do; inside the DAG it is retried like any transient error.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from watcher.errors import ChecksumMismatch, RegistryError
from watcher.registry import (
    _FORMAT,
    _MODEL_NAME,
    METADATA,
    MODEL_FILE,
    REFERENCE_FILE,
    Artifact,
    VersionInfo,
    _json_default,
    load_trusted_model,
    normalize_version,
    save_model,
    sha256_file,
)
from watcher.registry_backend import roll_back
from watcher.registry_mlflow_runs import HANDOFF, RUN_TAG, MlflowRuns, _quote

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

__all__ = ["CHAMPION", "HANDOFF", "RUN_TAG", "MlflowRegistry"]

CHAMPION = "champion"
_PROMOTIONS_TAG = "watcher.promotions"
_ARTIFACT_PATH_TAG = "watcher.artifact_path"
_SHA_TAG = "watcher.sha256."
# MLflow caps tag values (5,000 characters on registered models in 3.x); the promotion
# history keeps its newest entries within this.
_MAX_TAG = 4500
_FILES = {"model": MODEL_FILE, "reference": REFERENCE_FILE}


class MlflowRegistry(MlflowRuns):
    """`watcher.registry_backend.Registry` on an MLflow tracking server."""

    def production_version(self, model: str) -> str | None:
        name = self._model_name(model)
        rm = self._call(
            f"read registered model {name}", self._missing, self.client.get_registered_model, name
        )
        if rm is None:
            return None
        version = (rm.aliases or {}).get(CHAMPION)
        return normalize_version(version) if version else None

    def _version(self, model: str, version: str) -> ModelVersion:
        name = self._model_name(model)
        v = normalize_version(version)
        mv: ModelVersion | None = self._call(
            f"read version {v} of {name}",
            self._missing,
            self.client.get_model_version,
            name,
            v,
        )
        if mv is None:
            known = ", ".join(i.version for i in self.list_versions(model)) or "none"
            raise RegistryError(
                f"model {model} has no version {v} in MLflow at {self.uri}",
                hint=f"known versions: {known}",
            )
        return mv

    def _download_checked(self, mv: ModelVersion, filename: str, sha: str, dst: Path) -> Path:
        """Download one file of a version and check it against the SHA-256 recorded in the
        tracking database when it was registered."""
        base = (mv.tags or {}).get(_ARTIFACT_PATH_TAG)
        if not base or not mv.run_id:
            raise RegistryError(
                f"model {mv.name} version {mv.version} was not registered by watcher "
                "(no watcher.artifact_path tag)",
                hint="register versions with watcher (retraining, bootstrap or "
                "`watcher registry migrate`)",
            )
        local = Path(
            self._call(
                f"download {filename} of {mv.name} version {mv.version}",
                self.client.download_artifacts,
                mv.run_id,
                f"{base}/{filename}",
                str(dst),
            )
        )
        actual = sha256_file(local)
        if actual != sha:
            raise ChecksumMismatch(
                f"model {mv.name} version {mv.version}: {filename} in the MLflow artifact "
                f"store has SHA-256 {actual[:16]}…, but {sha[:16]}… was recorded when it was "
                "registered; refusing to load it",
                hint="the artifact was changed or damaged after registration; restore it, or "
                f"run `watcher rollback {mv.name.removeprefix(self.cfg.model_name_prefix)}` "
                "to move the champion alias to another version",
            )
        return local

    def _sha(self, mv: ModelVersion, what: str) -> str:
        sha = (mv.tags or {}).get(_SHA_TAG + what)
        if not sha:
            raise RegistryError(
                f"model {mv.name} version {mv.version} has no recorded SHA-256 of its {what}",
                hint="only versions registered by watcher can be used",
            )
        return sha

    def _info(self, mv: ModelVersion) -> VersionInfo:
        with tempfile.TemporaryDirectory(prefix="watcher-mlflow-") as tmp:
            path = self._download_checked(mv, METADATA, self._sha(mv, "metadata"), Path(tmp))
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise RegistryError(f"{mv.name} v{mv.version}: metadata is not JSON") from exc
        info = VersionInfo.from_json(data, Path())
        return replace(info, version=str(mv.version))

    def get(self, model: str, version: str) -> VersionInfo:
        return self._info(self._version(model, version))

    def _versions(self, model: str) -> list[ModelVersion]:
        name = self._model_name(model)
        found = self._call(
            f"list versions of {name}",
            self.client.search_model_versions,
            f"name = '{_quote(name)}'",
        )
        return sorted(found, key=lambda mv: int(mv.version))

    def list_versions(self, model: str) -> list[VersionInfo]:
        return [self._info(mv) for mv in self._versions(model)]

    def models(self) -> list[str]:
        found = self._call(
            "list registered models",
            self.client.search_registered_models,
            "tags.`watcher.model` = 'true'",
        )
        prefix = self.cfg.model_name_prefix
        names = (rm.name[len(prefix) :] for rm in found if rm.name.startswith(prefix))
        return sorted(n for n in names if _MODEL_NAME.match(n))

    def find_run(self, model: str, run_id: str) -> VersionInfo | None:
        for mv in self._versions(model):
            if (mv.tags or {}).get(RUN_TAG) == run_id:
                return self._info(mv)
        return None

    def verify(self, model: str, version: str) -> VersionInfo:
        mv = self._version(model, version)
        info = self._info(mv)
        with tempfile.TemporaryDirectory(prefix="watcher-mlflow-") as tmp:
            for what, filename in _FILES.items():
                self._download_checked(mv, filename, self._sha(mv, what), Path(tmp))
        return info

    @contextmanager
    def _fetched(self, model: str, version: str, what: str) -> Iterator[Path]:
        mv = self._version(model, version)
        with tempfile.TemporaryDirectory(prefix="watcher-mlflow-") as tmp:
            yield self._download_checked(mv, _FILES[what], self._sha(mv, what), Path(tmp))

    def load_reference(self, model: str, version: str) -> pd.DataFrame:
        with self._fetched(model, version, "reference") as path:
            return pd.read_parquet(path)

    def load_model(self, model: str, version: str) -> Any:
        with self._fetched(model, version, "model") as path:
            try:
                return load_trusted_model(path)
            except RegistryError as exc:
                raise RegistryError(
                    f"model {model} version {normalize_version(version)}: {exc}", hint=exc.hint
                ) from exc

    # ---- writing -------------------------------------------------------------------------

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        def create() -> None:
            try:
                self.client.create_registered_model(
                    name,
                    tags={"watcher.model": "true"},
                    description="Registered by watcher: skops models with SHA-256 tags; "
                    "the `champion` alias is the production version.",
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

        self._call(f"create registered model {name}", create)

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
    ) -> VersionInfo:
        """A new version (not yet champion): files logged to the retraining run's artifacts,
        then a model version pointing at them with their SHA-256 as tags."""
        name = self._model_name(model)
        mlrun = self.retrain_run(model, run_id or f"register-{uuid.uuid4().hex}", create=True)
        assert mlrun is not None
        base = f"registry/{uuid.uuid4().hex}"
        with tempfile.TemporaryDirectory(prefix="watcher-mlflow-") as tmp:
            folder = Path(tmp)
            save_model(estimator, folder / MODEL_FILE)
            reference.to_parquet(folder / REFERENCE_FILE, index=False)
            artifacts = {
                what: Artifact(f, sha256_file(folder / f), (folder / f).stat().st_size)
                for what, f in _FILES.items()
            }
            info = VersionInfo(
                model=model,
                version="0",  # MLflow numbers the version; the number read back wins
                created_at=datetime.now(UTC),
                run_id=run_id,
                metrics={k: float(v) for k, v in metrics.items()},
                features=list(features),
                params=dict(params),
                artifacts=artifacts,
                training_window=training_window,
                training_rows=len(reference),
                extra=dict(extra or {}),
            )
            payload = info.to_json() | {"format": _FORMAT}
            (folder / METADATA).write_text(
                json.dumps(payload, indent=2, default=_json_default), encoding="utf-8"
            )
            meta_sha = sha256_file(folder / METADATA)
            self._call(
                "upload the version's files",
                self.client.log_artifacts,
                mlrun,
                str(folder),
                base,
            )
        self._ensure_registered_model(name)
        run = self._call("read the retraining run", self.client.get_run, mlrun)
        tags = {
            _ARTIFACT_PATH_TAG: base,
            _SHA_TAG + "model": artifacts["model"].sha256,
            _SHA_TAG + "reference": artifacts["reference"].sha256,
            _SHA_TAG + "metadata": meta_sha,
        }
        if run_id is not None:
            tags[RUN_TAG] = run_id
        mv = self._call(
            f"register a version of {name}",
            self.client.create_model_version,
            name,
            f"{run.info.artifact_uri}/{base}",
            run_id=mlrun,
            tags=tags,
            description=f"watcher run {run_id}" if run_id else "registered by watcher",
        )
        return replace(info, version=str(mv.version))

    def promotions(self, model: str) -> list[dict[str, Any]]:
        name = self._model_name(model)
        rm = self._call(
            f"read registered model {name}", self._missing, self.client.get_registered_model, name
        )
        if rm is None:
            return []
        text = (rm.tags or {}).get(_PROMOTIONS_TAG)
        entries: list[dict[str, Any]] = json.loads(text) if text else []
        return entries

    def promote(self, model: str, version: str, *, reason: str = "promote") -> None:
        """Move the champion alias to a version whose files all match their SHA-256."""
        info = self.verify(model, version)
        name = self._model_name(model)
        previous = self.production_version(model)
        self._call(
            f"move the {CHAMPION} alias of {name}",
            self.client.set_registered_model_alias,
            name,
            CHAMPION,
            info.version,
        )
        history = [
            *self.promotions(model),
            {
                "at": datetime.now(UTC).isoformat(),
                "version": info.version,
                "previous": previous,
                "reason": reason[:200],
            },
        ]
        while len(json.dumps(history)) > _MAX_TAG and len(history) > 1:
            history.pop(0)
        self._call(
            "record the promotion",
            self.client.set_registered_model_tag,
            name,
            _PROMOTIONS_TAG,
            json.dumps(history),
        )

    def rollback(self, model: str, to: str | None = None) -> str:
        return roll_back(self, model, {mv.version for mv in self._versions(model)}, to)

    def prune(self, model: str, keep: int) -> list[str]:
        """Delete all but the newest `keep` model versions, never the champion. The files stay
        in their run's artifacts: the run record keeps what was trained."""
        if keep < 1:
            raise RegistryError(f"keep must be at least 1, got {keep}")
        name = self._model_name(model)
        current = self.production_version(model)
        versions = [mv.version for mv in self._versions(model)]
        kept = set(versions[-keep:]) | ({current} if current else set())
        removed = []
        for version in versions:
            if version not in kept:
                self._call(
                    f"delete version {version} of {name}",
                    self.client.delete_model_version,
                    name,
                    version,
                )
                removed.append(str(version))
        return removed
