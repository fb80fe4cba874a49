"""Airflow 3.3.2 with the CeleryExecutor and two workers that share no working folder.

`celery_airflow` starts, once per session, a private `redis-server` (the Celery broker, on
a free port, no persistence), the api-server, scheduler and dag-processor (as
`airflow_server` does, tests/fixtures_airflow.py, its metadata and Celery's results in a
PostgreSQL database of its own) with `CeleryExecutor`, and a workspace
whose registry is the session's MLflow server (tests/fixtures_mlflow.py): version 1 of the
example model migrated there and the file registry deleted.

Workers are started by the tests (`start_worker`): `airflow celery worker` with a distinct
`--celery-hostname`, its own empty working directory, HOME and TMPDIR, and its own name as
the task instances' hostname (tests/celery_worker_name.py). Both run as the same user on one
host, so the isolation is of folders, not permissions: nothing in a task names a path of
another worker, and what tasks hand each other travels through MLflow's artifact proxy.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fixtures_airflow import COMPONENTS, AirflowServer, _environment, create_airflow_database
from fixtures_mlflow import MlflowServer
from fixtures_postgres import PG_HOST, PG_PORT, PG_USER
from fixtures_retrain import DAGS, MODEL, Workspace, write_config

from watcher.config import Settings, dump_toml, load_config
from watcher.dev.localservices import free_port
from watcher.registry import ModelRegistry
from watcher.registry_backend import open_registry
from watcher.registry_migrate import migrate

TESTS = Path(__file__).resolve().parent
CELERY_EXECUTOR = "CeleryExecutor"


@dataclass
class CeleryAirflow:
    server: AirflowServer
    config: Path
    settings: Settings
    folder: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, name: str, **extra_env: str) -> Path:
        """An `airflow celery worker` named `name` in an empty folder of its own."""
        cwd = self.folder / "workers" / name
        (cwd / "tmp").mkdir(parents=True)
        env = self.server.env | {
            "HOME": str(cwd),
            "TMPDIR": str(cwd / "tmp"),
            "TEST_CELERY_WORKER": name,
            "PYTHONPATH": str(TESTS),
            **extra_env,
        }
        log = (self.folder / f"worker-{name}.log").open("ab")
        airflow = Path(sys.executable).parent / "airflow"
        self.workers[name] = subprocess.Popen(
            [
                str(airflow),
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@%h",
                "--concurrency",
                "1",
                "--skip-serve-logs",  # both would take the same log-server port
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return cwd

    def stop_worker(self, name: str, sig: int = signal.SIGTERM, wait: float = 120.0) -> None:
        """SIGTERM: Celery's warm shutdown (the task in flight finishes); SIGKILL: a crash."""
        proc = self.workers.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name, signal.SIGKILL, 10)
        self.server.stop()


def retrain_airflow(home: Path, config: Path, database: str, **extra_env: str) -> AirflowServer:
    """An AirflowServer (not started) for the retraining DAGs of `config` on a free port,
    its metadata in the PostgreSQL `database` (dropped when it stops)."""
    port = free_port()
    env = _environment(home, DAGS, port, database) | {"WATCHER_CONFIG": str(config), **extra_env}
    return AirflowServer(
        url=f"http://127.0.0.1:{port}",
        username="admin",
        password="admin",
        home=home,
        dags_folder=DAGS,
        env=env,
        database=database,
    )


def celery_env(database: str, redis_port: int) -> dict[str, str]:
    """Airflow settings for the CeleryExecutor on the Redis at `redis_port`; Celery's task
    results in Airflow's PostgreSQL `database`, as a deployment keeps them."""
    return {
        "AIRFLOW__CORE__EXECUTOR": CELERY_EXECUTOR,
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": (
            f"db+postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
        ),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "celery_worker_name.hostname",
        "PYTHONPATH": str(TESTS),
        # A worker killed with SIGKILL leaves its task instance `running` until the
        # scheduler misses its heartbeats (300 s by default): 60 s keeps the kill test
        # short, and is still far above the few seconds between heartbeats under load.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }


def boot(server: AirflowServer) -> None:
    """Migrate the database, start the components, wait until the DAG is parsed."""
    airflow = Path(sys.executable).parent / "airflow"
    done = subprocess.run(
        [str(airflow), "db", "migrate"],
        env=server.env,
        cwd=server.home,
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed: {done.stderr.decode()[-2000:]}")
    for component in COMPONENTS:
        server._spawn(component)
    server.wait_healthy()
    server.wait_for_dags({f"retrain_{MODEL}": False})


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    import socket

    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None:
            raise RuntimeError("redis-server exited at start")
        time.sleep(0.2)
    raise RuntimeError("redis-server did not listen within 30s")


def _mlflow_workspace(folder: Path, v1: Workspace, mlflow: MlflowServer) -> Path:
    for part in ("registry", "labels", "incoming"):
        shutil.copytree(v1.folder / part, folder / part)
    config = write_config(folder, retries=1, retry_delay_seconds=5)
    raw = tomllib.loads(config.read_text(encoding="utf-8"))
    tag = f"c{uuid.uuid4().hex[:8]}"
    raw["registry"] = mlflow.registry_config(
        model_name_prefix=f"{tag}-", experiment_prefix=f"watcher-{tag}", keep_versions=3
    )
    raw["models"] = raw.pop("models")
    config.write_text(dump_toml(raw), encoding="utf-8")
    settings = load_config(config)
    migrate(ModelRegistry(folder / "registry"), open_registry(settings.registry))
    shutil.rmtree(folder / "registry")
    return config


@pytest.fixture(scope="session")
def celery_airflow(
    tmp_path_factory: pytest.TempPathFactory,
    bikeshare_v1: Workspace,
    mlflow_server: MlflowServer,
    pg_server: str,
) -> Iterator[CeleryAirflow]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is missing: `make system-deps` installs it")
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("celery")
    config = _mlflow_workspace(folder / "ws", bikeshare_v1, mlflow_server)
    redis, redis_port = start_redis(folder)
    database = create_airflow_database()
    server = retrain_airflow(
        folder / "airflow", config, database, **celery_env(database, redis_port)
    )
    cluster = CeleryAirflow(server, config, load_config(config), folder / "ws")

    def stop_all() -> None:
        cluster.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(redis.pid, signal.SIGKILL)

    atexit.register(stop_all)
    try:
        boot(server)
        sys.stderr.write(
            f"\n[celery fixture] CeleryExecutor Airflow ready in "
            f"{time.monotonic() - started:.1f}s\n"
        )
        yield cluster
    finally:
        stop_all()
