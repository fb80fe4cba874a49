"""
### Retrain a watcher model

`ingest → validate → engineer_features → select_features → tune_and_train → evaluate →
gate → deploy → notify`, one DAG `retrain_<model>` per model in the watcher config file
(`WATCHER_CONFIG`, default `examples/bikeshare/watcher.toml`). The watcher daemon triggers
it when drift persists; people can trigger it by hand.

Each task calls one step function of `watcher.retrain.steps` on the run folder
`<state_dir>/retrain/<model>/<run_id>/` and passes the path on: data never travels
through XCom. With `[registry] backend = "mlflow"` the run folder lives in the artifacts of
the run's MLflow run instead (watcher/retrain/handoff.py): each task fills an empty local
folder from it and saves what it made back, so Celery or Kubernetes workers share no disk.
The gate deploys only a challenger that beats the production model by the configured
margin; otherwise `deploy` is skipped, the run succeeds and the decision (with its reason)
is in `decision.json`, the registry's `runs/` folder (or the MLflow run) and the mail.

Data problems (no labels, too few rows, missing columns) and a tampered production model
fail the task at once; anything else is retried with exponential backoff. Every failure
and retry is mailed through the `smtp_default` connection, rendered like every watcher alert
(kinds `retrain_task_failed` and `retrain_task_retried`). The end-of-run mail is skipped
with a warning when there is no `smtp_default` connection or no recipient; a configured
server that refuses it fails `notify`, which is retried.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseNotifier, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from watcher.config import Settings, load_config

if TYPE_CHECKING:
    from airflow.sdk import DAG, Context

    from watcher.retrain.request import RetrainRequest
    from watcher.retrain.steps import RunContext

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "bikeshare" / "watcher.toml"
CONFIG_PATH = Path(os.environ.get("WATCHER_CONFIG") or DEFAULT_CONFIG)

def _params(model: str) -> dict[str, Param]:
    """What a trigger may say: the fields of `RetrainRequest` (watcher/retrain/request.py),
    whose defaults and JSON types are the params' own."""
    from watcher.retrain.request import RetrainRequest

    return {
        name: Param(spec.pop("default"), **spec)
        for name, spec in RetrainRequest.params_schema(model).items()
    }


def _default_args(settings: Settings, model: str) -> dict[str, Any]:
    cfg = settings.models[model].retrain
    args: dict[str, Any] = {
        "owner": "watcher",
        "retries": cfg.retries,
        "retry_delay": timedelta(seconds=cfg.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=cfg.max_retry_delay_seconds),
        # A hung task is killed and failed (then retried) instead of holding the run open.
        "execution_timeout": timedelta(seconds=cfg.task_timeout_seconds),
    }
    recipients = cfg.notify or settings.recipients(model)
    if recipients:
        # Task-level callbacks: a DAG-level SmtpNotifier crashed under `airflow dags test`.
        args["on_failure_callback"] = TaskMail(settings, model, recipients, will_retry=False)
        args["on_retry_callback"] = TaskMail(settings, model, recipients, will_retry=True)
    return args


class TaskMail(BaseNotifier):
    """Mails a task's failure or retry, rendered by watcher's alert renderer
    (watcher/retrain/mails.py) and sent like the end-of-run mail."""

    def __init__(
        self, settings: Settings, model: str, recipients: list[str], *, will_retry: bool
    ) -> None:
        super().__init__()
        self.settings = settings
        self.model = model
        self.recipients = recipients
        self.will_retry = will_retry

    def notify(self, context: Context) -> None:
        from watcher.retrain.mails import task_problem_mail

        ti = context["ti"]
        subject, html = task_problem_mail(
            self.settings,
            self.model,
            task_id=ti.task_id,
            run_id=str(context["run_id"]),
            try_number=ti.try_number,
            error=context.get("exception"),
            will_retry=self.will_retry,
        )
        _send_mail(subject, html, self.recipients, self.settings.smtp.sender)


def _request() -> RetrainRequest:
    """This run's request, from its params; a conf that does not fit fails the task for good."""
    from watcher.errors import ConfigError
    from watcher.retrain.request import RetrainRequest

    try:
        return RetrainRequest.from_conf(get_current_context()["params"])
    except ConfigError as exc:
        raise AirflowFailException(f"{exc} ({exc.hint})" if exc.hint else str(exc)) from exc


def _run_step(step: Callable[[], T]) -> T:
    """Run a step; errors that a retry cannot fix fail the task without retries."""
    from watcher.errors import ChecksumMismatch, TrainingDataError

    try:
        return step()
    except (TrainingDataError, ChecksumMismatch) as exc:
        raise AirflowFailException(str(exc)) from exc


def build_dag(settings: Settings, model: str) -> DAG:
    """The retraining DAG of one configured model."""
    cfg = settings.models[model].retrain
    recipients = cfg.notify or settings.recipients(model)

    def in_workspace(step: Callable[[RunContext], T]) -> T:
        """Run a step on this run's folder: on local disk with the file registry; with MLflow,
        a fresh folder filled from and saved back to the run's artifacts (no shared disk)."""
        from watcher.retrain.handoff import task_context

        context = get_current_context()
        task_id = context["ti"].task_id
        with task_context(
            settings, model, str(context["run_id"]), task=task_id, conf=context["params"]
        ) as run:
            return _run_step(lambda: step(run))

    @dag(
        dag_id=settings.dag_id(model),
        schedule=None,
        catchup=False,
        max_active_runs=1,
        # A run still running after this is failed by the scheduler: with max_active_runs=1
        # a hung run would otherwise hold the model (suppressed_active_run) forever.
        dagrun_timeout=timedelta(seconds=cfg.dagrun_timeout_seconds),
        is_paused_upon_creation=False,
        params=_params(model),
        default_args=_default_args(settings, model),
        doc_md=__doc__,
        tags=["watcher", "retrain", model],
    )
    def retrain() -> None:
        @task
        def ingest() -> str:
            """Labelled production data for the training window, into the run folder."""
            from watcher.retrain import steps

            request = _request()
            # A SQL source's drift window (from the daemon) ends the training window too.
            return str(
                in_workspace(
                    lambda run: steps.ingest(
                        run,
                        data_uris=[*request.data_uris, *request.batches],
                        window_end=request.window_end_time,
                    )
                )
            )

        @task
        def validate(_: str) -> str:
            """Schema, minimum rows, label coverage, data quality."""
            from watcher.retrain import steps

            return str(in_workspace(steps.validate))

        @task
        def engineer_features(_: str) -> str:
            """Time-ordered holdout split; imputation, outlier clipping, encoding, scaling."""
            from watcher.retrain import steps

            return str(in_workspace(steps.engineer))

        @task
        def select_features(_: str) -> str:
            """Correlation filter, then the configured selection method."""
            from watcher.retrain import steps

            return str(in_workspace(steps.select))

        @task
        def tune_and_train(_: str) -> str:
            """Hyperparameter search over the configured families, time-boxed."""
            from watcher.retrain import steps

            return str(in_workspace(steps.train))

        @task
        def evaluate(_: str) -> str:
            """Challenger vs the production model on the most recent labelled rows."""
            from watcher.retrain import steps

            return str(in_workspace(steps.evaluate))

        @task
        def gate(_: str) -> dict[str, Any]:
            """Deploy only if better by the margin; the decision and its reason are kept."""
            from watcher.retrain import steps

            margin = _request().margin
            decision = in_workspace(lambda run: steps.gate(run, margin=margin))
            return {"deploy": decision.deploy, "reason": decision.reason}

        @task
        def deploy(decision: dict[str, Any]) -> str:
            """Register the new version, switch production, prune old versions."""
            from watcher.retrain import steps

            info = in_workspace(steps.deploy)
            if info is None:
                raise AirflowSkipException(f"not deployed: {decision['reason']}")
            return info.version

        @task(trigger_rule="none_failed")
        def notify() -> str:
            """Mail the decision with champion vs challenger metrics."""
            from watcher.retrain.mails import run_ended_mail

            subject, html = in_workspace(run_ended_mail)
            return _send_mail(subject, html, recipients, settings.smtp.sender)

        engineered = engineer_features(validate(ingest()))
        decided = gate(evaluate(tune_and_train(select_features(engineered))))
        deploy(decided) >> notify()

    return retrain()


def _send_mail(subject: str, html: str, to: list[str], sender: str) -> str:
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    if not to:
        log.warning("no recipients configured; not mailing: %s", subject)
        return "skipped: no recipients"
    try:
        BaseHook.get_connection(SmtpHook.default_conn_name)
    except AirflowNotFoundException:
        log.warning("no smtp_default connection; not mailing: %s", subject)
        return "skipped: no smtp_default connection"
    with SmtpHook() as hook:
        hook.send_email_smtp(to=to, from_email=sender, subject=subject, html_content=html)
    return f"sent to {', '.join(to)}: {subject}"


_settings = load_config(CONFIG_PATH)
for _model in _settings.models:
    globals()[_settings.dag_id(_model)] = build_dag(_settings, _model)
