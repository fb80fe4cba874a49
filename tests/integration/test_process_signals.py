"""`watcher run` as a process: a stop while it is still starting exits 0 at once and says
so; SIGUSR1 prints every thread's stack and the daemon goes on (watcher.process_signals)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from harness import DaemonProcess
from support import wait_for, write_config


def test_sigterm_while_opening_the_state_exits_0_and_says_so(tmp_path: Path) -> None:
    # A stand-in for a PostgreSQL server that hangs: a socket that takes the connection
    # and never answers, so the daemon is held inside `open_state` (before its event loop
    # runs) for as long as the test needs. A real server cannot be made to hang on cue.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        cfg = write_config(
            tmp_path,
            extra_top=(
                f'\n[state]\nbackend = "postgres"\ndsn = "postgresql://u@127.0.0.1:{port}/db"\n'
                "connect_timeout_seconds = 120\n"
            ),
        )
        log = tmp_path / "daemon.log"
        proc = DaemonProcess(cfg, log)
        try:
            server.settimeout(90)
            conn, _ = server.accept()  # the daemon is connecting: it is past its imports
            with conn:
                proc.signal(signal.SIGTERM)
                # A second stop while it exits (a supervisor, an impatient user) must not
                # turn the clean exit into a kill by the signal: CI caught exactly that.
                wait_for(lambda: "while watcher was starting" in log.read_text(), 30, 0.002)
                proc.signal(signal.SIGTERM)
                code = proc.stop(timeout=30)
        finally:
            proc.kill()
    text = log.read_text(errors="replace")
    assert code == 0, text
    assert "SIGTERM while watcher was starting: exiting before anything was claimed" in text
    assert "Traceback" not in text


def test_sigusr1_prints_every_threads_stack_and_the_daemon_goes_on(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    log = tmp_path / "daemon.log"
    proc = DaemonProcess(cfg, log)
    try:
        wait_for(lambda: "watching 1 model(s)" in log.read_text(), 90, what="the daemon up")
        proc.signal(signal.SIGUSR1)
        # faulthandler's format: a block per thread, the one that took the signal marked.
        wait_for(lambda: "Current thread" in log.read_text(), 30, what="the stack dump")
        dump = log.read_text(errors="replace")
        assert 'File "' in dump, dump
        assert "in run" in dump, dump
        assert proc.alive()
        assert proc.stop(timeout=30) == 0, log.read_text(errors="replace")
    finally:
        proc.kill()
    assert "stopped" in log.read_text()
