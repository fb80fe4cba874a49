"""A drift incident must not make the daemon look dead (issue 17, D26).

A real `watcher run` gets a drifted 1M-row batch that opens a drift incident. While it is
scored and its report rendered, `/healthz` is probed continuously: every probe answers
200. The alert mail arrives with the evidently report attached or linked, and a small
batch dropped right after the big one is scored without waiting for the report (rendered
in a child process on a 50k-row sample, after the commit).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fixtures_smtp import SmtpServer
from harness import DaemonProcess
from support import drop, frame, wait_for, write_config

from watcher.config import toml_value
from watcher.dev.localservices import free_port
from watcher.state import StateStore

pytestmark = pytest.mark.slow

ROWS = 1_000_000


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def _status_of(tmp: Path, batch: str) -> str | None:
    store = StateStore(tmp / "state" / "state.db")
    try:
        return store.batch_status("m", batch)
    finally:
        store.close()


def test_drifted_million_rows_keeps_healthz_200_and_mails_the_report(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    port = free_port()
    smtp = "[smtp]\n" + "".join(
        f"{k} = {toml_value(v)}\n" for k, v in smtp_server.smtp_settings().items()
    )
    smtp += "[alerts]\nreport_wait_seconds = 90\n"
    cfg = write_config(
        tmp_path,
        metrics_port=port,
        extra_top=smtp,
        model_extra="policy = { consecutive = 1 }",
        poll=0.2,
    )
    incoming = tmp_path / "incoming"
    big = frame(ROWS, seed=7, shift=2.0)
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    probes: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            probes.append(_status(port, "/healthz"))
            time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    try:
        wait_for(lambda: _status(port, "/readyz") == 200, 60, what="/readyz")
        prober.start()
        drop(incoming, "big.parquet", big)
        del big
        wait_for(
            lambda: _status_of(tmp_path, "big.parquet") == "scored",
            180,
            interval=0.2,
            what="the 1M-row batch scored",
        )
        scored_big = time.monotonic()
        drop(incoming, "after.csv", frame(300, seed=8))
        wait_for(
            lambda: _status_of(tmp_path, "after.csv") == "scored",
            60,
            interval=0.1,
            what="the next batch scored",
        )
        next_batch_seconds = time.monotonic() - scored_big
        [mail] = smtp_server.wait_for(1, timeout=120)
        stop.set()
        prober.join(10)
        assert daemon.alive()
    finally:
        stop.set()
        if daemon.alive():
            daemon.stop()

    assert probes, "no /healthz probe ran"
    assert set(probes) == {200}, f"{len(probes)} probes: {sorted(set(probes))}"
    message = mail.message
    assert "drift" in str(message["Subject"]).lower()
    attachments = [p.get_filename() for p in message.iter_attachments()]
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert attachments or "drift report" in text.lower(), text
    # The report is rendered in the background; the small batch did not wait for it.
    log = (tmp_path / "daemon.log").read_text()
    print(f"next batch scored {next_batch_seconds:.1f}s after the big one; {len(probes)} probes")
    assert log.index("scored m/after.csv") < log.index("drift report for m/big.parquet")
