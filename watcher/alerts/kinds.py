"""What each alert kind says, and which payload keys it reads.

The payload is the one `watcher.alerts.alert_action` builds: ``alert`` (the kind),
``severity``, ``model``, ``title``, ``details``, ``features``, ``batch``, ``run``,
``report_path`` and ``incident``. Every kind renders the same parts; what differs is the
headline, the advice and which ``details`` keys it usually carries:

=====================  ==========================================================================
kind                   details keys sent (by whom)
=====================  ==========================================================================
drift_persisting       drift_share, streak, reference_version, decision, decision_reason
                       (pipeline; with features, batch, report_path)
drift_resolved         reference_version (pipeline; with batch)
retrain_triggered      reason, reason_kind, signal, drift_share, signal_value, signal_threshold,
                       ``<signal>_<number>`` of the reading (pipeline; with run, batch, features)
retrain_deployed       reason, version, previous_version, primary_metric, margin, champion,
                       challenger, run_folder (the DAG's notify task; with run)
retrain_not_deployed   reason (the gate's), previous_version, primary_metric, margin, champion,
                       challenger, run_folder (the DAG's notify task; with run)
retrain_failed         reason (run tracker; with run: run_id, dag_id, state, url)
retrain_task_failed    failed_task, try_number, error (the DAG's task callback; with run)
retrain_task_retried   failed_task, try_number, error (the DAG's task callback; with run)
trigger_refused        dag_id, run_id, status, message (dispatcher); url, status, message
                       (refused login)
dag_paused             dag_id, run_id, reason (dispatcher)
airflow_unreachable    url, problems, down_since (health probe)
airflow_recovered      url (health probe)
source_down            path, error, what_to_do (folder); down_since, down_seconds, table, dsn
                       (password redacted), error, what_to_do (sql) (daemon, `watcher.incidents`)
source_silent          silent_seconds, limit_seconds (daemon)
source_recovered       down_seconds (sql, when the outage began in this process), else none
batch_rejected         check, reason, what_to_do (pipeline; with batch)
label_file_rejected    file, reason (model quality)
reminder               the incident's own details, then reminder, incident_kind, opened_at,
                       open_seconds, last_notified_at (mail dispatcher)
=====================  ==========================================================================

``champion`` and ``challenger`` are ``{metric: value}`` dicts, shown side by side. Any other
key is shown as a row of a key/value table; keys ending in ``_at``/``since`` (Unix time),
``_seconds`` and ``share`` are formatted as times, durations and percentages; keys that
look like secrets are masked. ``features`` rows carry ``feature`` (or ``column``),
``stattest`` (or ``test``), ``score``, ``threshold`` and ``drifted``; only drifted ones
are listed. ``run`` carries ``dag_id`` and ``run_id`` (linked to the Airflow UI);
``batch`` carries ``batch_id``, ``uri``, ``rows`` and whatever else the pipeline records.

A digest (kind ``digest``, built by the dispatcher) lists its ``members`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

# Grafana dashboard uids the links point at; dashboards/ provisions them with these uids.
GRAFANA_MODEL_DASHBOARD = "watcher-model-detail"  # has a `model` variable
GRAFANA_OVERVIEW_DASHBOARD = "watcher-drift-overview"
GRAFANA_OPERATIONS_DASHBOARD = "watcher-operations"
# Kinds about watcher's machinery (Airflow, retrains) rather than the data.
OPERATIONS_KINDS = {
    "retrain_triggered",
    "retrain_deployed",
    "retrain_not_deployed",
    "retrain_failed",
    "retrain_task_failed",
    "retrain_task_retried",
    "trigger_refused",
    "dag_paused",
    "airflow_unreachable",
    "airflow_recovered",
}

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class KindText:
    headline: str
    advice: str


KINDS: dict[str, KindText] = {
    "drift_persisting": KindText(
        "Dataset drift persists",
        "The production data no longer looks like the reference. Check the drifted features "
        "and the drift report; a retrain starts on its own when the policy allows it.",
    ),
    "drift_resolved": KindText(
        "Drift resolved",
        "Recent batches look like the reference again. Nothing to do.",
    ),
    "retrain_triggered": KindText(
        "Retraining started",
        "watcher asked Airflow to retrain the model. You will get a mail when the run ends.",
    ),
    "retrain_deployed": KindText(
        "New model version deployed",
        "The challenger beat the champion and is now in production; drift is measured "
        "against its training data from now on.",
    ),
    "retrain_not_deployed": KindText(
        "Retrain ended without deploying",
        "The challenger did not pass the deployment gate, so the current model stays. "
        "If drift continues, look at the data before retraining again.",
    ),
    "retrain_failed": KindText(
        "Retrain failed",
        "The Airflow run failed. Open the run, read the failed task's log, fix the cause; "
        "the next persisting drift triggers a new run.",
    ),
    "retrain_task_failed": KindText(
        "Retrain task failed",
        "A task of the retraining run failed for good, so the run fails and the current "
        "model stays. Read the error below and the task's log, fix the cause.",
    ),
    "retrain_task_retried": KindText(
        "Retrain task will be retried",
        "A task of the retraining run failed and Airflow will try it again after a delay. "
        "Nothing to do unless it keeps failing; a last failure is mailed too.",
    ),
    "trigger_refused": KindText(
        "Airflow refused the retrain trigger",
        "The DAG run was not created. Check that the DAG exists and the Airflow user may "
        "trigger it.",
    ),
    "dag_paused": KindText(
        "Retrain DAG is paused",
        "Runs of a paused DAG never start. Unpause it in Airflow, or set "
        "airflow.unpause_paused_dags to let watcher do it.",
    ),
    "airflow_unreachable": KindText(
        "Airflow unreachable",
        "watcher cannot reach the Airflow API; retrains wait in the outbox until it answers. "
        "Check the api-server and the scheduler.",
    ),
    "airflow_recovered": KindText(
        "Airflow reachable again",
        "Pending triggers are being delivered. Nothing to do.",
    ),
    "source_down": KindText(
        "Source unreachable",
        "watcher cannot read the model's source (database down, table or view broken). "
        "Nothing is lost: scoring resumes from the watermark once it answers. See the error.",
    ),
    "source_silent": KindText(
        "No new batches",
        "The source delivered no batch for longer than expected. Check the upstream job "
        "that writes predictions.",
    ),
    "source_recovered": KindText(
        "Batches arrive again",
        "The source delivers batches again. Nothing to do.",
    ),
    "batch_rejected": KindText(
        "Batch rejected",
        "The batch failed an input check and was set aside without scoring. Fix the "
        "producer and deliver the batch again under a new name.",
    ),
    "label_file_rejected": KindText(
        "Label file set aside",
        "A label file could not be read or does not fit the model; its labels were not "
        "used and it will not be read again. Fix it and drop it under a new name.",
    ),
    "reminder": KindText(
        "Incident still open",
        "This incident is still open. Nothing changed since the last mail.",
    ),
    "digest": KindText(
        "Alert digest",
        "Many alerts fired at once; they are listed here in one mail instead of one each.",
    ),
}

# Rows of the details table, in this order; other keys follow in their payload order.
DETAIL_LABELS: dict[str, str] = {
    "reason": "Reason",
    "check": "Check",
    "decision": "Policy decision",
    "streak": "Drifted batches in a row",
    "drift_share": "Share of drifted features",
    "drifted_features": "Drifted features",
    "clean_batches": "Clean batches in a row",
    "version": "Version",
    "previous_version": "Previous version",
    "margin": "Required margin",
    "dag_id": "DAG",
    "state": "Run state",
    "failed_task": "Failed task",
    "try_number": "Try",
    "status": "HTTP status",
    "error": "Error",
    "unpaused": "Unpaused by watcher",
    "dry_run": "Dry run",
    "down_since": "Down since",
    "down_seconds": "Down for",
    "last_batch_at": "Last batch",
    "silent_seconds": "Silent for",
    "reminder": "Reminder number",
    "incident_kind": "Incident",
    "opened_at": "Open since",
    "open_seconds": "Open for",
    "duration_seconds": "Lasted",
    "last_notified_at": "Last mail",
}
LOWER_IS_BETTER = {"mae", "rmse", "mse", "mape", "log_loss"}
