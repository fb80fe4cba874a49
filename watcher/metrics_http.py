"""The daemon's HTTP endpoint: /metrics, /healthz and /readyz.

`Health` is what the probes answer (the main loop beats it, startup marks it ready, checks
name why the daemon is degraded); `MetricsServer` serves the probes and the scrape of the
injected registry (`watcher.metrics.Metrics`) in a thread of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from prometheus_client import MetricsHandler

from watcher.errors import WatcherError
from watcher.metrics import Metrics
from watcher.metrics_models import scrape


class Health:
    """What /healthz and /readyz answer. The main loop beats; startup marks ready."""

    def __init__(self, stale_after_seconds: float) -> None:
        self.stale_after = stale_after_seconds
        self.ready = False
        self._beat = time.monotonic()
        # Why the daemon cannot do its work although it is alive (the state store refuses
        # writes, ...): /readyz answers 503 with these, /healthz names them.
        self.problems: dict[str, Callable[[], str | None]] = {}

    def beat(self) -> None:
        self._beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.stale_after

    def current_problems(self) -> list[str]:
        found = []
        for name, check in self.problems.items():
            why = check()
            if why:
                found.append(f"{name}: {why}")
        return found


class MetricsPortError(WatcherError):
    """The metrics endpoint cannot listen on its address."""


def _healthz(health: Health) -> tuple[int, bytes]:
    # Liveness: a restart would not cure a full disk (and would resend what it cannot
    # record), so problems are named here but only /readyz fails on them.
    if not health.alive():
        return 503, b"main loop stalled\n"
    body = "".join(f"degraded: {p}\n" for p in health.current_problems()) or "ok\n"
    return 200, body.encode()


def _readyz(health: Health) -> tuple[int, bytes]:
    problems = health.current_problems()
    if health.ready and health.alive() and not problems:
        return 200, b"ready\n"
    body = "not ready\n" + "".join(f"{p}\n" for p in problems)
    return 503, body.encode()


class MetricsServer:
    """/metrics, /healthz and /readyz over HTTP in a thread of its own.

    /metrics negotiates as prometheus_client's own handler does (the OpenMetrics format from
    the `Accept` header, gzip when `Accept-Encoding` allows); prometheus_client renders the
    registry, the gauges labelled by model come from their rendered-text cache
    (`watcher.metrics_models.scrape`).
    A thread keeps the endpoint answering even while a long scoring job holds the GIL in
    bursts, so Prometheus and container health checks never time out on a busy daemon.
    """

    def __init__(self, metrics: Metrics, health: Health, host: str, port: int) -> None:
        probes: dict[str, Callable[[], tuple[int, bytes]]] = {
            "/healthz": lambda: _healthz(health),
            "/readyz": lambda: _readyz(health),
        }

        class Handler(MetricsHandler):
            registry = metrics.registry

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/metrics":
                    headers, body = scrape(
                        metrics.registry,
                        metrics.model_families,
                        self.headers.get("Accept"),
                        self.headers.get("Accept-Encoding"),
                        query,
                    )
                    self.send_response(200)
                    for header in headers:
                        self.send_header(*header)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                probe = probes.get(path)
                status, body = probe() if probe else (404, b"not found\n")
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise MetricsPortError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror}",
                hint="another process holds the port (a second watcher?); choose a free "
                "metrics.port, 0 for any free port, or set metrics.enabled = false",
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
