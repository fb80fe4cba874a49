"""What the dashboards and alert rules query, read from the committed files.

Shared by the static dashboard test (names and labels against `watcher.metrics`) and the
live test (every query through a real Prometheus). PromQL is not parsed in full: the
patterns below cover the subset these files use, and the live test runs every expression
through Prometheus itself, which would reject anything this reading gets wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = REPO / "dashboards" / "grafana" / "dashboards"
RULES_FILE = REPO / "dashboards" / "prometheus" / "rules" / "watcher.rules.yml"

# Series Prometheus makes itself for every target; not in the exporter's /metrics.
SYNTHETIC = {"up"}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
    "and", "or", "unless", "bool", "inf", "nan",
}  # fmt: skip
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it lives (for messages)."""

    where: str
    expr: str
    kind: str  # "panel", "annotation", "variable" or "rule"
    instant: bool = False  # Grafana runs it as an instant query (rules always are)


def dashboard_queries() -> list[Query]:
    """Every panel target, annotation and variable query of the committed dashboards."""
    found: list[Query] = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                where = f"{path.name} / {panel['title']} / {target['refId']}"
                instant = bool(target.get("instant"))
                found.append(Query(where, target["expr"], "panel", instant))
        for ann in board.get("annotations", {}).get("list", []):
            where = f"{path.name} / annotation {ann['name']}"
            found.append(Query(where, ann["expr"], "annotation"))
        for var in board.get("templating", {}).get("list", []):
            found.append(Query(f"{path.name} / variable {var['name']}", var["query"], "variable"))
    return found


def rule_queries() -> list[Query]:
    doc = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return [
        Query(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"], "rule", True)
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def substitute(expr: str, model: str, range_: str = "10m", rate_interval: str = "1m") -> str:
    """What Grafana sends for a query: template and built-in variables filled in."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", range_)
        .replace("$__interval", "15s")
        .replace("$model", model)
    )


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, $model
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    # label lists of aggregations and vector matching
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords and label lists excluded)."""
    if expr.startswith("label_values("):
        return {expr[len("label_values(") :].split(",")[0].strip()}
    stripped = _strip(expr)
    names = set()
    for m in re.finditer(rf"(?<![\w$.]){_NAME}", stripped):
        name = m.group(0)
        after = stripped[m.end() :].lstrip()
        if after.startswith("(") or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names used in its matcher) for every `metric{...}` selector."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return [
        (m.group(1), set(re.findall(rf"({_NAME})\s*(?:=~|!~|!=|=)", m.group(2))))
        for m in re.finditer(rf"({_NAME})\{{([^}}]*)\}}", expr)
    ]


def exposed_names(exposition: str) -> dict[str, str]:
    """Sample names a /metrics text can produce, mapped to their family, from its TYPE lines.

    Families without samples yet (labelled counters never incremented) still have a TYPE
    line, so this is what the exporter declares, not only what it has observed.
    """
    names: dict[str, str] = {}
    for m in re.finditer(rf"^# TYPE ({_NAME}) (\w+)$", exposition, re.MULTILINE):
        name, kind = m.group(1), m.group(2)
        if kind == "counter":
            base = name.removesuffix("_total")
            names.update({name: name, f"{base}_created": name})
        elif kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count", "_created"):
                names[name + suffix] = name
        elif kind == "summary":
            for suffix in ("", "_sum", "_count", "_created"):
                names[name + suffix] = name
        else:
            names[name] = name
    return names
