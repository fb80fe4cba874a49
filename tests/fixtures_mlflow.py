"""A real MLflow tracking server for the whole test session.

`mlflow_server` runs `mlflow server` from the venv, once per session: a SQLite backend
store and `--serve-artifacts` into a temporary folder (the artifact proxy, so clients read
and write artifacts over HTTP and never touch that folder), on a free port. It can be
stopped and started again on the same port and store for outage tests.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from watcher.dev.localservices import free_port

STARTUP_TIMEOUT = 180.0


@dataclass
class MlflowServer:
    url: str
    home: Path
    port: int
    startup_seconds: float = 0.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def artifacts(self) -> Path:
        """Where the server keeps artifacts (tests tamper with files here)."""
        return self.home / "artifacts"

    def registry_config(self, **overrides: Any) -> dict[str, Any]:
        """The `[registry]` table pointing watcher at this server."""
        return {
            "backend": "mlflow",
            "tracking_uri": self.url,
            "request_timeout_seconds": 10.0,
            "request_retries": 1,
        } | overrides

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        log = (self.home / "server.log").open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self._proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.home / 'mlflow.db'}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(self.artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            cwd=self.home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not up after {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        path = self.home / "server.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = MlflowServer(url=f"http://127.0.0.1:{port}", home=home, port=port)
    started = time.monotonic()
    atexit.register(server.stop)
    server.start()
    server.startup_seconds = time.monotonic() - started
    sys.stderr.write(f"\n[mlflow fixture] MLflow ready in {server.startup_seconds:.1f}s\n")
    try:
        yield server
    finally:
        server.stop()
