"""The Prometheus configuration and alert rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

PROM_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "rules" / "watcher.rules.yml"
RULE_TESTS = PROM_DIR / "tests" / "watcher.rules.test.yml"
SEVERITIES = {"critical", "warning", "info"}


def promtool(promtool_bin: str, *args: str, cwd: Path = PROM_DIR) -> str:
    proc = subprocess.run(
        [promtool_bin, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def alert_rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_config_is_valid_and_loads_the_rules(promtool_bin: str) -> None:
    out = promtool(promtool_bin, "check", "config", str(CONFIG))
    assert "1 rule files found" in out
    assert re.search(rf"SUCCESS: {len(alert_rules())} rules found", out), out


def test_rules_are_valid(promtool_bin: str) -> None:
    out = promtool(promtool_bin, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_rule_unit_tests_pass(promtool_bin: str) -> None:
    out = promtool(promtool_bin, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert "SUCCESS" in out


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in doc["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {str(rule["alert"]) for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_the_issue_s_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    required = {
        "WatcherDown",  # daemon down
        "WatcherNoBatches",  # no batches for X
        "WatcherDriftPersisting",
        "WatcherRetrainFailed",
        "WatcherOutboxBacklog",
        "WatcherAirflowUnreachable",
        "WatcherSmtpFailing",
    }
    assert required <= names


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: str(r["alert"]))
def test_every_alert_tells_on_call_what_and_how_bad(rule: dict[str, object]) -> None:
    labels = rule.get("labels")
    annotations = rule.get("annotations")
    assert isinstance(labels, dict)
    assert labels.get("severity") in SEVERITIES
    assert isinstance(annotations, dict)
    assert annotations.get("summary")
    assert annotations.get("description")
    assert re.fullmatch(r"Watcher[A-Z][A-Za-z]+", str(rule["alert"]))
