"""A mail body as a few blocks (paragraphs, tables, links), rendered as plain text and HTML.

Keeping the content in blocks lets both parts of a mail say the same thing, and gives one
place where every value is formatted, escaped and scrubbed of secrets.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from watcher.secrets import REDACTED, Scrubber

_SEVERITY_COLOURS = {"critical": "#c0392b", "warning": "#d68910", "info": "#2471a3"}


@dataclass(frozen=True)
class Para:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Table:
    title: str
    rows: Sequence[tuple[str, ...]]
    # None: a key/value table whose first column names the row.
    headers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Links:
    title: str
    items: list[tuple[str, str]] = field(default_factory=list)  # (label, url)


Block = Para | Table | Links


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4g}"
    return f"{value:.3e}"


def format_value(key: str, value: Any, redact: Scrubber) -> str:
    """One value as people read it; the key hints at the unit (`*_at`, `*_seconds`, `*share`)."""
    if redact.is_secret_key(key) and value not in (None, ""):
        return REDACTED
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if (key.endswith("_at") or key.endswith("since")) and value > 1e9:
            return format_time(float(value))
        if key.endswith("_seconds"):
            return format_duration(float(value))
        if key.endswith("share") and 0 <= value <= 1:
            return f"{value:.0%}"
        return str(value) if isinstance(value, int) else format_number(value)
    if isinstance(value, dict | list):
        return redact(json.dumps(_mask(value, redact), sort_keys=True, default=str))
    return redact(str(value))


def _mask(value: Any, redact: Scrubber) -> Any:
    if isinstance(value, dict):
        return {
            k: REDACTED if redact.is_secret_key(str(k)) else _mask(v, redact)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask(v, redact) for v in value]
    return value


_LABELS = {"uri": "URI", "url": "URL", "dag_id": "DAG", "run_id": "Run id", "batch_id": "Batch"}


def label(key: str) -> str:
    return _LABELS.get(key) or key.replace("_", " ").capitalize()


# ---- plain text -----------------------------------------------------------------------------


def to_text(headline: str, blocks: list[Block]) -> str:
    out = [headline, "=" * min(len(headline), 78), ""]
    for block in blocks:
        if isinstance(block, Para):
            text = block.text.upper() if block.strong else block.text
            out += [textwrap.fill(text, width=78, break_on_hyphens=False), ""]
        elif isinstance(block, Table):
            out += [block.title, "-" * len(block.title), *_text_table(block), ""]
        elif block.items:
            out += [block.title, "-" * len(block.title)]
            out += [f"  {name}: {url}" for name, url in block.items]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _text_table(table: Table) -> list[str]:
    rows: list[tuple[str, ...]] = [*([table.headers] if table.headers else []), *table.rows]
    if not rows:
        return ["  (none)"]
    width = max(len(r) for r in rows)
    widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(width)]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append(("  " + "  ".join(cells)).rstrip())
        if n == 0 and table.headers:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


# ---- HTML -----------------------------------------------------------------------------------


def to_html(headline: str, severity: str, blocks: list[Block]) -> str:
    colour = _SEVERITY_COLOURS.get(severity, "#555555")
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"></head>',
        '<body style="font-family:Helvetica,Arial,sans-serif;font-size:14px;color:#222">',
        f'<h2 style="margin:0 0 12px 0;border-left:6px solid {colour};padding-left:8px">'
        f'<span style="color:{colour}">{e(severity.upper())}</span> {e(headline)}</h2>',
    ]
    for block in blocks:
        if isinstance(block, Para):
            text = f"<strong>{e(block.text)}</strong>" if block.strong else e(block.text)
            parts.append(f'<p style="margin:8px 0">{text}</p>')
        elif isinstance(block, Table):
            parts.append(f'<h3 style="margin:16px 0 4px 0;font-size:15px">{e(block.title)}</h3>')
            parts.append(_html_table(block))
        elif block.items:
            parts.append(f'<h3 style="margin:16px 0 4px 0;font-size:15px">{e(block.title)}</h3>')
            items = "".join(
                f'<li><a href="{e(url)}">{e(name)}</a></li>' for name, url in block.items
            )
            parts.append(f'<ul style="margin:4px 0">{items}</ul>')
    parts.append(
        '<p style="color:#888;font-size:12px;margin-top:24px">Sent by watcher, '
        "the drift monitoring daemon.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def _html_table(table: Table) -> str:
    e = html.escape
    cell = 'style="border:1px solid #ddd;padding:3px 8px;text-align:left"'
    rows = []
    if table.headers:
        rows.append(
            "<tr>"
            + "".join(f'<th {cell} bgcolor="#f2f2f2">{e(h)}</th>' for h in table.headers)
            + "</tr>"
        )
    for row in table.rows:
        if table.headers is None and row:
            head, *rest = row
            rows.append(
                f'<tr><th {cell} bgcolor="#f2f2f2">{e(head)}</th>'
                + "".join(f"<td {cell}>{e(c)}</td>" for c in rest)
                + "</tr>"
            )
        else:
            rows.append("<tr>" + "".join(f"<td {cell}>{e(c)}</td>" for c in row) + "</tr>")
    if not table.rows:
        rows.append(f"<tr><td {cell}>(none)</td></tr>")
    return f'<table style="border-collapse:collapse;margin:4px 0">{"".join(rows)}</table>'
