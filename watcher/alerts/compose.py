"""An alert mail from an outbox item: subject, plain text + HTML, links and the drift report.

The payload is the one `watcher.alerts.alert_action` builds: ``alert`` (the kind),
``severity``, ``model``, ``title``, ``details``, ``features``, ``batch``, ``run``,
``report_path`` and ``incident``. Every kind renders the same parts; what differs is the
headline, the advice and which ``details`` keys it usually carries:

=====================  ==========================================================================
kind                   details keys read (all optional)
=====================  ==========================================================================
drift_persisting       streak, drift_share, drifted_features, decision, reason
drift_resolved         clean_batches, opened_at, duration_seconds
retrain_triggered      dag_id, reason, dry_run
retrain_deployed       version, previous_version, primary_metric, champion, challenger
retrain_not_deployed   reason (the gate's), version, primary_metric, champion, challenger, margin
retrain_failed         state, failed_task, error
trigger_refused        dag_id, status, error
dag_paused             dag_id, unpaused
airflow_unreachable    down_since, down_seconds, error
airflow_recovered      down_since, down_seconds
source_silent          last_batch_at, silent_seconds
source_recovered       silent_seconds
batch_rejected         reason, check
reminder               reminder, incident_kind, opened_at, open_seconds, last_notified_at
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

import hashlib
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from watcher.alerts.render import (
    Block,
    Links,
    Para,
    Redactor,
    Table,
    format_number,
    format_time,
    format_value,
    label,
    to_html,
    to_text,
)
from watcher.config import Settings
from watcher.state import OutboxItem

# Grafana dashboard uids the links point at; dashboards/ provisions them with these uids.
GRAFANA_MODEL_DASHBOARD = "watcher-model"
GRAFANA_OVERVIEW_DASHBOARD = "watcher-overview"

_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


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
_LOWER_IS_BETTER = {"mae", "rmse", "mse", "mape", "log_loss"}


def message_id(key: str, sender: str) -> str:
    """The same Message-ID for the same outbox key, on every attempt and after restarts.

    Mail systems drop a second copy with a Message-ID they have seen, so a mail re-sent
    after a crash between "sent" and "marked done" does not reach people twice.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    domain = parseaddr(sender)[1].rpartition("@")[2] or "watcher.invalid"
    # "In-Reply-To: <...>" must fit one 78-character line: a folded header comes back
    # with a leading space from some parsers, and then it no longer matches itself.
    room = 78 - len("In-Reply-To: <watcher..@>") - len(digest) - len(domain)
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", key)[: max(room, 0)].strip("-")
    return f"<watcher.{readable + '.' if readable else ''}{digest}@{domain}>"


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every password the configuration holds; none may appear in a mail."""
    found = [settings.smtp.password, settings.airflow.password]
    found += [getattr(m.source, "password", None) for m in settings.models.values()]
    return tuple(s.get_secret_value() for s in found if s is not None and s.get_secret_value())


def grafana_link(settings: Settings, model: str | None) -> str:
    base = settings.alerts.grafana_url.rstrip("/")
    if model is None:
        return f"{base}/d/{GRAFANA_OVERVIEW_DASHBOARD}"
    return f"{base}/d/{GRAFANA_MODEL_DASHBOARD}?{urlencode({'var-model': model})}"


def airflow_link(settings: Settings, dag_id: str | None, run_id: str | None = None) -> str | None:
    if not dag_id:
        return None
    base = (settings.airflow.ui_url or settings.airflow.url).rstrip("/")
    url = f"{base}/dags/{quote(dag_id, safe='')}"
    return f"{url}/runs/{quote(run_id, safe='')}" if run_id else url


def compose(item: OutboxItem, settings: Settings, recipients: list[str]) -> EmailMessage:
    """The mail for an outbox item of kind "alert" (a single alert or a digest)."""
    redact = Redactor(secret_values(settings))
    payload = item.payload
    if payload.get("alert") == "digest":
        headline, blocks = _digest_blocks(payload, settings, redact)
        attachment = None
    else:
        headline, blocks, attachment = _alert_blocks(item, settings, redact)
    severity = str(payload.get("severity") or "warning")
    model = payload.get("model")
    subject = (
        f"[watcher] {severity.upper()} {model}: {headline}"
        if model
        else (f"[watcher] {severity.upper()}: {headline}")
    )

    msg = EmailMessage()
    msg["Subject"] = _one_line(subject, 200)
    msg["From"] = settings.smtp.sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(item.created_at, usegmt=True)
    msg["Message-ID"] = message_id(item.key, settings.smtp.sender)
    incident = payload.get("incident")
    if incident:
        # Mails about one incident share a thread root, so clients group them.
        root = message_id(f"incident:{incident}", settings.smtp.sender)
        msg["References"] = root
        msg["In-Reply-To"] = root
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    msg["X-Watcher-Alert"] = str(payload.get("alert"))
    if model:
        msg["X-Watcher-Model"] = str(model)
    msg.set_content(to_text(headline, blocks))
    msg.add_alternative(to_html(headline, severity, blocks), subtype="html")
    if attachment is not None:
        name, data = attachment
        msg.add_attachment(data, maintype="text", subtype="html", filename=name)
    return msg


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _alert_blocks(
    item: OutboxItem, settings: Settings, redact: Redactor
) -> tuple[str, list[Block], tuple[str, bytes] | None]:
    p = item.payload
    kind = str(p.get("alert"))
    info = KINDS.get(kind, KindText(label(kind), ""))
    headline = redact(_one_line(str(p.get("title") or info.headline), 160))
    model = p.get("model")
    details: dict[str, Any] = dict(p.get("details") or {})
    blocks: list[Block] = [Para(info.advice)] if info.advice else []

    summary = [
        ("What", info.headline),
        ("Severity", str(p.get("severity"))),
        ("Model", str(model) if model else "-"),
        ("When", format_time(item.created_at)),
    ]
    if p.get("incident"):
        summary.append(("Incident", redact(str(p["incident"]))))
    blocks.append(Table("Summary", summary))

    comparison = _comparison(details, redact)
    if comparison is not None:
        blocks.append(comparison)
    features = _features(p.get("features") or [], redact)
    if features is not None:
        blocks.append(features)
    if details:
        blocks.append(Table("Details", _kv_rows(details, redact, DETAIL_LABELS)))
    batch = p.get("batch") or {}
    if batch:
        blocks.append(Table("Batch", _kv_rows(batch, redact, {})))
    run = p.get("run") or {}
    if run:
        blocks.append(Table("Airflow run", _kv_rows(run, redact, {})))

    links = [("Grafana dashboard", grafana_link(settings, model))]
    dag_id = run.get("dag_id") or details.get("dag_id")
    if dag_id is None and model and kind in ("dag_paused", "trigger_refused"):
        dag_id = settings.dag_id(model) if model in settings.models else None
    airflow = airflow_link(settings, dag_id, run.get("run_id"))
    if airflow:
        links.append(("Airflow run" if run.get("run_id") else "Airflow DAG", airflow))

    attachment = None
    report = p.get("report_path")
    if report:
        path = Path(report)
        limit = settings.alerts.attach_report_max_bytes
        try:
            size = path.stat().st_size
        except OSError:
            blocks.append(Para(f"The drift report was written to {path}, which is gone now."))
        else:
            if size <= limit:
                attachment = (_report_name(model, batch), path.read_bytes())
                blocks.append(Para(f"The evidently drift report is attached ({attachment[0]})."))
            else:
                blocks.append(
                    Para(
                        f"The evidently drift report ({size / 1e6:.1f} MB) is larger than "
                        f"alerts.attach_report_max_bytes ({limit} bytes); it is saved on "
                        f"the watcher host at {path}."
                    )
                )
                links.append(("Drift report", path.resolve().as_uri()))
    blocks.append(Links("Links", links))
    return headline, blocks, attachment


def _report_name(model: str | None, batch: dict[str, Any]) -> str:
    stem = f"drift-report-{model or 'watcher'}-{batch.get('batch_id') or 'batch'}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:120] + ".html"


def _kv_rows(
    data: dict[str, Any], redact: Redactor, labels: dict[str, str]
) -> list[tuple[str, ...]]:
    skip = {"champion", "challenger", "primary_metric"} if labels else set()
    keys = [k for k in labels if k in data] + [k for k in data if k not in labels]
    return [
        (labels.get(k) or label(k), format_value(k, data[k], redact)) for k in keys if k not in skip
    ]


def _comparison(details: dict[str, Any], redact: Redactor) -> Table | None:
    champion, challenger = details.get("champion"), details.get("challenger")
    if not isinstance(champion, dict) and not isinstance(challenger, dict):
        return None
    champion = champion if isinstance(champion, dict) else {}
    challenger = challenger if isinstance(challenger, dict) else {}
    primary = details.get("primary_metric")
    rows = []
    for metric in [*champion, *(m for m in challenger if m not in champion)]:
        old, new = champion.get(metric), challenger.get(metric)
        change = "-"
        if isinstance(old, int | float) and isinstance(new, int | float) and old != 0:
            change = f"{(new - old) / abs(old):+.1%}"
        name = f"{metric} (primary)" if metric == primary else str(metric)
        if str(metric).lower() in _LOWER_IS_BETTER:
            name += ", lower is better"
        rows.append((redact(name), _num(old), _num(new), change))
    return Table("Champion vs challenger", rows, ("metric", "champion", "challenger", "change"))


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int | float):
        return format_number(float(value))
    return str(value)


def _features(features: list[dict[str, Any]], redact: Redactor) -> Table | None:
    if not features:
        return None
    drifted = [f for f in features if f.get("drifted", True)]
    rows = [
        (
            redact(str(f.get("feature") or f.get("column") or "?")),
            redact(str(f.get("stattest") or f.get("test") or "-")),
            _num(f.get("score")),
            _num(f.get("threshold")),
        )
        for f in drifted
    ]
    title = f"Drifted features ({len(drifted)} of {len(features)})"
    return Table(title, rows, ("feature", "test", "score", "threshold"))


def _digest_blocks(
    payload: dict[str, Any], settings: Settings, redact: Redactor
) -> tuple[str, list[Block]]:
    members: list[dict[str, Any]] = list(payload.get("members") or [])
    members.sort(
        key=lambda m: (_SEVERITY_ORDER.get(m["payload"].get("severity"), 3), m["created_at"])
    )
    models = sorted({m["payload"].get("model") or "-" for m in members})
    headline = f"{len(members)} alerts for {len(models)} model(s)"
    times = [float(m["created_at"]) for m in members] or [0.0]
    blocks: list[Block] = [
        Para(
            f"{len(members)} alerts fired between {format_time(min(times))} and "
            f"{format_time(max(times))}. More than alerts.digest_threshold "
            f"({settings.alerts.digest_threshold}) became due within "
            f"{settings.alerts.digest_window_seconds:g} s, so they come as this one mail."
        )
    ]
    by_kind: dict[tuple[str, str], int] = {}
    for m in members:
        k = (m["payload"].get("model") or "-", str(m["payload"].get("alert")))
        by_kind[k] = by_kind.get(k, 0) + 1
    blocks.append(
        Table(
            "Count by model and kind",
            [
                (model, KINDS.get(kind, KindText(kind, "")).headline, str(n))
                for (model, kind), n in sorted(by_kind.items())
            ],
            ("model", "what", "alerts"),
        )
    )
    rows = []
    reports = []
    for m in members:
        p = m["payload"]
        drifted = [
            str(f.get("feature") or f.get("column"))
            for f in p.get("features") or []
            if f.get("drifted", True)
        ]
        shown = ", ".join(drifted[:4]) + (f" +{len(drifted) - 4}" if len(drifted) > 4 else "")
        rows.append(
            (
                format_time(float(m["created_at"])),
                str(p.get("severity")),
                str(p.get("model") or "-"),
                redact(_one_line(str(p.get("title") or p.get("alert")), 100)),
                redact(shown) or "-",
            )
        )
        if p.get("report_path"):
            reports.append(
                (
                    f"{p.get('model')} {(p.get('batch') or {}).get('batch_id', '')}".strip(),
                    Path(p["report_path"]).resolve().as_uri(),
                )
            )
    blocks.append(Table("Alerts", rows, ("when", "severity", "model", "what", "drifted features")))
    links = [("Grafana overview", grafana_link(settings, None))]
    links += [(f"Grafana: {m}", grafana_link(settings, m)) for m in models if m != "-"]
    blocks.append(Links("Links", links))
    if reports:
        blocks.append(
            Para("Drift reports are not attached to a digest; they are saved on the watcher host:")
        )
        blocks.append(Links("Drift reports", reports))
    return headline, blocks
