"""An alert mail from an outbox item: subject, plain text + HTML, links and the drift report.

The payload is the one `watcher.alerts.alert_action` builds; `watcher.alerts.kinds` says
what each kind says and which ``details`` keys it reads. Every value shown goes through a
`Scrubber` (`watcher.secrets`), so configured passwords never reach a mail. A digest (kind
``digest``, built by the dispatcher) lists its ``members`` instead of one alert.
"""

from __future__ import annotations

import hashlib
import re
import time
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from watcher.alerts.kinds import (
    DETAIL_LABELS,
    GRAFANA_MODEL_DASHBOARD,
    GRAFANA_OPERATIONS_DASHBOARD,
    GRAFANA_OVERVIEW_DASHBOARD,
    KINDS,
    LOWER_IS_BETTER,
    OPERATIONS_KINDS,
    SEVERITY_ORDER,
    KindText,
)
from watcher.alerts.render import (
    Block,
    Links,
    Para,
    Table,
    format_number,
    format_time,
    format_value,
    label,
    to_html,
    to_text,
)
from watcher.config import Settings
from watcher.secrets import Scrubber, secret_values
from watcher.state import Action, OutboxItem


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


def grafana_link(settings: Settings, model: str | None, dashboard: str | None = None) -> str:
    """The model's detail dashboard, or `dashboard` (a uid) when given or there is no model."""
    base = settings.alerts.grafana_url.rstrip("/")
    if dashboard is not None or model is None:
        return f"{base}/d/{dashboard or GRAFANA_OVERVIEW_DASHBOARD}"
    return f"{base}/d/{GRAFANA_MODEL_DASHBOARD}?{urlencode({'var-model': model})}"


def airflow_link(settings: Settings, dag_id: str | None, run_id: str | None = None) -> str | None:
    if not dag_id:
        return None
    base = (settings.airflow.ui_url or settings.airflow.url).rstrip("/")
    url = f"{base}/dags/{quote(dag_id, safe='')}"
    return f"{url}/runs/{quote(run_id, safe='')}" if run_id else url


def compose(item: OutboxItem, settings: Settings, recipients: list[str]) -> EmailMessage:
    """The mail for an outbox item of kind "alert" (a single alert or a digest)."""
    redact = Scrubber(secret_values(settings), urls=True)
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


def render(action: Action, settings: Settings) -> tuple[str, str]:
    """Subject and HTML body of an alert that is mailed now rather than through the outbox
    (the retraining DAG's end-of-run mail): the same renderer as every other alert."""
    item = OutboxItem(0, action.kind, action.key, action.model, action.payload, 0, time.time())
    msg = compose(item, settings, [])
    body = msg.get_body(("html",))
    assert body is not None  # compose always adds the HTML part
    return str(msg["Subject"]), str(body.get_content())


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _alert_blocks(
    item: OutboxItem, settings: Settings, redact: Scrubber
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

    links = []
    if model:
        links.append(("Grafana: model dashboard", grafana_link(settings, model)))
    if kind in OPERATIONS_KINDS or not model:
        ops = grafana_link(settings, None, GRAFANA_OPERATIONS_DASHBOARD)
        links.append(("Grafana: operations dashboard", ops))
    dag_id = run.get("dag_id") or details.get("dag_id")
    if dag_id is None and model and kind in ("dag_paused", "trigger_refused"):
        dag_id = settings.dag_id(model) if model in settings.models else None
    airflow = airflow_link(settings, dag_id, run.get("run_id"))
    if airflow:
        links.append(("Airflow run" if run.get("run_id") else "Airflow DAG", airflow))

    if p.get("evidently_url"):
        links.append(("Evidently UI: the model's batches", str(p["evidently_url"])))

    attachment = None
    report = p.get("report_path")
    if report:
        path = Path(report)
        limit = settings.alerts.attach_report_max_bytes
        try:
            size = path.stat().st_size
        except OSError:
            # Reports are rendered after the batch, in the background; the mail waited a
            # bounded time for it (alerts.report_wait_seconds) and now links where it lands.
            blocks.append(
                Para(
                    f"The evidently drift report was not ready when this mail was sent; it is "
                    f"saved on the watcher host at {path} once rendered."
                )
            )
            links.append(("Drift report", path.resolve().as_uri()))
        else:
            # The limit is on what the mail carries: base64 makes 3 bytes 4, plus line ends.
            if _encoded_size(size) <= limit:
                attachment = (_report_name(model, batch), path.read_bytes())
                blocks.append(Para(f"The evidently drift report is attached ({attachment[0]})."))
            else:
                blocks.append(
                    Para(
                        f"The evidently drift report ({size / 1e6:.1f} MB, "
                        f"{_encoded_size(size) / 1e6:.1f} MB in a mail) is larger than "
                        f"alerts.attach_report_max_bytes ({limit} bytes); it is saved on "
                        f"the watcher host at {path}."
                    )
                )
                links.append(("Drift report", path.resolve().as_uri()))
    blocks.append(Links("Links", links))
    return headline, blocks, attachment


def _encoded_size(size: int) -> int:
    """Bytes an attachment of `size` bytes takes in a mail (base64, 76-character lines)."""
    encoded = 4 * ((size + 2) // 3)
    return encoded + 2 * (encoded // 76 + 1)


def _report_name(model: str | None, batch: dict[str, Any]) -> str:
    stem = f"drift-report-{model or 'watcher'}-{batch.get('batch_id') or 'batch'}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:120] + ".html"


def _kv_rows(
    data: dict[str, Any], redact: Scrubber, labels: dict[str, str]
) -> list[tuple[str, ...]]:
    skip = {"champion", "challenger", "primary_metric"} if labels else set()
    keys = [k for k in labels if k in data] + [k for k in data if k not in labels]
    return [
        (labels.get(k) or label(k), format_value(k, data[k], redact)) for k in keys if k not in skip
    ]


def _comparison(details: dict[str, Any], redact: Scrubber) -> Table | None:
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
        if str(metric).lower() in LOWER_IS_BETTER:
            name += ", lower is better"
        rows.append((redact(name), _num(old), _num(new), change))
    previous = details.get("previous_version")
    champ = "champion" if previous is None else f"champion ({_version(previous)})"
    return Table("Champion vs challenger", rows, ("metric", champ, "challenger", "change"))


def _version(value: Any) -> str:
    text = str(value)
    return text if text.startswith("v") else f"v{text}"


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int | float):
        return format_number(float(value))
    return str(value)


def _features(features: list[dict[str, Any]], redact: Scrubber) -> Table | None:
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
    payload: dict[str, Any], settings: Settings, redact: Scrubber
) -> tuple[str, list[Block]]:
    members: list[dict[str, Any]] = list(payload.get("members") or [])
    members.sort(
        key=lambda m: (SEVERITY_ORDER.get(m["payload"].get("severity"), 3), m["created_at"])
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
    links = [("Grafana: drift overview", grafana_link(settings, None))]
    links += [(f"Grafana: {m}", grafana_link(settings, m)) for m in models if m != "-"]
    blocks.append(Links("Links", links))
    if reports:
        blocks.append(
            Para("Drift reports are not attached to a digest; they are saved on the watcher host:")
        )
        blocks.append(Links("Drift reports", reports))
    return headline, blocks
