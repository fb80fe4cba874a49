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
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from watcher.config import RegistryConfig

T = TypeVar("T")

CHAMPION = "champion"
HANDOFF = "handoff"
RUN_TAG = "watcher.run_id"
_PROMOTIONS_TAG = "watcher.promotions"
_ARTIFACT_PATH_TAG = "watcher.artifact_path"
_SHA_TAG = "watcher.sha256."
# MLflow caps tag values (5,000 characters on registered models in 3.x); the promotion
# history keeps its newest entries within this.
_MAX_TAG = 4500
_FILES = {"model": MODEL_FILE, "reference": REFERENCE_FILE}


def _quote(text: str) -> str:
    """A value inside an MLflow search filter's single quotes."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


class MlflowRegistry:
    """`watcher.registry_backend.Registry` on an MLflow tracking server."""

    def __init__(self, cfg: RegistryConfig) -> None:
        if not cfg.tracking_uri:
            raise RegistryError('registry.backend = "mlflow" needs registry.tracking_uri')
        self.cfg = cfg
        self.uri = cfg.tracking_uri
        self._configure_client_env(cfg)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self._experiments: dict[str, str] = {}

    @staticmethod
    def _configure_client_env(cfg: RegistryConfig) -> None:
        # The MLflow client takes credentials and HTTP retry settings only from its
        # environment variables; set them from the typed config when it has them.
        if cfg.username:
            os.environ["MLFLOW_TRACKING_USERNAME"] = cfg.username
        if cfg.password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = cfg.password.get_secret_value()
        if cfg.token is not None:
            os.environ["MLFLOW_TRACKING_TOKEN"] = cfg.token.get_secret_value()
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.request_retries)
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(cfg.request_timeout_seconds))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        # Progress bars on every download would flood task logs.
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

    # ---- calling MLflow ----------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            raise RegistryError(
                f"MLflow at {self.uri}: cannot {what}: {exc.message}",
                hint="check that the MLflow server is up and watcher's credentials "
                "(registry.username/password/token) are accepted",
            ) from exc
        except (RequestException, OSError) as exc:
            raise RegistryError(
                f"MLflow at {self.uri}: cannot {what}: {exc}",
                hint="check that the MLflow server is up and reachable",
            ) from exc

    def _missing(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """fn(...), or None when MLflow says the thing does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _experiment_id(self, model: str) -> str:
        name = f"{self.cfg.experiment_prefix}/{model}"
        if name in self._experiments:
            return self._experiments[name]

        def find_or_create() -> str:
            from mlflow.exceptions import MlflowException

            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return str(exp.experiment_id)
            try:
                return str(self.client.create_experiment(name, tags={"watcher.model": model}))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self.client.get_experiment_by_name(name)  # another writer won
                assert exp is not None
                return str(exp.experiment_id)

        self._experiments[name] = self._call(f"open experiment {name}", find_or_create)
        return self._experiments[name]

    def _model_name(self, model: str) -> str:
        """The registered model's name in MLflow."""
        if not _MODEL_NAME.match(model):
            raise RegistryError(f"{model!r} is not a valid model name")
        return self.cfg.model_name_prefix + model

    # ---- retraining runs -----------------------------------------------------------------

    def retrain_run(self, model: str, run_id: str, *, create: bool = False) -> str | None:
        """The MLflow run id of a retraining run (Airflow run id `run_id`), made if asked."""
        exp = self._experiment_id(model)

        def find() -> str | None:
            runs = self.client.search_runs(
                [exp], filter_string=f"tags.`{RUN_TAG}` = '{_quote(run_id)}'", max_results=1
            )
            return str(runs[0].info.run_id) if runs else None

        found = self._call(f"look up the run of {run_id}", find)
        if found is not None or not create:
            return found
        run = self._call(
            f"create the MLflow run of {run_id}",
            self.client.create_run,
            exp,
            tags={RUN_TAG: run_id, "watcher.model": model},
            run_name=run_id[:250],
        )
        return str(run.info.run_id)

    def log_params(self, mlrun: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # log_batch takes at most 100 params
            self._call(
                "log the run's parameters",
                self.client.log_batch,
                mlrun,
                params=items[start : start + 100],
            )

    def log_metrics(self, mlrun: str, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v == v]
        if items:
            self._call("log the run's metrics", self.client.log_batch, mlrun, metrics=items)

    def set_tags(self, mlrun: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._call(f"tag the run ({key})", self.client.set_tag, mlrun, key, value[:5000])

    def log_file(self, mlrun: str, path: Path, artifact_path: str | None = None) -> None:
        self._call(f"upload {path.name}", self.client.log_artifact, mlrun, str(path), artifact_path)

    def end_run(self, mlrun: str, status: str = "FINISHED") -> None:
        self._call("end the MLflow run", self.client.set_terminated, mlrun, status)

    def download_dir(self, mlrun: str, artifact_path: str, dst: Path) -> dict[str, str]:
        """Copy the files under a run's artifact folder into dst; {name: sha256}."""
        listed = self._call(
            f"list {artifact_path}", self.client.list_artifacts, mlrun, artifact_path
        )
        files = [a for a in listed if not a.is_dir]
        if not files:
            return {}
        dst.mkdir(parents=True, exist_ok=True)
        got: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="watcher-mlflow-") as tmp:
            local = Path(
                self._call(
                    f"download {artifact_path}",
                    self.client.download_artifacts,
                    mlrun,
                    artifact_path,
                    tmp,
                )
            )
            for src in local.iterdir():
                if src.is_file():
                    shutil.move(str(src), dst / src.name)
                    got[src.name] = sha256_file(dst / src.name)
        return got

    # ---- reading -------------------------------------------------------------------------

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
        current = self.production_version(model)
        existing = {mv.version for mv in self._versions(model)}
        if to is not None:
            target = normalize_version(to)
            if target not in existing:
                raise RegistryError(
                    f"model {model} has no version {target} to roll back to",
                    hint=f"known versions: {', '.join(sorted(existing, key=int)) or 'none'}",
                )
        else:
            target = self._previous_production(model, current, existing)
        self.promote(model, target, reason=f"rollback from {current}")
        return target

    def _previous_production(self, model: str, current: str | None, existing: set[str]) -> str:
        for entry in reversed(self.promotions(model)):
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

    def record_run(self, model: str, run_id: str, record: Mapping[str, Any]) -> str:
        """The decision of a retraining run: tags on its MLflow run and run_record.json."""
        mlrun = self.retrain_run(model, run_id, create=True)
        assert mlrun is not None
        tags = {"watcher.deployed": str(bool(record.get("deployed"))).lower()}
        if "reason" in record:
            tags["watcher.gate_reason"] = str(record["reason"])
        if record.get("version") is not None:
            tags["watcher.version"] = str(record["version"])
        self.set_tags(mlrun, tags)
        text = json.dumps(dict(record), indent=2, default=_json_default)
        self._call("store the run record", self.client.log_text, mlrun, text, "run_record.json")
        return mlrun

    def run_record(self, model: str, run_id: str) -> dict[str, Any] | None:
        mlrun = self.retrain_run(model, run_id)
        if mlrun is None:
            return None
        with tempfile.TemporaryDirectory(prefix="watcher-mlflow-") as tmp:
            listed = self._call("list run artifacts", self.client.list_artifacts, mlrun)
            if not any(a.path == "run_record.json" for a in listed):
                return None
            path = self._call(
                "download the run record",
                self.client.download_artifacts,
                mlrun,
                "run_record.json",
                tmp,
            )
            data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        return data
