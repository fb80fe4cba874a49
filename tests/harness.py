"""One way to run the daemon in a test, three shapes:

- `run_daemon(settings)`: the daemon in this process, on the test's event loop (an async
  context manager); it is started, ready, and stopped (and its error raised) on exit.
- `started_daemon(settings)`: started and stopped, with no main loop: the test drives
  the parts (a source's poll, the pipeline) by hand.
- `DaemonThread(settings)`: the same daemon on an event loop in a thread, for a test that
  is synchronous (signals stay with pytest).
- `DaemonProcess(cfg, log)`: `watcher run` as a subprocess, in a process group of its own.

And one way to run the CLI: `watcher_cli(*args)`, `python -m watcher` as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from support import wait_for

from watcher.config import Settings
from watcher.daemon import Daemon


@dataclass
class RunningDaemon:
    """A daemon started by `run_daemon`: the daemon, its task and its metrics registry."""

    daemon: Daemon
    task: asyncio.Task[int]
    registry: CollectorRegistry

    @property
    def alive(self) -> bool:
        return not self.task.done()

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    async def until(
        self, check: Callable[[], Any], within: float = 60.0, what: str = "condition"
    ) -> Any:
        """Poll `check` (in a thread: it may block) until truthy; fail when the daemon
        stopped or `within` seconds passed."""
        deadline = time.monotonic() + within
        last: Any = None
        while time.monotonic() < deadline:
            last = await asyncio.to_thread(check)
            if last:
                return last
            assert self.alive, f"the daemon stopped: {self.task.exception()!r}"
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")


@asynccontextmanager
async def run_daemon(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    *,
    stop_timeout: float = 30.0,
    ready_timeout: float = 60.0,
) -> AsyncIterator[RunningDaemon]:
    """The daemon running on this event loop, until the block ends: then a stop request
    and a wait of at most `stop_timeout`; what the daemon raised is raised here."""
    daemon = Daemon(settings, registry if registry is not None else CollectorRegistry())
    running = RunningDaemon(daemon, asyncio.create_task(daemon.run()), daemon.metrics.registry)
    try:
        deadline = time.monotonic() + ready_timeout
        while not daemon.health.ready and running.alive:
            assert time.monotonic() < deadline, "the daemon did not become ready"
            await asyncio.sleep(0.02)
        if not running.alive:
            await running.task  # raises what startup raised
        yield running
    finally:
        if running.alive:
            daemon.request_stop()
        await asyncio.wait_for(running.task, stop_timeout)


@asynccontextmanager
async def started_daemon(
    settings: Settings, registry: CollectorRegistry | None = None
) -> AsyncIterator[Daemon]:
    """The daemon started (locks, sources, references, workers) but with no main loop:
    the test drives its parts (a source's poll, the pipeline) by hand."""
    daemon = Daemon(settings, registry if registry is not None else CollectorRegistry())
    await daemon.startup()
    try:
        yield daemon
    finally:
        await daemon.shutdown()


class DaemonThread:
    """`run_daemon` on an event loop in a thread, for synchronous tests; a context manager
    that waits for the daemon to be ready and stops it on exit."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.running: RunningDaemon | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="daemon-under-test", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            async with run_daemon(self.settings, self.registry) as running:
                self.running = running
                await asyncio.shield(running.task)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop(), not lost in the thread
            self.error = exc

    def start(self) -> DaemonThread:
        self._thread.start()
        wait_for(
            lambda: self.error is not None or self.running is not None, 90, what="daemon startup"
        )
        if self.error is not None:
            raise self.error
        return self

    def __enter__(self) -> DaemonThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def daemon(self) -> Daemon:
        assert self.running is not None, "the daemon is not running"
        return self.running.daemon

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    @property
    def port(self) -> int:
        assert self.daemon._server is not None
        return self.daemon._server.port

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def stop(self, timeout: float = 60.0) -> None:
        if self._loop is not None and self.running is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.running.daemon.request_stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the in-process daemon did not stop"
        if self.error is not None:
            raise AssertionError(f"the in-process daemon failed: {self.error!r}")


class DaemonProcess:
    """`watcher run` as a subprocess in a process group of its own, output to `log`."""

    def __init__(self, cfg: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run", "--config", str(cfg)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL for the whole group: no shutdown code runs, like a power cut."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def watcher_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """`python -m watcher ARGS` as a subprocess, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})} if env is not None else None,
        check=False,
    )


def thread_stacks() -> str:
    """Where every thread of this process is now: for a test that timed out waiting on an
    in-process daemon, so its failure shows what the daemon was stuck on."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"--- thread {names.get(ident, '?')} ({ident})\n{stack}")
    return "\n".join(parts)
