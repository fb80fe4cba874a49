"""A real Airflow 3.3.2 for the whole test session.

`airflow_server` starts, once per session, the api-server, scheduler and dag-processor of
the Airflow installed in the venv, in a temporary AIRFLOW_HOME with the LocalExecutor and
its metadata in a PostgreSQL database of its own (dropped at the end), an `admin`/`admin`
login, free ports and the DAGs of tests/airflow_dags (copied, so tests may add DAG files of
their own: `server.add_dag(path)`). Each component runs in a process group of its own so
the api-server can be stopped and started again for outage tests, and everything (task
processes too) is killed at the end of the session.

The helpers talk to Airflow with plain HTTP, not through watcher's gateway, so tests check
watcher's code against an independent view of Airflow.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures_postgres import ADMIN_DSN, PG_HOST, PG_PORT, PG_USER
from psycopg import sql

from watcher.dev.localservices import airflow_env, free_port

TEST_DAGS = Path(__file__).parent / "airflow_dags"
# DAG ids in tests/airflow_dags and whether each must be paused once parsed.
EXPECTED_DAGS = {"retrain_test": False, "retrain_fails": False, "retrain_paused": True}
COMPONENTS = ("api-server", "scheduler", "dag-processor")
STARTUP_TIMEOUT = 240.0
ACTIVE = ("queued", "running")


@dataclass
class AirflowServer:
    """A running Airflow and the helpers tests need around it."""

    url: str
    username: str
    password: str
    home: Path
    dags_folder: Path
    env: dict[str, str]
    startup_seconds: float = 0.0
    database: str | None = None  # its PostgreSQL metadata database, dropped by stop()
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token: str | None = None

    # ---- configuration for watcher -------------------------------------------------------

    def airflow_config(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for watcher's AirflowConfig pointing at this server."""
        return {
            "enabled": True,
            "url": self.url,
            "username": self.username,
            "password": self.password,
            "request_timeout_seconds": 5.0,
            "retry_attempts": 3,
            "retry_timeout_seconds": 20.0,
            "poll_interval_seconds": 1.0,
        } | overrides

    # ---- HTTP ------------------------------------------------------------------------------

    def _login(self) -> str:
        req = urllib.request.Request(
            f"{self.url}/auth/token",
            data=json.dumps({"username": self.username, "password": self.password}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(json.load(resp)["access_token"])

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Call /api/v2{path}; returns (status, decoded JSON). Logs in as needed."""
        for _ in range(2):
            if self._token is None:
                self._token = self._login()
            req = urllib.request.Request(
                f"{self.url}/api/v2{path}",
                data=None if body is None else json.dumps(body).encode(),
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Content-Type": "application/json",
                },
                method=method,
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, json.loads(resp.read() or b"null")  # 204: no body
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    self._token = None
                    continue
                return exc.code, json.loads(exc.read() or b"null")
        raise AssertionError("cannot log in to the test Airflow")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as resp:
            return dict(json.load(resp))

    # ---- DAGs and runs ---------------------------------------------------------------------

    def list_all(self, path: str, key: str) -> list[dict[str, Any]]:
        """Every item of a listing, page by page. Airflow caps `limit` at
        `[api] maximum_page_limit` (100) whatever a client asks, oldest first: a session
        that has made more than 100 runs of a DAG would otherwise not see its newest."""
        items: list[dict[str, Any]] = []
        sep = "&" if "?" in path else "?"
        while True:
            status, body = self.api("GET", f"{path}{sep}limit=100&offset={len(items)}")
            assert status == 200, body
            page = list(body[key])
            items += page
            if not page or len(items) >= body["total_entries"]:
                return items

    def list_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.list_all(f"/dags/{dag_id}/dagRuns", "dag_runs")

    def runs_with_conf(self, dag_id: str, key: str, value: Any) -> list[dict[str, Any]]:
        """Runs whose conf holds key=value: how tests count the runs they caused."""
        return [r for r in self.list_runs(dag_id) if (r.get("conf") or {}).get(key) == value]

    def get_run(self, dag_id: str, run_id: str) -> dict[str, Any] | None:
        status, body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        return dict(body) if status == 200 else None

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        states: Iterable[str] = ("success", "failed"),
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        wanted = set(states)
        deadline = time.monotonic() + timeout
        run = None
        while time.monotonic() < deadline:
            run = self.get_run(dag_id, run_id)
            if run is not None and run["state"] in wanted:
                return run
            time.sleep(0.5)
        raise AssertionError(f"run {dag_id}/{run_id} not in {wanted} after {timeout}s: {run}")

    def wait_until_idle(self, timeout: float = 120.0) -> None:
        """No queued or running run in any unpaused test DAG (runs of paused DAGs stay
        queued by design and are ignored)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [
                r["dag_run_id"]
                for d in self.list_all("/dags", "dags")
                if not d["is_paused"]
                for r in self.list_runs(d["dag_id"])
                if r["state"] in ACTIVE
            ]
            if not busy:
                return
            time.sleep(0.5)
        raise AssertionError(f"Airflow still busy after {timeout}s")

    def is_paused(self, dag_id: str) -> bool:
        status, body = self.api("GET", f"/dags/{dag_id}")
        assert status == 200, body
        return bool(body["is_paused"])

    def set_paused(self, dag_id: str, paused: bool) -> None:
        status, body = self.api(
            "PATCH", f"/dags/{dag_id}?update_mask=is_paused", {"is_paused": paused}
        )
        assert status == 200, body

    def add_dag(self, path: Path, dag_ids: Iterable[str], timeout: float = 120.0) -> None:
        """Copy a DAG file in and wait until Airflow has parsed every DAG in it."""
        shutil.copy(path, self.dags_folder / path.name)
        deadline = time.monotonic() + timeout
        for dag_id in dag_ids:
            while self.api("GET", f"/dags/{dag_id}")[0] != 200:
                if time.monotonic() > deadline:
                    raise AssertionError(f"DAG {dag_id} not parsed after {timeout}s")
                time.sleep(0.5)

    # ---- processes -------------------------------------------------------------------------

    def _spawn(self, component: str) -> None:
        log = (self.home / f"{component}.log").open("ab")
        airflow = Path(sys.executable).parent / "airflow"
        self._procs[component] = subprocess.Popen(
            [str(airflow), component],
            env=self.env,
            cwd=self.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a process group per component: stop one, keep the rest
        )
        log.close()

    def _kill(self, component: str, graceful: float = 3.0) -> None:
        """SIGTERM, `graceful` seconds to exit, then SIGKILL for the whole process group."""
        proc = self._procs.pop(component, None)
        if proc is None:
            return
        steps = [(signal.SIGTERM, graceful)] if graceful > 0 else []
        for sig, wait in [*steps, (signal.SIGKILL, 5.0)]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            break
        # Workers left in the group after the leader exited.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_api_server(self) -> None:
        """Kill the api-server like a crash (port closed: connections refused); the
        scheduler and dag-processor keep running."""
        self._kill("api-server", graceful=0)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", int(self.url.rsplit(":", 1)[1]))) != 0:
                    return
            time.sleep(0.2)
        raise AssertionError("api-server port still open after stopping it")

    def start_api_server(self, timeout: float = 120.0) -> None:
        self._spawn("api-server")
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited: {self.log_tail(name)}")
            try:
                last = health = self.health()
                if all(
                    (health.get(c) or {}).get("status") == "healthy"
                    for c in ("metadatabase", "scheduler", "dag_processor")
                ):
                    return
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.5)
        raise RuntimeError(f"Airflow not healthy after {timeout}s (last: {last})")

    def wait_for_dags(self, expected: dict[str, bool], timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        missing = list(expected)
        while time.monotonic() < deadline:
            missing = []
            for dag_id, paused in expected.items():
                status, body = self.api("GET", f"/dags/{dag_id}")
                if status != 200 or body["is_paused"] != paused:
                    missing.append(dag_id)
            if not missing:
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"DAGs {missing} not parsed after {timeout}s: {self.log_tail('dag-processor')}"
        )

    def log_tail(self, component: str, lines: int = 30) -> str:
        path = self.home / f"{component}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop every component and kill whatever Airflow started with this AIRFLOW_HOME."""
        for proc in self._procs.values():  # all at once: they stop in parallel
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for component in list(self._procs):
            self._kill(component)
        for pid in _pids_with_env("AIRFLOW_HOME", str(self.home)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.database is not None:
            drop_airflow_database(self.database)
            self.database = None


def _pids_with_env(name: str, value: str) -> list[int]:
    """Our processes started with name=value in their environment (task runners and any
    process that left its group)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def create_airflow_database() -> str:
    """A new, empty PostgreSQL database for one Airflow's metadata; its name."""
    name = f"watcher_airflow_{secrets.token_hex(5)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_airflow_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _environment(home: Path, dags: Path, port: int, database: str | None = None) -> dict[str, str]:
    """`database`: Airflow's metadata on that PostgreSQL database instead of SQLite."""
    # Fixed secrets: tokens stay valid across an api-server restart, and every component
    # verifies the others' tokens.
    env = airflow_env(
        home,
        port,
        dags,
        {
            "AIRFLOW__API_AUTH__JWT_SECRET": "watcher-tests-jwt-secret",
            "AIRFLOW__API__SECRET_KEY": "watcher-tests-secret-key",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
    )
    if database is not None:
        url = f"{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
        del env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"]  # SQLite's busy timeout
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"postgresql+psycopg://{url}"
        # Airflow's async engine defaults to asyncpg for PostgreSQL; psycopg does both.
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = f"postgresql+psycopg_async://{url}"
    return env


def start_airflow(home: Path) -> AirflowServer:
    """Migrate the database, start the components, wait until the test DAGs are parsed.

    The metadata live in PostgreSQL, as Airflow advises for anything beyond a try-out: on
    SQLite every writer takes one file lock, and a burst of ten runs (the replica test's)
    held the api-server's requests on it for minutes: task processes failed on
    API_SERVER_ERROR ReadTimeout and triggers waited out 30 s timeouts. The demo, for one
    user on one machine, keeps SQLite.
    """
    started = time.monotonic()
    database = create_airflow_database()
    dags = home / "dags"
    dags.mkdir(parents=True)
    for dag_file in TEST_DAGS.glob("*.py"):
        shutil.copy(dag_file, dags / dag_file.name)
    port = free_port()
    server = AirflowServer(
        url=f"http://127.0.0.1:{port}",
        username="admin",
        password="admin",
        home=home,
        dags_folder=dags,
        env=_environment(home, dags, port, database),
        database=database,
    )
    airflow = Path(sys.executable).parent / "airflow"
    atexit.register(server.stop)  # also when the session dies without running finalizers
    try:
        migrate = subprocess.run(
            [str(airflow), "db", "migrate"],
            env=server.env,
            cwd=home,
            capture_output=True,
            timeout=180,
            check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed: {migrate.stderr.decode()[-2000:]}")
        for component in COMPONENTS:
            server._spawn(component)
        server.wait_healthy()
        server.wait_for_dags(EXPECTED_DAGS)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - started
    return server


@pytest.fixture(scope="session")
def airflow_server(
    tmp_path_factory: pytest.TempPathFactory, pg_server: str
) -> Iterator[AirflowServer]:
    """The session's Airflow, its metadata on the PostgreSQL `pg_server` checks. Tests using
    it are marked `@pytest.mark.airflow`."""
    server = start_airflow(tmp_path_factory.mktemp("airflow-home"))
    sys.stderr.write(f"\n[airflow fixture] Airflow ready in {server.startup_seconds:.1f}s\n")
    try:
        yield server
    finally:
        server.stop()
