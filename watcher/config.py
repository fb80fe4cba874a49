"""The one typed configuration of watcher.

Read from a TOML file, then overridden by environment variables with the prefix
``WATCHER_`` and ``__`` between levels (``WATCHER_METRICS__PORT=9200``,
``WATCHER_AIRFLOW__PASSWORD=...``). Secrets come from the environment or from a
``*_file`` field (Docker/Kubernetes secrets). Validated once at start; `watcher
check-config FILE` runs the same validation. Nothing else in watcher reads the environment.

Size: the house rule is one typed config, so every section's model lives here and
`Settings` validates the whole file in one place; it is 19 small section classes with
validation only, no behaviour.
"""

from __future__ import annotations

import json
import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from watcher.errors import ConfigError
from watcher.state.config import StateConfig

ModelFamily = Literal["hist_gradient_boosting", "random_forest", "linear"]
# The families whose estimators fit and predict with NaN in a feature (scikit-learn's
# HistGradientBoosting, and its random forests since 1.4), so `retrain.impute = "none"` can
# leave missing numeric values to them. `linear` (Ridge, LogisticRegression) refuses NaN.
# tests/unit/test_retrain_impute.py fits every family on NaN to keep this list true.
NAN_FAMILIES: frozenset[str] = frozenset({"hist_gradient_boosting", "random_forest"})


def _stattest_name(value: str | None) -> str | None:
    """A registered test (watcher.drift.catalog) or a custom 'package.module:function',
    which is imported here, once, so `watcher check-config` reports one that cannot load."""
    if value is None:
        return None
    from watcher.drift.catalog import check_name  # light: no evidently import

    try:
        return check_name(value)
    except ConfigError as exc:
        raise ValueError(f"{exc.message}; {exc.hint}" if exc.hint else exc.message) from exc


# Stat tests: evidently's names (see watcher.drift.catalog) or "package.module:function".
StatTest = Annotated[str, AfterValidator(_stattest_name)]


# The one rule for model names: ASCII, because a name becomes part of DAG ids, metric
# labels and registry folders (the registry checks names with this same pattern).
MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _no_line_breaks(value: str, what: str) -> str:
    # A CR/LF in a mail header field would let a value add headers (Bcc: ...).
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain line breaks")
    return value


class _Section(BaseModel):
    # Unknown keys are almost always typos: refuse them rather than ignore them. No value
    # is meaningful as inf or nan (an infinite poll interval would stop polling).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _read_secret(value: SecretStr | None, file: Path | None, what: str) -> SecretStr | None:
    if file is None:
        return value
    try:
        return SecretStr(file.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"cannot read {what} from {file}: {exc.strerror}") from exc


class DaemonConfig(_Section):
    state_dir: Path = Path(".watcher")
    # Below 10 ms an idle daemon busy-loops; above an hour nothing is watched.
    poll_interval_seconds: float = Field(5.0, ge=0.01, le=3600)
    shutdown_timeout_seconds: float = Field(30.0, gt=0)
    # Models scored at once (each in its own thread): a slow model holds one worker, not
    # the others. The CPU work releases the GIL in numpy/scipy, so up to the core count helps.
    workers: int = Field(1, ge=1, le=64)
    # How long the background workers (dispatchers, run tracker, retention), all at once,
    # may take to end their round at shutdown before the rest are cancelled; what they had
    # not delivered stays in the outbox.
    background_shutdown_timeout_seconds: float = Field(5.0, gt=0)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    # "model" (the default): only per-model series (17 per model, no counter pre-set at 0
    # before its first event), the stage histogram summed over models (model=""), no
    # `_created` series: a scrape stays small with hundreds of models. "feature": also
    # per-feature series (drift score, threshold, flag, missing share), the stage histogram
    # per model and every event counter at 0 from the start, what the bundled model-detail
    # dashboard reads (the bundled examples set it).
    detail: Literal["model", "feature"] = "model"


class AirflowConfig(_Section):
    enabled: bool = False
    url: str = "http://localhost:8080"
    username: str = "admin"
    password: SecretStr | None = None
    password_file: Path | None = None
    request_timeout_seconds: float = Field(10.0, gt=0)
    retry_attempts: int = Field(5, ge=1)
    retry_timeout_seconds: float = Field(60.0, gt=0)
    poll_interval_seconds: float = Field(15.0, gt=0)
    unpause_paused_dags: bool = False
    unreachable_alert_after_seconds: float = Field(300.0, ge=0)
    # A DAG Airflow answers 404 for is asked again for this long after the trigger was
    # queued, then the trigger is refused for good: Airflow deactivates a DAG for a while
    # when its file is redeployed or a parse of it is killed by its timeout. 0: at once.
    missing_dag_grace_seconds: float = Field(600.0, ge=0)
    # Where people look at runs; used in mails. Defaults to `url`.
    ui_url: str | None = None

    @field_validator("url", "ui_url")
    @classmethod
    def _no_trailing_slash(cls, v: str | None) -> str | None:
        # A trailing slash makes the API answer GETs with the UI's HTML and status 200.
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _secret_from_file(self) -> AirflowConfig:
        self.password = _read_secret(self.password, self.password_file, "airflow.password")
        return self


class SmtpConfig(_Section):
    enabled: bool = False
    host: str = "localhost"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    ca_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    timeout_seconds: float = Field(10.0, gt=0)
    sender: str = "watcher@localhost"
    recipients: list[str] = Field(default_factory=list)
    retry_attempts: int = Field(5, ge=1)
    retry_timeout_seconds: float = Field(60.0, gt=0)
    # After this many failed delivery rounds an alert is parked as a dead letter.
    max_delivery_rounds: int = Field(20, ge=1)
    # Wait before the next delivery round of a mail the server did not take: doubles per
    # round up to the maximum, jittered down to half.
    retry_backoff_seconds: float = Field(30.0, gt=0)
    retry_backoff_max_seconds: float = Field(1800.0, gt=0)

    @field_validator("sender")
    @classmethod
    def _sender_one_line(cls, v: str) -> str:
        return _no_line_breaks(v, "smtp.sender")

    @field_validator("recipients")
    @classmethod
    def _recipients_one_line(cls, v: list[str]) -> list[str]:
        return [_no_line_breaks(r, "a recipient") for r in v]

    @model_validator(mode="after")
    def _secret_from_file(self) -> SmtpConfig:
        self.password = _read_secret(self.password, self.password_file, "smtp.password")
        return self


class AlertsConfig(_Section):
    grafana_url: str = "http://localhost:3000"
    reminder_interval_seconds: float = Field(6 * 3600.0, gt=0)
    # Alerts that become due within one window are sent as one digest when there are
    # more than `digest_threshold` of them.
    digest_window_seconds: float = Field(30.0, ge=0)
    digest_threshold: int = Field(5, ge=1)
    # The largest report attached, counted as it is in the mail (base64: 4/3 of the file).
    # An evidently report is ~4 MB (5.3 MB mailed): larger ones are linked, not attached.
    attach_report_max_bytes: int = Field(5_000_000, ge=0)
    # Drift reports (HTML, several MB each) older than this are deleted; 0 keeps them all.
    report_retention_days: float = Field(30.0, ge=0)
    # Drift reports are rendered after the batch in a child process, on at most this many
    # rows per side (a deterministic sample), stopped after the timeout; the mail citing a
    # report waits for it this long, then links where it will be.
    report_max_rows: int = Field(50_000, ge=100)
    report_timeout_seconds: float = Field(300.0, gt=0)
    report_wait_seconds: float = Field(120.0, ge=0)
    source_silent_after_seconds: float = Field(0.0, ge=0)  # 0 disables the check


class EvidentlyConfig(_Section):
    """Snapshots of scored batches in an Evidently UI workspace (off by default)."""

    # A local workspace folder (what `evidently ui --workspace PATH` serves), or the URL of
    # a running `evidently ui` (http:// or https://).
    workspace: str | None = None
    project: str = "watcher"
    snapshots: Literal["all", "drifted"] = "all"
    # Where people open the UI, for the link in alert mails; default: `workspace` when it
    # is a URL (a folder workspace has no link without it).
    ui_url: str | None = None
    # Batches waiting for their snapshot at most; more are dropped (and counted).
    max_pending: int = Field(16, ge=1)

    @field_validator("workspace", "ui_url")
    @classmethod
    def _no_trailing_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @field_validator("workspace")
    @classmethod
    def _evidently_installed(cls, v: str | None) -> str | None:
        from watcher.drift.catalog import evidently_installed

        if v and not evidently_installed():
            raise ValueError(
                "evidently.workspace needs evidently, which is not installed: "
                "pip install 'watcher-drift[reports]'"
            )
        return v

    @property
    def is_remote(self) -> bool:
        ws = self.workspace
        return ws is not None and ws.startswith(("http://", "https://"))

    @property
    def link_base(self) -> str | None:
        return self.ui_url or (self.workspace if self.is_remote else None)


class WebhookConfig(_Section):
    """An HTTP endpoint that receives every alert the mail channel gets, as JSON.

    `format = "json"` posts watcher's own document (kind, severity, model, title, details,
    ...); `"slack"` posts a Slack incoming-webhook message (`text` + `blocks`), which
    Mattermost, Rocket.Chat and Teams' Slack-compatible connectors also take.
    """

    url: SecretStr | None = None  # a Slack webhook URL is a credential: kept out of logs
    url_file: Path | None = None
    format: Literal["json", "slack"] = "json"
    # Models whose alerts go here; empty = every model (and alerts about no model).
    models: list[str] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float = Field(10.0, gt=0)
    retry_attempts: int = Field(3, ge=1)
    retry_timeout_seconds: float = Field(30.0, gt=0)
    max_delivery_rounds: int = Field(20, ge=1)
    retry_backoff_seconds: float = Field(30.0, gt=0)
    retry_backoff_max_seconds: float = Field(1800.0, gt=0)

    @model_validator(mode="after")
    def _url(self) -> WebhookConfig:
        self.url = _read_secret(self.url, self.url_file, "webhook url")
        if self.url is None:
            raise ValueError("a webhook needs `url` (or `url_file`)")
        value = self.url.get_secret_value()
        if not value.startswith(("http://", "https://")):
            raise ValueError("webhook url must start with http:// or https://")
        return self


class RegistryConfig(_Section):
    # "file": a folder shared by the DAG's workers and the daemon (the embedded default).
    # "mlflow": an MLflow tracking server holds the versions (registered model versions, the
    # `champion` alias), every retraining run's record, and what the DAG's tasks hand each
    # other, so workers need no shared disk (watcher/registry_mlflow.py).
    backend: Literal["file", "mlflow"] = "file"
    path: Path = Path(".watcher/registry")
    keep_versions: int = Field(5, ge=1)
    tracking_uri: str | None = None
    # Credentials of an MLflow server behind basic auth or a bearer token. Without them the
    # MLflow client's own MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN environment is used.
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    # MLflow experiment of model <m>'s retraining runs: "<experiment_prefix>/<m>"; its
    # registered model: "<model_name_prefix><m>" (a prefix keeps several watcher deployments
    # apart on one MLflow server).
    experiment_prefix: str = "watcher"
    model_name_prefix: str = Field("", pattern=r"^[A-Za-z0-9_-]*$")
    # Seconds an MLflow request may take before it is retried, and how many times.
    request_timeout_seconds: float = Field(30.0, gt=0)
    request_retries: int = Field(3, ge=0)

    @field_validator("tracking_uri")
    @classmethod
    def _http_uri(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            # Only a tracking server can serve artifacts to workers on other hosts.
            raise ValueError("must be an http:// or https:// MLflow tracking server URL")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _secrets_and_uri(self) -> RegistryConfig:
        self.password = _read_secret(self.password, self.password_file, "registry.password")
        self.token = _read_secret(self.token, self.token_file, "registry.token")
        if self.backend == "mlflow" and not self.tracking_uri:
            raise ValueError('backend = "mlflow" needs tracking_uri (http://host:5000)')
        return self


class DirectorySourceConfig(_Section):
    kind: Literal["directory"] = "directory"
    path: Path
    patterns: list[str] = Field(default_factory=lambda: ["*.parquet", "*.csv"])
    # A file whose size and mtime have not changed for this long is considered complete.
    settle_seconds: float = Field(2.0, ge=0)
    # Label files (id + target) that arrive after the predictions.
    labels_path: Path | None = None
    # Bigger batches are quarantined (check "too_large") instead of read: scoring takes
    # about 5x the file size in memory. None: no cap.
    max_batch_bytes: int | None = Field(1_000_000_000, ge=1)
    max_batch_rows: int | None = Field(None, ge=1)
    # "refuse": a symbolic link is never followed (it is quarantined with the reason);
    # "inside": followed only when it resolves to a regular file inside the folder.
    symlinks: Literal["refuse", "inside"] = "refuse"
    # "auto": inotify where the kernel offers it (a batch renamed into the folder is taken
    # at once, without settle time), polling every daemon.poll_interval_seconds otherwise;
    # "poll": never use notifications (network file systems do not deliver them for
    # changes made on other hosts).
    watch: Literal["auto", "poll"] = "auto"


class SqlSourceConfig(_Section):
    kind: Literal["sql"] = "sql"
    dsn: str
    password: SecretStr | None = None
    password_file: Path | None = None
    table: str
    timestamp_column: str = "ts"
    window_seconds: float = Field(3600.0, gt=0)
    allowed_lateness_seconds: float = Field(300.0, ge=0)
    start: str | None = None  # ISO timestamp of the first window; default: the oldest row
    chunk_rows: int = Field(50_000, ge=100)
    max_rows_per_window: int = Field(200_000, ge=10)
    rescore_late: bool = False
    # Late rows are found by re-counting the last `late_check_windows` scored windows at most
    # every `late_check_interval_seconds` (0 windows turns the check off).
    late_check_windows: int = Field(24, ge=0)
    late_check_interval_seconds: float = Field(60.0, ge=0)
    labels_table: str | None = None
    # Columns of the labels table; when an id was labelled twice the newest label wins.
    labels_id_column: str = "id"
    labels_label_column: str = "label"
    labels_time_column: str = "labelled_at"
    connect_timeout_seconds: float = Field(10.0, gt=0)
    statement_timeout_seconds: float = Field(300.0, gt=0)
    down_alert_after_seconds: float = Field(300.0, ge=0)

    @field_validator("start")
    @classmethod
    def _start_is_iso(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                datetime.fromisoformat(v)
            except ValueError as exc:
                raise ValueError(
                    "start must be an ISO 8601 timestamp such as 2024-01-01T00:00:00+00:00"
                ) from exc
        return v

    @model_validator(mode="after")
    def _secret_from_file(self) -> SqlSourceConfig:
        self.password = _read_secret(self.password, self.password_file, "source.password")
        return self


SourceConfig = Annotated[DirectorySourceConfig | SqlSourceConfig, Field(discriminator="kind")]


class ColumnsConfig(_Section):
    """Column roles. Features not listed as numeric or categorical are not scored."""

    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    prediction: str | None = None
    # The predicted probability of the positive class (the label that sorts last, as
    # scikit-learn's predict_proba[:, 1]), for a binary classifier: lets the performance
    # signal follow roc_auc (see watcher.signals.performance_metric).
    score: str | None = None
    target: str | None = None
    timestamp: str | None = None
    id: str | None = None

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @model_validator(mode="after")
    def _roles_do_not_overlap(self) -> ColumnsConfig:
        seen: dict[str, str] = {}
        roles = {
            **{c: "numeric" for c in self.numeric},
            **{c: "categorical" for c in self.categorical},
        }
        for c in self.numeric:
            if c in self.categorical:
                raise ValueError(f"column {c!r} is listed as both numeric and categorical")
        for role in ("prediction", "score", "target", "timestamp", "id"):
            col = getattr(self, role)
            if col is None:
                continue
            if col in roles:
                raise ValueError(f"column {col!r} is both a {roles[col]} feature and the {role}")
            if col in seen:
                raise ValueError(f"column {col!r} is both the {seen[col]} and the {role}")
            seen[col] = role
        return self


class ColumnDriftConfig(_Section):
    stattest: StatTest | None = None
    threshold: float | None = Field(None, gt=0)


class DriftConfig(_Section):
    drift_share: float = Field(0.5, gt=0, le=1)
    # One stat test/threshold for every column of a kind, as evidently's
    # num_stattest / cat_stattest; per-column settings win.
    num_stattest: StatTest | None = None
    cat_stattest: StatTest | None = None
    # evidently's DataDriftPreset thresholds: per column, then num_/cat_threshold for the
    # column's kind, then `threshold` for every column, then the test's own default.
    threshold: float | None = Field(None, gt=0)
    num_threshold: float | None = Field(None, gt=0)
    cat_threshold: float | None = Field(None, gt=0)
    columns: dict[str, ColumnDriftConfig] = Field(default_factory=dict)
    # A batch smaller than the reference's noise line (measured at load: below it, batches
    # drawn from the reference itself show dataset drift; see watcher/batchsize.py) is
    # scored with p-value tests (ks, chisquare) where evidently's rule would pick a
    # distance test ("pvalue"), or scored as configured with a warning ("warn").
    small_batches: Literal["pvalue", "warn"] = "pvalue"


class QualityConfig(_Section):
    min_rows: int = Field(10, ge=1)
    # Share of missing values in a feature above which a violation is counted.
    max_missing_share: float = Field(0.2, ge=0, le=1)
    # Share of rows outside the reference [min, max] range above which a violation is counted.
    max_out_of_range_share: float = Field(0.1, ge=0, le=1)
    # Share of rows with categories never seen in the reference above which a violation is counted.
    max_unseen_category_share: float = Field(0.1, ge=0, le=1)
    # Reject (quarantine) instead of scoring when a feature is entirely missing.
    reject_all_missing: bool = True


class PerformanceSignalConfig(_Section):
    """The `performance` trigger signal: the production model's loss on labelled periods
    against its loss at deployment (see watcher/signals.py)."""

    # cusum: one-sided CUSUM over `tolerance`; cost: retrain when the summed excess loss
    # since deployment (in baseline losses) reaches `threshold`; page_hinkley: river's.
    detector: Literal["cusum", "cost", "page_hinkley"] = "cusum"
    # Relative loss increase tolerated before it counts (0.1 = 10 % worse than deployment).
    tolerance: float = Field(0.1, ge=0)
    # cusum and page_hinkley fire when the accumulated excess reaches this.
    threshold: float = Field(0.5, gt=0)
    # Periods are pooled until they hold this many labelled rows.
    min_rows: int = Field(30, ge=1)
    # The level to compare with: the gate's holdout figure, the first labelled period, or
    # the lower of the two (`min`: a holdout figure inflated by a fast-changing week).
    baseline: Literal["holdout", "first_period", "min"] = "holdout"


class DriftSignalConfig(_Section):
    """The `drift` trigger signal (dataset drift is scored as `[models.X.drift]` says)."""

    # Weight each feature's drift by the production model's feature importance.
    importance_weighted: bool = False


TriggerSignal = Literal["drift", "performance", "max_age"]


class PolicyConfig(_Section):
    # The signals that may trigger a retrain; drift is scored, exported and mailed anyway.
    triggers: list[TriggerSignal] = Field(
        default_factory=lambda: list[TriggerSignal](["drift"]), min_length=1
    )
    consecutive: int = Field(2, ge=1)
    # Non-drifted batches in a row that end a drift incident (hysteresis).
    resolve_after: int = Field(2, ge=1)
    cooldown_seconds: float = Field(6 * 3600.0, ge=0)
    daily_cap: int = Field(3, ge=0)
    dry_run: bool = False
    # A model older than this is retrained (`max_age` signal); None: no maximum.
    max_age_batches: int | None = Field(None, ge=1)
    max_age_seconds: float | None = Field(None, gt=0)
    # Below this age nothing triggers (the model has not been seen at work yet).
    min_age_batches: int = Field(0, ge=0)
    min_age_seconds: float = Field(0.0, ge=0)
    performance: PerformanceSignalConfig = Field(default_factory=PerformanceSignalConfig)
    drift: DriftSignalConfig = Field(default_factory=DriftSignalConfig)

    @model_validator(mode="after")
    def _signals_configured(self) -> PolicyConfig:
        if len(set(self.triggers)) != len(self.triggers):
            raise ValueError(f"triggers lists a signal twice: {self.triggers}")
        if "max_age" in self.triggers and (
            self.max_age_batches is None and self.max_age_seconds is None
        ):
            raise ValueError(
                "triggers has 'max_age' but neither max_age_batches nor max_age_seconds is set"
            )
        return self


class RetrainConfig(_Section):
    """How the retraining DAG builds a challenger. Read by `retrain_dags/` and its steps."""

    dag_id: str | None = None  # default: retrain_<model>
    task: Literal["regression", "classification"] = "regression"
    window: Literal["last_days", "last_batches", "expanding"] = "expanding"
    window_size: int = Field(8, ge=1)
    base_training_data: Path | None = None
    min_rows: int = Field(200, ge=10)
    min_label_coverage: float = Field(0.5, ge=0, le=1)
    # "none": numeric NaN is passed through to the estimator (only the NAN_FAMILIES).
    impute: Literal["median", "mean", "most_frequent", "none"] = "median"
    outliers: Literal["none", "quantile", "iqr"] = "quantile"
    outlier_quantiles: tuple[float, float] = (0.01, 0.99)
    encoding: Literal["onehot", "ordinal"] = "onehot"
    scaling: Literal["none", "standard", "robust"] = "standard"
    correlation_threshold: float = Field(0.95, gt=0, le=1)
    selection: Literal["none", "univariate", "importance", "forward", "backward"] = "importance"
    max_features: int | None = Field(None, ge=1)
    model_families: list[ModelFamily] = Field(
        default_factory=lambda: list[ModelFamily](["hist_gradient_boosting"])
    )
    search: Literal["grid", "random"] = "random"
    n_iter: int = Field(8, ge=1)
    cv_splits: int = Field(3, ge=2)
    time_budget_seconds: float = Field(300.0, gt=0)
    seed: int = 42
    holdout_share: float = Field(0.2, gt=0, lt=1)
    primary_metric: Literal["mae", "rmse", "r2", "accuracy", "f1", "roc_auc"] = "mae"
    # The challenger must beat the champion by this relative margin (0.02 = 2 % better).
    margin: float = 0.0
    # After the gate, refit the winning pipeline on train + holdout (the most recent rows)
    # before deploying it; the recorded metrics stay those measured on the holdout.
    refit_on_all_data: bool = True
    # Threads for training (OpenMP/BLAS). 1 by default: Airflow runs several tasks per
    # worker, and oversubscribed OpenMP spins (9x slower measured on a busy 2-core host).
    threads: int = Field(1, ge=1)
    notify: list[str] = Field(default_factory=list)
    # Airflow task retries: exponential backoff from retry_delay up to max_retry_delay.
    retries: int = Field(2, ge=0)
    retry_delay_seconds: float = Field(60.0, gt=0)
    max_retry_delay_seconds: float = Field(1800.0, gt=0)
    # A run still running after this is failed by Airflow's scheduler (`dagrun_timeout`),
    # which frees the model for the next trigger; a task running longer than
    # `task_timeout_seconds` is killed and failed (`execution_timeout`, then retried).
    dagrun_timeout_seconds: float = Field(4 * 3600.0, gt=0)
    task_timeout_seconds: float = Field(3600.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _metric_defaults_to_the_task(cls, data: Any) -> Any:
        # mae is the regression default; a classifier left without one is scored by accuracy.
        if isinstance(data, dict) and data.get("task") == "classification":
            data.setdefault("primary_metric", "accuracy")
        return data

    @model_validator(mode="after")
    def _nan_reaches_only_what_accepts_it(self) -> RetrainConfig:
        if self.impute != "none":
            return self
        for family in self.model_families:
            if family not in NAN_FAMILIES:
                raise ValueError(
                    "retrain.impute = 'none' leaves missing values to the estimator, but "
                    f"family {family!r} does not accept NaN: use impute = 'median' or "
                    f"model_families = {sorted(NAN_FAMILIES)} only"
                )
        if self.selection == "univariate":
            raise ValueError(
                "retrain.impute = 'none' leaves missing values in the features, but "
                "selection = 'univariate' (the F-test) does not accept NaN: use impute = "
                "'median' or another selection ('importance', 'forward', 'backward', 'none')"
            )
        return self


# The primary metrics each task can be scored by (the gate and the performance signal).
_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("mae", "rmse", "r2"),
    "classification": ("accuracy", "f1", "roc_auc"),
}


class ModelConfig(_Section):
    source: SourceConfig
    # A file (Parquet/CSV) used until the registry has a production version of this model.
    reference: Path | None = None
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    recipients: list[str] = Field(default_factory=list)

    @field_validator("recipients")
    @classmethod
    def _recipients_one_line(cls, v: list[str]) -> list[str]:
        return [_no_line_breaks(r, "a recipient") for r in v]

    @model_validator(mode="after")
    def _metric_fits_task(self) -> ModelConfig:
        r = self.retrain
        fits = _TASK_METRICS[r.task]
        if r.primary_metric not in fits:
            raise ValueError(
                f"retrain.primary_metric {r.primary_metric!r} does not fit retrain.task "
                f"{r.task!r}: use one of {', '.join(fits)} (or set task = "
                f"{'classification' if r.task == 'regression' else 'regression'!r})"
            )
        return self

    @model_validator(mode="after")
    def _score_is_for_a_roc_auc_classifier(self) -> ModelConfig:
        # Refused rather than ignored, as state.dsn without postgres: a score column that
        # is never read would let the README's promise (roc_auc followed) silently fail.
        score, r = self.columns.score, self.retrain
        if score is None:
            return self
        if r.task != "classification":
            raise ValueError(
                f"columns.score ({score!r}) is a predicted probability of the positive "
                f"class, for a binary classifier, but retrain.task is {r.task!r}: remove "
                "columns.score, or set task = 'classification'"
            )
        if r.primary_metric != "roc_auc":
            raise ValueError(
                f"columns.score ({score!r}) is only read when retrain.primary_metric is "
                f"'roc_auc' (it is {r.primary_metric!r}): remove columns.score, or set "
                "primary_metric = 'roc_auc' so the performance signal follows roc_auc"
            )
        return self

    @model_validator(mode="after")
    def _performance_signal_has_labels(self) -> ModelConfig:
        if "performance" not in self.policy.triggers:
            return self
        cols, src = self.columns, self.source
        missing = [f"columns.{c}" for c in ("target", "prediction", "id") if not getattr(cols, c)]
        labels = src.labels_path if src.kind == "directory" else src.labels_table
        if labels is None:
            missing.append(
                "source.labels_path" if src.kind == "directory" else "source.labels_table"
            )
        if missing:
            raise ValueError(
                "policy.triggers has 'performance', which compares the model's predictions "
                f"with labels, but it lacks {', '.join(missing)}: set them, or remove "
                "'performance' from triggers"
            )
        return self

    @model_validator(mode="after")
    def _drift_columns_are_features(self) -> ModelConfig:
        unknown = sorted(set(self.drift.columns) - set(self.columns.features))
        if unknown and self.columns.features:
            raise ValueError(
                f"drift.columns names {unknown}, which are not numeric or categorical features"
            )
        from watcher.drift.catalog import check_kind

        numeric = set(self.columns.numeric)
        checks = [
            (self.drift.num_stattest, "numeric", "drift.num_stattest"),
            (self.drift.cat_stattest, "categorical", "drift.cat_stattest"),
            *(
                (c.stattest, "numeric" if name in numeric else "categorical", f"drift.{name}")
                for name, c in self.drift.columns.items()
                if name in self.columns.features
            ),
        ]
        for test, kind, where in checks:
            try:
                check_kind(test, kind, where)  # type: ignore[arg-type]
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return self


class Settings(BaseSettings):
    """The whole configuration. Build it with `load_config`."""

    model_config = SettingsConfigDict(
        env_prefix="WATCHER_",
        env_nested_delimiter="__",
        extra="forbid",
        allow_inf_nan=False,
        # Environment values for nested sections are parsed as JSON where they look like it.
        env_parse_none_str="null",
    )

    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    airflow: AirflowConfig = Field(default_factory=AirflowConfig)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    evidently: EvidentlyConfig = Field(default_factory=EvidentlyConfig)
    webhooks: dict[str, WebhookConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file, which arrives as init arguments.
        return (env_settings, init_settings)

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        for name in v:
            if not MODEL_NAME.match(name):
                raise ValueError(
                    f"model name {name!r} may hold only ASCII letters, digits, '_' and '-' "
                    "(it becomes part of DAG ids, metric labels and registry folders)"
                )
        return v

    @model_validator(mode="after")
    def _webhook_models_exist(self) -> Settings:
        for name, hook in self.webhooks.items():
            unknown = sorted(set(hook.models) - set(self.models))
            if unknown:
                raise ValueError(f"webhooks.{name}.models names unknown model(s) {unknown}")
        return self

    def webhooks_for(self, model: str | None) -> list[str]:
        """The webhooks that receive alerts about `model` (every one when it is None)."""
        return [
            name
            for name, hook in self.webhooks.items()
            if not hook.models or model is None or model in hook.models
        ]

    def dag_id(self, model: str) -> str:
        return self.models[model].retrain.dag_id or f"retrain_{model}"

    def recipients(self, model: str | None) -> list[str]:
        if model is not None and model in self.models and self.models[model].recipients:
            return self.models[model].recipients
        return self.smtp.recipients


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: Any) -> str:
    """A scalar or list as TOML (strings as JSON strings, which TOML reads the same)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def dump_toml(data: dict[str, Any], _prefix: str = "") -> str:
    """A config dict as TOML: values first, then every mapping as a [table] of its own.

    For tools that write configs (the demo, tests); `load_config(dump_toml(d))` reads d.
    """
    lines = []
    values = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if _prefix and (values or not data):
        lines.append(f"\n[{_prefix}]")
    lines += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in values.items()]
    for key, sub in data.items():
        if isinstance(sub, dict):
            name = f"{_prefix}.{_toml_key(key)}" if _prefix else _toml_key(key)
            lines.append(dump_toml(sub, name).rstrip("\n"))
    return "\n".join(lines) + "\n"


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make relative paths in the file relative to the file, not the working directory."""
    path_keys = {
        "state_dir",
        "path",
        "reference",
        "labels_path",
        "ca_file",
        "password_file",
        "base_training_data",
        "workspace",
        "url_file",
        "token_file",
    }
    for key, value in data.items():
        if isinstance(value, dict):
            _resolve_paths(value, base)
        elif (
            key in path_keys
            and isinstance(value, str)
            and not Path(value).is_absolute()
            and "://" not in value  # evidently.workspace may be a URL
        ):
            data[key] = str((base / value).resolve())


_SECRET_KEY = re.compile(r"pass|secret|token|key|credential|dsn|auth", re.IGNORECASE)


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem, naming the field the way it is written in the file.

    The offending value is shown only for known, non-secret fields: an unknown key may be
    a misspelled secret (`pasword = ...`), so its value is never echoed.
    """
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("directory", "sql"))
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        hidden = (
            err["type"] == "extra_forbidden"
            or any(_SECRET_KEY.search(str(p)) for p in err["loc"])
            or isinstance(got, dict | list)
            or got is None
        )
        shown = "" if hidden else f" (got {_short(repr(got))})"
        lines.append(f"{loc or '<root>'}: {msg}{shown}")
    return lines


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_runtime(settings: Settings) -> None:
    """The checks that need the scoring code (which stat tests apply to which column kind,
    source URLs). `watcher run` and `watcher check-config` both call this, so check-config
    accepts exactly what run accepts. Raises ConfigError listing every problem."""
    from watcher.drift.engine import specs_from_config  # scipy: only when checking

    problems = []
    for name, model in settings.models.items():
        try:
            specs_from_config(model)
        except ConfigError as exc:
            problems.append(f"models.{name}: {exc}")
        if model.source.kind != "sql":
            continue
        try:
            import psycopg  # noqa: F401  (the driver the sql extra brings)

            from watcher.sources.sql.connection import build_url
        except ImportError as exc:  # the sql extra is optional: say which one to install
            raise ConfigError(
                f"model {name!r} reads a sql source, but its drivers are not installed ({exc})",
                hint="pip install 'watcher-drift[sql]'",
            ) from exc
        try:
            build_url(model.source)
        except ConfigError as exc:
            problems.append(f"models.{name}: {exc}")
        ts = model.columns.timestamp
        if ts and ts != model.source.timestamp_column:
            problems.append(
                f"models.{name}: columns.timestamp is {ts!r} but source.timestamp_column is "
                f"{model.source.timestamp_column!r}; make the two the same"
            )
    if problems:
        raise ConfigError(
            f"the configuration has {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )


def load_config(path: Path | None) -> Settings:
    """Read, resolve and validate the configuration. Raises ConfigError listing every problem."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"config file {path} does not exist", hint="pass an existing TOML file"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        _resolve_paths(data, path.parent.resolve())
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        raise ConfigError(
            f"{path or 'configuration'} has {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        ) from exc
