"""The alert route, checked by amtool and run for real: daemon -> Prometheus -> Alertmanager
-> the on-call mailbox (aiosmtpd) and a webhook (a local HTTP server).

The end-to-end scenario uses the committed rules and route with shorter clocks only:
Prometheus scrapes and evaluates every second, WatcherDriftPersisting waits 2 s instead of
5 minutes (`for:`), and Alertmanager waits 4 s to group, 6 s between updates. Two models
drift at once: the on-call people get one notification naming both (the route groups by
alert name), it is not repeated while the drift lasts, and a "resolved" one follows once
clean batches end the drift.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import drop, frame, model_toml, wait_for, write_config
from webhook_support import Receiver

from watcher.dev.localservices import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ROUTE = REPO / "dashboards" / "alertmanager" / "alertmanager.yml"
PROM_CONFIG = REPO / "dashboards" / "prometheus" / "prometheus.yml"
RULES = REPO / "dashboards" / "prometheus" / "rules" / "watcher.rules.yml"
DRIFT = "WatcherDriftPersisting"


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"{names[0]} is not installed: install the Debian package 'prometheus-alertmanager' "
        "(sudo apt-get install prometheus-alertmanager, or `make system-deps` as root)",
        pytrace=False,
    )


def test_amtool_accepts_the_committed_route() -> None:
    amtool = _binary("amtool")
    done = subprocess.run(
        [amtool, "check-config", str(ROUTE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    assert "1 receivers" in done.stdout


def test_the_route_sends_every_alert_to_mail_and_the_webhook() -> None:
    route = yaml.safe_load(ROUTE.read_text(encoding="utf-8"))
    assert "routes" not in route["route"]  # every alert takes the default route
    (receiver,) = [r for r in route["receivers"] if r["name"] == route["route"]["receiver"]]
    assert receiver["email_configs"][0]["send_resolved"] is True
    assert receiver["webhook_configs"][0]["send_resolved"] is True
    assert route["route"]["group_by"] == ["alertname"]


# ---- end to end ------------------------------------------------------------------------------

_PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl


def _die_with_parent() -> None:
    _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: nothing outlives a killed pytest


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            args,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _scored(port: int) -> float:
    total = 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("watcher_batches_total{") and 'outcome="scored"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def _configs(tmp: Path, metrics_port: int, am_port: int, smtp_port: int, hook_url: str) -> Path:
    """Copies of the committed files with local addresses and short clocks."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == DRIFT:
                rule["for"] = "2s"
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")

    prom = yaml.safe_load(PROM_CONFIG.read_text(encoding="utf-8"))
    prom["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    prom["rule_files"] = [str(tmp / "rules.yml")]
    prom["scrape_configs"] = [
        job | {"scrape_interval": "1s", "scrape_timeout": "1s"}
        for job in prom["scrape_configs"]
        if job["job_name"] == "watcher"
    ]
    prom["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    [am] = prom["alerting"]["alertmanagers"]
    am["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom), encoding="utf-8")

    route = yaml.safe_load(ROUTE.read_text(encoding="utf-8"))
    route["global"]["smtp_smarthost"] = f"127.0.0.1:{smtp_port}"
    route["route"] |= {"group_wait": "4s", "group_interval": "6s", "repeat_interval": "1h"}
    for receiver in route["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook_url
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(route), encoding="utf-8")
    return tmp


@pytest.fixture
def stack(tmp_path: Path, smtp_server: Any, prometheus_bin: str) -> Iterator[dict[str, Any]]:
    alertmanager = _binary("prometheus-alertmanager", "alertmanager")
    receiver = Receiver(free_port())
    receiver.start()
    metrics_port, prom_port, am_port = free_port(), free_port(), free_port()
    never_drift = "policy = { consecutive = 1000, resolve_after = 1000, dry_run = true }"
    cfg = write_config(tmp_path, metrics_port=metrics_port, model_extra=never_drift)
    # A second model reading its own folder, so one alert name fires for two models.
    cfg.write_text(
        cfg.read_text()
        + model_toml(
            tmp_path / "incoming2", tmp_path / "reference.parquet", name="m2", extra=never_drift
        )
    )
    (tmp_path / "incoming2").mkdir()
    _configs(tmp_path, metrics_port, am_port, smtp_server.port, receiver.url)
    procs = []
    try:
        procs.append(
            _spawn(
                [
                    alertmanager,
                    f"--config.file={tmp_path / 'alertmanager.yml'}",
                    f"--storage.path={tmp_path / 'am'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",  # no gossip port: one instance
                    "--log.level=warn",
                ],
                tmp_path / "alertmanager.log",
            )
        )
        procs.append(
            _spawn(
                [
                    prometheus_bin,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                tmp_path / "prometheus.log",
            )
        )
        procs.append(
            _spawn(
                [sys.executable, "-m", "watcher", "run", "--config", str(cfg)],
                tmp_path / "daemon.log",
            )
        )
        wait_for(lambda: _ok(f"http://127.0.0.1:{am_port}/-/ready"), 60, what="Alertmanager")
        wait_for(lambda: _ok(f"http://127.0.0.1:{prom_port}/-/ready"), 60, what="Prometheus")
        wait_for(lambda: _ok(f"http://127.0.0.1:{metrics_port}/readyz"), 90, what="daemon")
        yield {
            "tmp": tmp_path,
            "metrics_port": metrics_port,
            "prom": f"http://127.0.0.1:{prom_port}",
            "receiver": receiver,
            "smtp": smtp_server,
        }
    finally:
        for proc in reversed(procs):
            _stop(proc)
        receiver.stop()


def _notifications(receiver: Receiver) -> list[dict[str, Any]]:
    return [
        p["body"]
        for p in receiver.posts
        if p["body"].get("groupLabels", {}).get("alertname") == DRIFT
    ]


def _feed(stack: dict[str, Any], names: list[str], shift: float, seed: int) -> None:
    """One batch per model, interleaved, then wait until both are scored."""
    before = _scored(stack["metrics_port"])
    tmp = stack["tmp"]
    for i, name in enumerate(names):
        drop(tmp / "incoming", f"{name}.parquet", frame(300, seed=seed + i, shift=shift))
        drop(tmp / "incoming2", f"{name}.parquet", frame(300, seed=seed + 50 + i, shift=shift))
    wait_for(
        lambda: _scored(stack["metrics_port"]) >= before + 2 * len(names),
        90,
        what=f"batches {names} scored",
    )


def test_a_drift_alert_reaches_mail_and_webhook_once_grouped_then_resolves(
    stack: dict[str, Any],
) -> None:
    receiver: Receiver = stack["receiver"]
    smtp = stack["smtp"]
    _feed(stack, ["d1", "d2", "d3"], shift=2.0, seed=10)  # streak 3 for both models

    wait_for(lambda: _notifications(receiver), 60, what="the firing notification")
    first = _notifications(receiver)[0]
    assert first["status"] == "firing"
    assert first["receiver"] == "oncall"
    models = sorted(a["labels"]["model"] for a in first["alerts"])
    assert models == ["m", "m2"], first  # one notification for both: grouped
    assert {a["status"] for a in first["alerts"]} == {"firing"}
    assert {a["labels"]["severity"] for a in first["alerts"]} == {"warning"}
    [mail] = smtp.wait_for(1, timeout=30)
    msg = mail.message
    assert mail.rcpt_tos == ["oncall@example.com"]
    assert re.match(r"\[FIRING:2\] " + DRIFT, str(msg["Subject"])), msg["Subject"]

    # The drift goes on: nothing is sent again within several group intervals.
    time.sleep(15)
    assert len(_notifications(receiver)) == 1
    assert len(smtp.messages) == 1

    _feed(stack, ["c1", "c2"], shift=0.0, seed=200)  # clean batches: streak 0
    wait_for(lambda: _notifications(receiver)[-1]["status"] == "resolved", 60, what="resolved")
    notes = _notifications(receiver)
    last = notes[-1]
    assert sorted(a["labels"]["model"] for a in last["alerts"]) == ["m", "m2"]
    assert {a["status"] for a in last["alerts"]} == {"resolved"}
    # Anything between the first and the last only reports a resolution (one model's drift
    # may end a group interval before the other's); no alert is announced twice as new.
    for note in notes[1:-1]:
        assert "resolved" in {a["status"] for a in note["alerts"]}, note
    mails = smtp.wait_for(len(notes), timeout=30)
    assert str(mails[-1].message["Subject"]).startswith(f"[RESOLVED] {DRIFT}")
    assert len(mails) == len(notes)
    body = json.dumps(last)
    assert "var-model=m" in body  # the rule's dashboard annotation travels along
