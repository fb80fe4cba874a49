"""The mail a retraining task sends when it fails or will be retried: an alert of kind
`retrain_task_failed` or `retrain_task_retried`, rendered like every other alert.

The DAG's task callbacks (retrain_dags/retrain.py) pass what Airflow's context says about
the task and send the result through the `smtp_default` connection, as the end-of-run
mail. Nothing here imports Airflow, so the text is tested without it.
"""

from __future__ import annotations

from watcher.alerts import alert_action
from watcher.alerts.compose import render
from watcher.config import Settings

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
