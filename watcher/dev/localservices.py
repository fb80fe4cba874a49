"""Local services for the demo (and tests): Airflow standalone, an SMTP sink, Prometheus.

Everything runs in project-local folders, in its own process group, and is stopped by
`Service.stop` (SIGTERM to the group, then SIGKILL after a bounded wait), so nothing is
left running after the demo exits or is interrupted.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher.errors import WatcherError

AIRFLOW_USER = "admin"
AIRFLOW_PASSWORD = "admin"  # noqa: S105 - the local demo login, printed to the user on purpose


def free_port(preferred: int | None = None) -> int:
    if preferred is not None:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Children that left the group's leader behind still share the group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def spawn(
    name: str, argv: list[str], log_path: Path, env: dict[str, str], url: str = ""
) -> Service:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as fh:
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Service(name, proc, log_path, url)


def _http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


# SQLite's busy timeout for the local Airflow, and the DAG processor's limits above it
# (a parse may wait on the lock more than once; a DAG is deactivated as stale only after
# its file went unparsed longer than a parse may take).
SQLITE_BUSY_SECONDS = 60
DAG_PARSE_TIMEOUT_SECONDS = 3 * SQLITE_BUSY_SECONDS
STALE_DAG_SECONDS = DAG_PARSE_TIMEOUT_SECONDS + 60


def airflow_env(
    home: Path, port: int, dags: Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for a local Airflow 3 on SQLite with the LocalExecutor.

    Shared by the demo and the test suite's Airflow fixture; `extra` adds or overrides.
    Inherited AIRFLOW_* and WATCHER_* variables are dropped, so a developer's own Airflow
    settings never leak into it.
    """
    home.mkdir(parents=True, exist_ok=True)
    # SQLite's default 5 s busy timeout is too short for a scheduler, a DAG processor
    # and an API server writing one file while watcher triggers and polls: the scheduler
    # died of "database is locked" (2 of 11 looped runs of the replica test) and no run
    # ended after that. Airflow imports its connect args from $AIRFLOW_HOME/config.
    (home / "config").mkdir(exist_ok=True)
    (home / "config" / "watcher_airflow_db.py").write_text(
        "# Written by watcher (watcher/dev/localservices.py).\n"
        f'CONNECT_ARGS = {{"timeout": {SQLITE_BUSY_SECONDS}}}\n'
    )
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({AIRFLOW_USER: AIRFLOW_PASSWORD}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "WATCHER_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "watcher_airflow_db.CONNECT_ARGS",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            # The API listens on 127.0.0.1 only; "localhost" may resolve to ::1 first.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            # One secret for every component; without it tasks fail signature checks.
            "AIRFLOW__API_AUTH__JWT_SECRET": "watcher-local-jwt-secret",
            "AIRFLOW__API__SECRET_KEY": "watcher-local-secret-key",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            # A parse that waits out the busy timeout must not be killed (Airflow's 50 s)
            # and its DAG deactivated as stale: triggers then get 404 until the next
            # parse (seen once in the replica test, the parse blocked 61 s on the lock).
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": str(DAG_PARSE_TIMEOUT_SECONDS),
            "AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD": str(STALE_DAG_SECONDS),
            # The log servers default to fixed ports; two local Airflows would clash.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # `airflow standalone` starts its components as `airflow ...` from PATH.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.update(extra or {})
    return env


def start_airflow(
    home: Path,
    port: int,
    dags: Path,
    extra_env: dict[str, str] | None = None,
    timeout: float = 180.0,
) -> Service:
    """`airflow standalone` in `home`; returns once the API answers and every component is
    healthy. Raises WatcherError (and stops what it started) otherwise."""
    airflow = shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"
    quiet = {
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
    env = airflow_env(home, port, dags, quiet | (extra_env or {}))
    svc = spawn(
        "airflow",
        [airflow, "standalone"],
        home / "standalone.log",
        env,
        url=f"http://127.0.0.1:{port}",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not svc.alive():
            raise WatcherError(f"airflow standalone exited early; see {svc.log_path}")
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            health = _http_json(f"{svc.url}/api/v2/monitor/health")
            states = [c.get("status") for c in health.values() if isinstance(c, dict)]
            if states and all(s == "healthy" for s in states if s is not None):
                return svc
        time.sleep(1)
    svc.stop()
    raise WatcherError(f"airflow did not become healthy within {timeout:.0f}s; see {svc.log_path}")


def airflow_token(url: str, username: str = AIRFLOW_USER, password: str = AIRFLOW_PASSWORD) -> str:
    req = urllib.request.Request(
        f"{url}/auth/token",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["access_token"])


def wait_for_dag(url: str, dag_id: str, timeout: float = 120.0) -> None:
    """Wait until the DAG processor has parsed `dag_id` (and it has no import error)."""
    token = airflow_token(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"{url}/api/v2/dags/{dag_id}", headers={"Authorization": f"Bearer {token}"}
        )
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(req, timeout=5) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(2)
    raise WatcherError(
        f"DAG {dag_id} did not appear in Airflow within {timeout:.0f}s",
        hint="check the DAG processor log and `airflow dags list-import-errors`",
    )


@dataclass
class MailSink:
    """A local SMTP server (aiosmtpd) that saves every message as a .eml file."""

    folder: Path
    port: int
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    _controller: Any = None

    def start(self) -> MailSink:
        from aiosmtpd.controller import Controller

        self.folder.mkdir(parents=True, exist_ok=True)
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                raw = envelope.original_content or envelope.content
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                n = len(sink.messages) + 1
                (sink.folder / f"{n:04d}.eml").write_bytes(raw)
                sink.messages.append(msg)
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def start_prometheus(
    workdir: Path, port: int, target: str, rules: Path | None = None
) -> Service | None:
    """Prometheus scraping `target` (host:port) every 2 s, if the binary is installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    rule_files = f"rule_files: [{json.dumps(str(rules))}]\n" if rules and rules.exists() else ""
    config.write_text(
        "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n"
        + rule_files
        + "scrape_configs:\n  - job_name: watcher\n    static_configs:\n"
        + f"      - targets: [{json.dumps(target)}]\n"
    )
    return spawn(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir / "prometheus.log",
        dict(os.environ),
        url=f"http://127.0.0.1:{port}",
    )
