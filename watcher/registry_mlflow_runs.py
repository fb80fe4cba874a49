"""The MLflow tracking side of the `mlflow` registry backend (watcher/registry_mlflow.py):
calling the client, the experiment of each model, and the MLflow run of each retraining
DAG run (its params, metrics, tags, artifacts, the hand-off folder and the run record).

Split from the registry side (versions, the champion alias) to keep one concern a module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from watcher.errors import RegistryError
from watcher.registry import _MODEL_NAME, _json_default, sha256_file

if TYPE_CHECKING:
    from watcher.config import RegistryConfig

T = TypeVar("T")

HANDOFF = "handoff"
RUN_TAG = "watcher.run_id"


def _quote(text: str) -> str:
    """A value inside an MLflow search filter's single quotes."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


class MlflowRuns:
    """The MLflow client as watcher uses it: errors as `RegistryError`, the experiment of a
    model, and the MLflow run of each retraining run (params, metrics, tags, artifacts)."""

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
