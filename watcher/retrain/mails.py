"""The retraining run's mails, rendered like every other alert (`watcher.alerts.compose`).

- the end-of-run mail (the DAG's `notify` task): alert `retrain_deployed` or
  `retrain_not_deployed`, with the decision and both models' metrics;
- a task that failed or will be retried (the DAG's task callbacks): alert
  `retrain_task_failed` or `retrain_task_retried`, with the error.

The DAG (retrain_dags/retrain.py) sends both through the `smtp_default` connection.
Nothing here imports Airflow, so the text is tested without it.
"""

from __future__ import annotations

from typing import Any

from watcher.alerts import alert_action
from watcher.alerts.compose import render
from watcher.config import Settings
from watcher.retrain.evaluation import Decision
from watcher.retrain.steps import RunContext, read_json


def run_ended_mail(ctx: RunContext) -> tuple[str, str]:
    """Subject and HTML body of the end-of-run mail: the decision and both models' metrics,
    as the alert `retrain_deployed` or `retrain_not_deployed`, rendered like every alert."""
    decision = Decision.from_dict(read_json(ctx.path("decision.json")))
    deployed_path = ctx.path("deployed.json")
    deployed = read_json(deployed_path) if deployed_path.exists() else None
    metric = decision.metric
    new = decision.challenger.get(metric)
    old = (decision.champion or {}).get(metric)
    title = f"version {deployed['version']} deployed" if deployed else "retrained, not deployed"
    details: dict[str, Any] = {"reason": decision.reason}
    if deployed:
        details["version"] = str(deployed["version"])
    details |= {
        "previous_version": decision.champion_version,
        "primary_metric": metric,
        "margin": decision.margin,
        "champion": decision.champion or {},
        "challenger": decision.challenger,
        "run_folder": str(ctx.run_dir),
    }
    alert = alert_action(
        "retrain_deployed" if deployed else "retrain_not_deployed",
        key=f"retrain_ended:{ctx.run_id}",
        model=ctx.model,
        title=f"{title} ({metric} {_fmt(new)} vs {_fmt(old)})",
        severity="info" if deployed else "warning",
        details=details,
        run={"dag_id": ctx.settings.dag_id(ctx.model), "run_id": ctx.run_id},
    )
    return render(alert, ctx.settings)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4g}"


# What the mail says when Airflow's context carries no exception (a task killed from outside).
NO_ERROR = "no error was passed to the callback; see the task log"


def task_problem_mail(
    settings: Settings,
    model: str,
    *,
    task_id: str,
    run_id: str,
    try_number: int,
    error: object,
    will_retry: bool,
) -> tuple[str, str]:
    """Subject and HTML body of the mail about a task of `model`'s retraining run that
    failed on try `try_number`: for good, or to be retried (`will_retry`)."""
    text = str(error) if error is not None else ""
    details = {"failed_task": task_id, "try_number": try_number, "error": text or NO_ERROR}
    run = {"dag_id": settings.dag_id(model), "run_id": run_id}
    alert = alert_action(
        "retrain_task_retried" if will_retry else "retrain_task_failed",
        key=f"retrain_task:{run_id}:{task_id}:{try_number}",
        model=model,
        title=f"retrain task {task_id} {'will be retried' if will_retry else 'failed'}",
        # Retried: it may still succeed. Failed: the run fails with it.
        severity="warning" if will_retry else "critical",
        details=details,
        run=run,
    )
    return render(alert, settings)
