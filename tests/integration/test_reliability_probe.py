"""Every defect of the reliability probe (issue 19), reproduced and kept fixed.

Each test is named after the probe's defect number and follows its reproduction steps with
real files, a real SMTP server (aiosmtpd), a real PostgreSQL and a real full disk (a small
tmpfs). Daemons run in-process (a thread with its own event loop) unless the test is about
the process itself. What each asserts: the daemon stays up, the other models keep being
scored, nothing is duplicated, nothing secret is shown, and the operator is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fixtures_postgres import PgDatabase
from fixtures_smtp import SmtpServer
from harness import DaemonProcess, DaemonThread, watcher_cli
from prometheus_client import CollectorRegistry
from support import NUMERIC, drop, frame, wait_for
from typer.testing import CliRunner

from watcher.alerts import alert_action
from watcher.alerts.dispatcher import MailDispatcher
from watcher.cli import app
from watcher.config import ColumnsConfig, QualityConfig, Settings, dump_toml, load_config
from watcher.daemon import Daemon
from watcher.dev.localservices import free_port
from watcher.drift.quality import check_batch, profile_reference
from watcher.errors import BatchRejected, ConfigError, RegistryError, WatcherError
from watcher.metrics import Metrics
from watcher.registry import ModelRegistry
from watcher.sources.sql.source import SqlSource
from watcher.state import StateStore

COLUMNS = {"numeric": NUMERIC, "categorical": ["c"], "prediction": "p"}


# ---- helpers --------------------------------------------------------------------------------


def model(tmp: Path, name: str, **extra: Any) -> dict[str, Any]:
    incoming = tmp / f"incoming-{name}"
    incoming.mkdir(exist_ok=True)
    source = {"kind": "directory", "path": str(incoming), "settle_seconds": 0}
    source |= extra.pop("source", {})
    cfg: dict[str, Any] = {"source": source, "columns": dict(COLUMNS)}
    cfg["columns"] |= extra.pop("columns", {})
    if "reference" not in extra:
        reference = tmp / "reference.parquet"
        if not reference.exists():
            frame(600, seed=1).to_parquet(reference)
        cfg["reference"] = str(reference)
    elif extra["reference"] is None:
        extra.pop("reference")
    return cfg | extra


def config(tmp: Path, models: dict[str, dict[str, Any]], **sections: Any) -> Path:
    data: dict[str, Any] = {
        "daemon": {"state_dir": str(tmp / "state"), "poll_interval_seconds": 0.1},
        "metrics": {"port": 0},
        "registry": {"path": str(tmp / "registry")},
    }
    for key, value in sections.items():
        data[key] = data.get(key, {}) | value
    data["models"] = models
    path = tmp / "watcher.toml"
    path.write_text(dump_toml(data))
    return path


class Running(DaemonThread):
    """A `Daemon` running in a thread with its own event loop (signals stay with pytest)."""

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@contextlib.contextmanager
def state(settings: Settings) -> Iterator[StateStore]:
    store = StateStore(settings.daemon.state_dir / "state.db")
    try:
        yield store
    finally:
        store.close()


def status(settings: Settings, model: str, batch: str) -> str | None:
    with state(settings) as store:
        return store.batch_status(model, batch)


class LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, text: str) -> list[str]:
        return [r.getMessage() for r in self.records if text in r.getMessage()]


@pytest.fixture
def logs() -> Iterator[LogRecords]:
    handler = LogRecords()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


def with_id(df: pd.DataFrame, start: int = 0) -> pd.DataFrame:
    return df.assign(id=range(start, start + len(df)))


# ---- D3, D21: label files -------------------------------------------------------------------


def test_d3_bad_label_files_are_set_aside_and_every_model_keeps_being_scored(
    tmp_path: Path,
) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    cfg = config(
        tmp_path,
        {
            "m": model(
                tmp_path,
                "m",
                source={"labels_path": str(labels)},
                columns={"id": "id", "target": "y"},
            ),
            "other": model(tmp_path, "other"),
        },
    )
    settings = load_config(cfg)
    with Running(settings) as d:
        drop(tmp_path / "incoming-m", "b1.csv", with_id(frame(200, seed=2)))
        wait_for(lambda: status(settings, "m", "b1.csv") == "scored", what="b1 scored")
        (labels / "empty.csv").touch()
        (labels / "latin1.csv").write_bytes("id,y\n1,caf\xe9\n".encode("latin-1"))
        (labels / "text.csv").write_text("id,y\n1,high\n2,low\n")
        (labels / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(200))
        pd.DataFrame({"id": range(50), "y": np.arange(50.0)}).to_csv(
            labels / "good.csv", index=False
        )
        names = ["empty.csv", "latin1.csv", "text.csv", "corrupt.parquet", "good.csv"]

        def marks() -> dict[str, str | None]:
            with state(settings) as store:
                return {n: store.watermark(f"labels:m:{n}") for n in names}

        got = wait_for(lambda: all(marks().values()) and marks(), what="label files handled")
        assert got["good.csv"] == "read"
        assert "empty" in str(got["empty.csv"])
        assert "not UTF-8" in str(got["latin1.csv"])
        assert "not numbers" in str(got["text.csv"])
        assert "regression" in str(got["text.csv"])
        assert "Parquet" in str(got["corrupt.parquet"])
        assert all(str(got[n]).startswith("rejected: ") for n in names[:4])
        # The good file was used; the operator is told about the four others.
        assert d.metric("watcher_model_performance", model="m", metric="mae") > 0
        assert d.metric("watcher_problems_total", model="m", kind="label_file") == 4
        with state(settings) as store:
            alerts = [
                i["key"]
                for i in store.outbox_items("m")
                if i["payload"]["alert"] == "label_file_rejected"
            ]
        assert len(alerts) == 4
        # Still up, and both models still scored.
        drop(tmp_path / "incoming-m", "b2.csv", with_id(frame(200, seed=3), 1000))
        drop(tmp_path / "incoming-other", "o1.csv", frame(200, seed=4))
        wait_for(lambda: status(settings, "m", "b2.csv") == "scored", what="b2 scored")
        wait_for(lambda: status(settings, "other", "o1.csv") == "scored", what="o1 scored")
        assert d.alive
    # A restart does not die on them either, and does not read them again.
    with Running(settings) as d:
        time.sleep(0.5)
        assert d.alive
        assert d.metric("watcher_problems_total", model="m", kind="label_file") == 0


def test_d21_a_label_file_being_written_is_read_only_once_complete(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    cfg = config(
        tmp_path,
        {
            "m": model(
                tmp_path,
                "m",
                source={"labels_path": str(labels), "settle_seconds": 1.0},
                columns={"id": "id", "target": "y"},
            )
        },
    )
    settings = load_config(cfg)
    with Running(settings) as d:
        drop(tmp_path / "incoming-m", "b1.csv", with_id(frame(200, seed=2)))
        wait_for(lambda: status(settings, "m", "b1.csv") == "scored", what="b1 scored")
        path = labels / "labels-001.csv"
        with path.open("w") as fh:  # the probe's case: only the header so far
            fh.write("id,y\n")
            fh.flush()
            for i in range(20):  # a slow writer: a row every 0.1 s
                time.sleep(0.1)
                fh.write(f"{i},{float(i)}\n")
                fh.flush()
                with state(settings) as store:
                    assert store.watermark("labels:m:labels-001.csv") is None, "read mid-write"

        def mark() -> str | None:
            with state(settings) as store:
                return store.watermark("labels:m:labels-001.csv")

        assert wait_for(mark, what="labels read") == "read"
        # All 20 rows counted: the exported MAE is over every label (|i - p_i| averaged).
        kept = pd.read_parquet(settings.daemon.state_dir / "predictions" / "m" / "b1.csv.parquet")
        expected = np.abs(np.arange(20.0) - kept.set_index("id").loc[range(20), "prediction"])
        assert d.metric("watcher_model_performance", model="m", metric="mae") == pytest.approx(
            float(expected.mean())
        )


# ---- D4: full state disk ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs: a real disk that fills up (root only, as on the probe's machine)."""
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.fail(f"mounting a tmpfs needs root: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False
    )
    return filler


def test_d4_full_state_disk_holds_mail_instead_of_repeating_it_and_says_so(
    tmp_path: Path, small_disk: Path, smtp_server: SmtpServer, logs: LogRecords
) -> None:
    smtp = smtp_server.smtp_settings(retry_attempts=1, retry_backoff_seconds=0.2)
    cfg = config(
        tmp_path,
        {"m": model(tmp_path, "m")},
        smtp=smtp,
        alerts={"digest_threshold": 100},
    )
    settings = load_config(cfg)
    assert settings.daemon.state_dir == small_disk
    smtp_server.stop()
    with Running(settings) as d:
        drop(tmp_path / "incoming-m", "bad.csv", frame(3, seed=2))  # rejected: an alert

        def pending_attempts() -> int:
            with state(settings) as store:
                items = store.outbox_items("m", status="pending")
            return int(items[0]["attempts"]) if items else 0

        wait_for(lambda: pending_attempts() >= 1, what="a failed delivery round")
        filler = fill(small_disk)
        smtp_server.start()
        # The probe got 51 copies in 25 s at a 0.5 s poll; at 0.1 s the dispatcher has ~40
        # rounds here. Not one mail may go out twice.
        time.sleep(4)
        ids = [m.message["Message-ID"] for m in smtp_server.messages]
        assert len(ids) == len(set(ids)) <= 1
        assert d.alive
        assert d.metric("watcher_state_writable") == 0
        code, body = d.get("/readyz")
        assert code == 503
        assert "state store" in body
        assert "full" in body
        code, body = d.get("/healthz")  # alive (a restart cures nothing) but says why
        assert code == 200
        assert "degraded" in body
        said = logs.matching("the state store takes no writes")
        assert 1 <= len(said) <= 2, said  # told once, not every round
        # Space again: the alert is delivered (or recorded) exactly once, and all is well.
        filler.unlink()
        wait_for(lambda: pending_attempts() == 0 and not _pending(settings), what="drained")
        wait_for(lambda: d.metric("watcher_state_writable") == 1, what="writable again")
        assert d.get("/readyz")[0] == 200
        time.sleep(0.5)
    ids = [m.message["Message-ID"] for m in smtp_server.messages]
    assert len(ids) == 1, ids


def _pending(settings: Settings) -> list[dict[str, Any]]:
    with state(settings) as store:
        return store.outbox_items(status="pending")


# ---- D5: the incoming folder vanishes ------------------------------------------------------


def test_d5_a_vanished_incoming_folder_is_an_alert_and_never_silently_recreated(
    tmp_path: Path, logs: LogRecords
) -> None:
    cfg = config(tmp_path, {"m": model(tmp_path, "m"), "other": model(tmp_path, "other")})
    settings = load_config(cfg)
    incoming = tmp_path / "incoming-m"
    with Running(settings) as d:
        incoming.rename(tmp_path / "moved")  # the share unmounts
        wait_for(lambda: d.metric("watcher_source_up", model="m") == 0, what="source down")

        def down_alerts() -> list[str]:
            with state(settings) as store:
                return [i["key"] for i in store.outbox_items("m") if "source:m:down" in i["key"]]

        # The gauge drops first, the alert is queued right after it in the same round.
        wait_for(lambda: len(down_alerts()) > 0, what="source_down alert queued")
        time.sleep(0.5)  # more rounds of the same outage add no second alert
        assert len(down_alerts()) == 1  # one source_down alert for the outage
        drop(tmp_path / "incoming-other", "o1.csv", frame(200, seed=4))
        wait_for(lambda: status(settings, "other", "o1.csv") == "scored", what="other scored")
        assert d.alive
    assert not incoming.exists()
    # A restart does not create an empty folder in its place and watch that.
    with Running(settings) as d:
        time.sleep(0.5)
        assert d.alive
        assert not incoming.exists()
        assert d.metric("watcher_source_up", model="m") == 0
        (tmp_path / "moved").rename(incoming)  # the share is back
        drop(incoming, "b1.csv", frame(200, seed=5))
        wait_for(lambda: status(settings, "m", "b1.csv") == "scored", what="m scored again")
        assert d.metric("watcher_source_up", model="m") == 1
    with state(settings) as store:
        kinds = [i["payload"]["alert"] for i in store.outbox_items("m")]
    assert kinds.count("source_down") == 1
    assert kinds.count("source_recovered") == 1
    assert logs.matching("does not exist (unmounted or moved?)")


# ---- D7: a reused file name ----------------------------------------------------------------


def test_d7_a_reused_name_never_overwrites_processed_or_quarantine_and_is_scored(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, {"m": model(tmp_path, "m")})
    settings = load_config(cfg)
    incoming = tmp_path / "incoming-m"
    with Running(settings) as d:
        drop(incoming, "daily.csv", frame(200, seed=2))
        wait_for(lambda: (incoming / "processed" / "daily.csv").exists(), what="day 1 archived")
        first = (incoming / "processed" / "daily.csv").read_bytes()
        time.sleep(0.05)
        drop(incoming, "daily.csv", frame(300, seed=3, shift=3))  # the next day, same name

        def scored_rows() -> list[int]:
            with state(settings) as store:
                return sorted(b.rows or 0 for b in store.recent_batches("m") if b.rows)

        wait_for(lambda: scored_rows() == [200, 300], what="day 2 scored under a new name")
        assert (incoming / "processed" / "daily.csv").read_bytes() == first
        archived = sorted(p.name for p in (incoming / "processed").iterdir())
        assert len(archived) == 2
        assert archived[0].startswith("daily.")
        assert "daily.csv" in archived
        assert d.metric("watcher_problems_total", model="m", kind="name_reused") == 1

        # A quarantined name dropped again, corrected: the quarantined original stays.
        drop(incoming, "fixme.csv", frame(3, seed=4))
        wait_for(lambda: (incoming / "quarantine" / "fixme.csv").exists(), what="quarantined")
        bad = (incoming / "quarantine" / "fixme.csv").read_bytes()
        time.sleep(0.05)
        drop(incoming, "fixme.csv", frame(200, seed=5))
        wait_for(lambda: len(scored_rows()) == 3, what="corrected file scored")
        assert (incoming / "quarantine" / "fixme.csv").read_bytes() == bad
        assert d.metric("watcher_problems_total", model="m", kind="name_reused") == 2
        assert not any(p.suffix == ".csv" for p in incoming.iterdir() if p.is_file())


def test_folder_batches_above_the_size_cap_are_rejected_with_a_reason(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"m": model(tmp_path, "m", source={"max_batch_bytes": 20_000})})
    settings = load_config(cfg)
    with Running(settings):
        drop(tmp_path / "incoming-m", "big.csv", frame(2000, seed=2))
        drop(tmp_path / "incoming-m", "small.csv", frame(100, seed=3))
        wait_for(lambda: status(settings, "m", "big.csv") == "rejected", what="big rejected")
        wait_for(lambda: status(settings, "m", "small.csv") == "scored", what="small scored")
    with state(settings) as store:
        reason = store.batch_reason("m", "big.csv") or ""
    assert reason.startswith("too_large:")
    assert "max_batch_bytes=20,000" in reason

    cfg = config(tmp_path, {"m": model(tmp_path, "m", source={"max_batch_rows": 500})})
    settings = load_config(cfg)
    with Running(settings) as d:
        drop(tmp_path / "incoming-m", "many.parquet", frame(600, seed=2))
        drop(tmp_path / "incoming-m", "many.csv", frame(600, seed=2))
        for name in ("many.parquet", "many.csv"):
            wait_for(
                lambda n=name: status(settings, "m", n) == "rejected",  # type: ignore[misc]
                what=f"{name} rejected",
            )
        assert d.metric("watcher_batches_rejected_total", model="m", reason="too_large") == 2
    with state(settings) as store:
        assert "max_batch_rows=500" in (store.batch_reason("m", "many.parquet") or "")


# ---- D8, D22: a damaged registry -----------------------------------------------------------


def _register(registry: ModelRegistry, seed: int) -> str:
    from sklearn.linear_model import LinearRegression

    ref = frame(600, seed=seed)
    est = LinearRegression().fit(ref[["a", "b"]], ref["p"])
    info = registry.register(
        "m", estimator=est, reference=ref, metrics={}, features=["a", "b"], params={}, run_id=None
    )
    return info.version


def test_d8_a_damaged_registry_keeps_the_old_reference_running_and_restartable(
    tmp_path: Path, logs: LogRecords
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote("m", _register(registry, 1))
    cfg = config(
        tmp_path, {"m": model(tmp_path, "m", reference=None), "other": model(tmp_path, "other")}
    )
    settings = load_config(cfg)
    pointer = tmp_path / "registry" / "m" / "PRODUCTION"
    n = 0

    def scores_m(d: Running) -> None:
        nonlocal n
        n += 1
        drop(tmp_path / "incoming-m", f"b{n}.csv", frame(200, seed=10 + n))
        wait_for(lambda: status(settings, "m", f"b{n}.csv") == "scored", what=f"b{n} scored")
        assert d.alive
        assert d.daemon is not None
        assert d.daemon.models["m"].reference.version == "v1"

    with Running(settings) as d:
        scores_m(d)
        pointer.write_text("abc\n")  # probe case 1: exit 2 before
        time.sleep(0.5)
        scores_m(d)
        # Probe case 2: a new version whose metadata lacks its artifacts (KeyError before).
        v2 = _register(registry, 2)
        meta = tmp_path / "registry" / "m" / "versions" / f"{int(v2):04d}" / "metadata.json"
        data = json.loads(meta.read_text())
        del data["artifacts"]
        meta.write_text(json.dumps(data))
        pointer.write_text(f"{v2}\n")
        time.sleep(0.5)
        scores_m(d)
        # Probe case 3: a reference that is not Parquet, with a matching checksum.
        v3 = _register(registry, 3)
        vdir = tmp_path / "registry" / "m" / "versions" / f"{int(v3):04d}"
        (vdir / "reference.parquet").write_bytes(b"not parquet at all")
        data = json.loads((vdir / "metadata.json").read_text())
        from watcher.registry import sha256_file

        data["artifacts"]["reference"]["sha256"] = sha256_file(vdir / "reference.parquet")
        (vdir / "metadata.json").write_text(json.dumps(data))
        pointer.write_text(f"{v3}\n")
        time.sleep(0.5)
        scores_m(d)
        assert d.metric("watcher_problems_total", model="m", kind="registry") >= 3
    assert len(logs.matching("cannot load the new reference of m")) == 3  # once per damage
    # A restart on the damaged registry keeps the last reference in use instead of exit 2.
    pointer.write_text("abc\n")
    with Running(settings) as d:
        scores_m(d)
        drop(tmp_path / "incoming-other", "o.csv", frame(200, seed=4))
        wait_for(lambda: status(settings, "other", "o.csv") == "scored", what="other scored")
    assert logs.matching("using v1, the last one in use")
    # A restart with PRODUCTION on v3, whose artifact is not Parquet: start-up reads no
    # reference (they are prepared on a model's first batch), and that first batch falls
    # back to v1, the last one in use, instead of failing.
    pointer.write_text(f"{v3}\n")
    with Running(settings) as d:
        scores_m(d)
    assert len(logs.matching("using v1, the last one in use")) == 2


def test_d22_registry_refuses_paths_outside_a_version_and_renamed_pickles(
    tmp_path: Path, logs: LogRecords
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    version = _register(registry, 1)
    vdir = tmp_path / "registry" / "m" / "versions" / f"{int(version):04d}"
    meta = json.loads((vdir / "metadata.json").read_text())
    outside = tmp_path / "outside.parquet"
    frame(600, seed=1).to_parquet(outside)
    from watcher.registry import sha256_file

    meta["artifacts"]["reference"] = {
        "path": "../../../../outside.parquet",
        "sha256": sha256_file(outside),
    }
    (vdir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="outside the version folder"):
        registry.load_reference("m", version)

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    version = _register(registry, 2)
    vdir = tmp_path / "registry" / "m" / "versions" / f"{int(version):04d}"
    (vdir / "model.skops").write_bytes(pickle.dumps(Boom()))
    meta = json.loads((vdir / "metadata.json").read_text())
    meta["artifacts"]["model"]["sha256"] = sha256_file(vdir / "model.skops")
    (vdir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="not a skops model file"):
        registry.load_model("m", version)
    assert not (tmp_path / "pwned").exists()

    # PRODUCTION pointing at a version that does not exist: logged once, not every round.
    registry.promote("m", _register(registry, 3))
    cfg = config(tmp_path, {"m": model(tmp_path, "m", reference=None)})
    settings = load_config(cfg)
    with Running(settings) as d:
        (tmp_path / "registry" / "m" / "PRODUCTION").write_text("7\n")
        time.sleep(1.5)  # 15 loop rounds
        assert d.alive
    assert len(logs.matching("cannot load the new reference of m")) == 1


# ---- D9: two daemons on one state ----------------------------------------------------------


def test_d9_a_second_daemon_on_the_same_state_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"m": model(tmp_path, "m")})
    settings = load_config(cfg)
    with Running(settings) as d:
        done = watcher_cli(
            "run", "--config", str(cfg), env={"WATCHER_METRICS__PORT": str(free_port())}
        )
        assert done.returncode == 2
        assert f"another watcher daemon (pid {os.getpid()})" in done.stderr
        assert "state directory" in done.stderr
        drop(tmp_path / "incoming-m", "b1.csv", frame(200, seed=2))
        wait_for(lambda: status(settings, "m", "b1.csv") == "scored", what="b1 scored")
        assert d.alive
        with state(settings) as store:
            assert len(store.decisions("m", 10)) == 1


# ---- D10, D11: secrets ---------------------------------------------------------------------


def test_d10_a_misspelled_secret_key_is_named_but_its_value_never_printed(
    tmp_path: Path,
) -> None:
    canary = "CANARYsmtp-d10-0x51f"
    cfg = config(tmp_path, {"m": model(tmp_path, "m")})
    cfg.write_text(cfg.read_text() + f'\n[smtp]\npasword = "{canary}"\n')
    runner = CliRunner()
    for command in (["check-config", str(cfg)], ["run", "--config", str(cfg)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2
        assert "smtp.pasword" in result.output
        assert canary not in result.output
    env_cfg = config(tmp_path, {"m": model(tmp_path, "m")})
    result = runner.invoke(
        app, ["check-config", str(env_cfg)], env={"WATCHER_SMTP__PASWORD": canary}
    )
    assert result.exit_code == 2
    assert "smtp.pasword" in result.output
    assert canary not in result.output


class _EchoingAirflow(BaseHTTPRequestHandler):
    """A stand-in for an Airflow api-server that echoes the login body in its 422 detail
    (FastAPI's form): the real Airflow 3.3.2 does not echo a password, so the probe's case
    cannot be reproduced with it."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        detail = [{"loc": ["body", "password"], "msg": "bad", "input": body.get("password")}]
        payload = json.dumps({"detail": detail}).encode()
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def test_d11_a_secret_echoed_by_a_server_reaches_no_log_state_or_status(tmp_path: Path) -> None:
    canary = "CANARYairflow-d11-0x7e3"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingAirflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = config(
            tmp_path,
            {"m": model(tmp_path, "m")},
            airflow={"enabled": True, "url": f"http://127.0.0.1:{server.server_port}"},
            daemon={"poll_interval_seconds": 0.2},
        )
        env = {"WATCHER_AIRFLOW__PASSWORD": canary}
        assert watcher_cli("trigger", "m", "--config", str(cfg), env=env).returncode == 0
        settings = load_config(cfg)
        log = tmp_path / "daemon.log"
        for fmt in ("text", "json"):
            proc = DaemonProcess(cfg, log, env | {"WATCHER_DAEMON__LOG_FORMAT": fmt})
            try:
                wait_for(
                    lambda: "refused the login" in log.read_text(errors="replace"),
                    timeout=60,
                    what=f"the refused login in the {fmt} log",
                )
                wait_for(
                    lambda: any(i["last_error"] for i in _pending(settings)),
                    what="the error stored in the outbox",
                )
            finally:
                proc.stop()
        text = log.read_text(errors="replace")
        assert "********" in text
        assert canary not in text
        for f in (settings.daemon.state_dir).iterdir():
            assert canary.encode() not in f.read_bytes(), f
        result = watcher_cli("status", "--config", str(cfg), env=env)
        assert "last error" in result.stdout
        assert canary not in result.stdout + result.stderr
    finally:
        server.shutdown()
        server.server_close()


# ---- D13, D20: mail ------------------------------------------------------------------------


def _alert(store: StateStore, n: int) -> None:
    with store.transaction() as conn:
        store.enqueue(
            conn,
            alert_action(
                "batch_rejected",
                key=f"rejected:m:b{n}.csv",
                model="m",
                title=f"batch b{n}.csv rejected: too_few_rows",
                severity="warning",
                details={"check": "too_few_rows", "reason": "3 rows"},
            ),
        )


def _dispatcher(
    tmp_path: Path, smtp_server: SmtpServer, **alerts: Any
) -> tuple[MailDispatcher, StateStore]:
    settings = Settings(
        daemon={"state_dir": tmp_path / "state"},
        smtp=smtp_server.smtp_settings(retry_attempts=1),
        alerts=alerts,
        models={"m": model(tmp_path, "m")},
    )
    store = StateStore(settings.daemon.state_dir / "state.db")
    metrics = Metrics(CollectorRegistry())
    return MailDispatcher(settings, store, metrics, backoff_initial_seconds=0.2), store


def test_d13_a_mail_handed_over_before_a_crash_is_never_folded_into_a_digest(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    dispatcher, store = _dispatcher(
        tmp_path, smtp_server, digest_threshold=2, digest_window_seconds=0
    )
    try:
        for n in range(4):
            _alert(store, n)
        [first, *_] = store.due_actions("alert", time.time())
        # The crash the probe saw: b0's delivery started (marked, handed to SMTP), then the
        # process died before it was marked done.
        store.mark_sending(first.id)
        asyncio.run(dispatcher.run_once())
        mails = smtp_server.wait_for(2)
        subjects = [m.message["Subject"] for m in mails]
        alone = [m for m in mails if "b0.csv" in m.message["Subject"]]
        assert len(alone) == 1, subjects
        digest = next(m for m in mails if m is not alone[0])
        assert "b0.csv" not in digest.message.as_string()
        assert all(f"b{n}.csv" in digest.message.as_string() for n in (1, 2, 3))
        time.sleep(0.3)
        assert len(smtp_server.messages) == 2
        assert store.pending_counts()["alert"] == 0
    finally:
        store.close()


def test_d20_mails_go_out_in_order_after_an_smtp_outage(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    dispatcher, store = _dispatcher(tmp_path, smtp_server, digest_threshold=100)
    try:
        smtp_server.stop()
        for n in range(4):
            _alert(store, n)
            time.sleep(0.01)
        asyncio.run(dispatcher.run_once())  # the first fails and backs off; the round stops
        smtp_server.start()
        deadline = time.monotonic() + 20
        while store.pending_counts()["alert"] and time.monotonic() < deadline:
            asyncio.run(dispatcher.run_once())
            time.sleep(0.05)
        subjects = [m.message["Subject"] for m in smtp_server.wait_for(4)]
        order = [next(n for n in range(4) if f"b{n}.csv" in s) for s in subjects]
        assert order == [0, 1, 2, 3], subjects
    finally:
        store.close()


# ---- D14, D19: batch contents --------------------------------------------------------------


def test_d14_timestamps_in_a_numeric_feature_and_an_empty_prediction_are_reported(
    tmp_path: Path,
) -> None:
    columns = ColumnsConfig(**COLUMNS)
    profile = profile_reference(frame(600, seed=1), columns)
    batch = frame(200, seed=2)
    batch["a"] = pd.date_range("2024-01-01", periods=200, freq="h", tz="UTC")
    path = tmp_path / "ts.parquet"
    batch.to_parquet(path)  # as the probe dropped it: through a Parquet file
    with pytest.raises(BatchRejected) as info:
        check_batch(pd.read_parquet(path), profile, columns, QualityConfig(), "ts.parquet")
    assert info.value.check == "type_change"
    assert "timestamps" in str(info.value)

    batch = frame(200, seed=2)
    batch["p"] = ""
    path = tmp_path / "nopred.csv"
    batch.to_csv(path, index=False)
    _, report = check_batch(pd.read_csv(path), profile, columns, QualityConfig(), "nopred.csv")
    [violation] = [v for v in report.violations if v.column == "p"]
    assert violation.check == "all_missing"


def test_d19_extra_column_messages_and_drift_reports_are_bounded(tmp_path: Path) -> None:
    columns = ColumnsConfig(**COLUMNS)
    profile = profile_reference(frame(600, seed=1), columns)
    batch = frame(20, seed=2)
    extra = pd.DataFrame(np.zeros((20, 99_994), dtype=np.int8)).add_prefix("extra_column_")
    batch = pd.concat([batch, extra], axis=1)
    _, report = check_batch(batch, profile, columns, QualityConfig(), "wide.csv")
    [violation] = [v for v in report.violations if v.check == "extra_columns"]
    assert violation.value == 99_994
    assert len(json.dumps(report.to_dict())) < 3000
    assert "99974 more" in violation.message

    from watcher.pipeline import _prune_reports

    folder = tmp_path / "reports" / "m"
    folder.mkdir(parents=True)
    old, new = folder / "old.html", folder / "new.html"
    old.write_text("x")
    new.write_text("y")
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    _prune_reports(folder, 30)
    assert not old.exists()
    assert new.exists()
    assert Settings().alerts.report_retention_days == 30

    # The mail cap counts the report as the mail carries it (base64), so a 3.9 MB evidently
    # report no longer makes a 5.5 MB mail under a 5 MB limit: it is linked instead.
    from watcher.alerts.compose import compose

    report = folder / "big.html"
    report.write_bytes(b"<html>" + os.urandom(3_880_000) + b"</html>")
    action = alert_action(
        "drift_persisting",
        key="drift:m:opened:b1",
        model="m",
        title="drift",
        severity="critical",
        report_path=str(report),
    )
    store = StateStore(tmp_path / "mail.db")
    try:
        with store.transaction() as conn:
            store.enqueue(conn, action)
        [item] = store.due_actions("alert", time.time())
    finally:
        store.close()
    for limit, attached in ((5_000_000, False), (6_000_000, True)):
        settings = Settings(alerts={"attach_report_max_bytes": limit})
        mail = bytes(compose(item, settings, ["oncall@example.org"]))
        assert len(mail) <= limit + 100_000
        assert bool(list(compose(item, settings, ["x@example.org"]).iter_attachments())) == (
            attached
        )


# ---- D18, D23: configuration ---------------------------------------------------------------


def test_d18_check_config_refuses_what_run_refuses(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = {
        "chisquare": {"drift": {"num_stattest": "chisquare"}},
        "z": {"drift": {"columns": {"a": {"stattest": "z"}}}},
    }
    for name, extra in cases.items():
        cfg = config(tmp_path, {"m": model(tmp_path, "m", **extra)})
        check = runner.invoke(app, ["check-config", str(cfg)])
        assert check.exit_code == 2, (name, check.output)
        with pytest.raises(WatcherError):
            asyncio.run(Daemon(load_config(cfg), CollectorRegistry()).run())
    cfg = config(tmp_path, {"modèle": model(tmp_path, "x")})
    check = runner.invoke(app, ["check-config", str(cfg)])
    assert check.exit_code == 2
    assert "ASCII" in check.output


def test_d23_nonsense_values_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    base = {"m": model(tmp_path, "m")}
    for daemon in ({"poll_interval_seconds": 1e-9}, {"poll_interval_seconds": float("inf")}):
        path = tmp_path / "bad.toml"
        path.write_text(config(tmp_path, base, daemon=daemon).read_text().replace("inf.0", "inf"))
        with pytest.raises(ConfigError, match="poll_interval_seconds"):
            load_config(path)
    for smtp in (
        {"sender": "w@x\r\nBcc: evil@example.org"},
        {"recipients": ["a@example.org\nBcc: evil@example.org"]},
    ):
        with pytest.raises(ConfigError, match="line breaks"):
            load_config(config(tmp_path, base, smtp=smtp))
    # A metrics port already in use: a sentence, not a traceback.
    with socket_bound() as port:
        cfg = config(tmp_path, base, metrics={"port": port})
        result = CliRunner().invoke(app, ["run", "--config", str(cfg)])
        assert result.exit_code == 2
        assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output
        assert "Traceback" not in result.output


@contextlib.contextmanager
def socket_bound() -> Iterator[int]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# ---- D24: manual triggers ------------------------------------------------------------------


def test_d24_manual_triggers_in_the_same_second_each_get_their_own_run(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"m": model(tmp_path, "m")})
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "watcher",
                "trigger",
                "m",
                "--reason",
                f"try {i}",
                "--config",
                str(cfg),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(3)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=120)
        assert p.returncode == 0, output
    settings = load_config(cfg)
    with state(settings) as store:
        triggers = [i for i in store.outbox_items("m") if i["kind"] == "trigger"]
        decisions = store.decisions("m", 10)
    assert len(triggers) == 3
    assert len({t["key"] for t in triggers}) == 3
    assert sorted(t["payload"]["conf"]["reason"] for t in triggers) == [
        "try 0",
        "try 1",
        "try 2",
    ]
    assert len(decisions) == 3


# ---- D25: sql source -----------------------------------------------------------------------


@pytest.mark.postgres
def test_d25_a_minus_infinity_or_bc_row_does_not_keep_a_new_sql_source_down(
    tmp_path: Path, pg_db: PgDatabase, logs: LogRecords
) -> None:
    from datetime import UTC, datetime

    pg_db.execute(
        "CREATE TABLE t (id text, ts timestamptz NOT NULL, a double precision, "
        "b double precision, c text, p double precision)"
    )
    for bad in ("-infinity", "0044-03-15 00:00:00+00 BC"):
        pg_db.execute("DELETE FROM t")
        pg_db.execute(
            "INSERT INTO t SELECT 'r' || g, TIMESTAMPTZ '2024-01-01 00:00+00' + "
            "(g * interval '1 minute'), random(), random(), 'x', random() "
            "FROM generate_series(0, 179) g"
        )
        pg_db.execute("INSERT INTO t VALUES ('bad', %(ts)s, 1, 1, 'x', 1)", {"ts": bad})
        store = StateStore(tmp_path / f"state-{bad[:3]}.db")
        metrics = Metrics(CollectorRegistry())
        source = SqlSource(
            "s",
            load_config(
                config(
                    tmp_path,
                    {
                        "s": {
                            "source": {
                                "kind": "sql",
                                "dsn": pg_db.url,
                                "table": "t",
                                "window_seconds": 3600,
                                "allowed_lateness_seconds": 0,
                            },
                            "columns": {"numeric": ["a", "b"], "categorical": ["c"]},
                            "reference": str(tmp_path / "reference.parquet"),
                        }
                    },
                )
            )
            .models["s"]
            .source,  # type: ignore[arg-type]
            ColumnsConfig(numeric=["a", "b"], categorical=["c"], prediction="p"),
            store,
            metrics,
            clock=lambda: datetime(2024, 1, 2, tzinfo=UTC),
        )
        try:
            refs = asyncio.run(source.poll())
        finally:
            asyncio.run(source.close())
            store.close()
        assert [r.batch_id.split("/")[0] for r in refs] == [
            "2024-01-01T00:00:00+00:00",
            "2024-01-01T01:00:00+00:00",
            "2024-01-01T02:00:00+00:00",
        ], bad
        assert metrics.registry.get_sample_value("watcher_source_up", {"model": "s"}) == 1
    assert len(logs.matching("before year 1 (-infinity or BC)")) == 2


# ---- one rule: a bug in one model's step does not stop the others --------------------------


def test_one_rule_an_unexpected_failure_in_one_model_is_contained(
    tmp_path: Path, logs: LogRecords
) -> None:
    cfg = config(tmp_path, {"m": model(tmp_path, "m"), "other": model(tmp_path, "other")})
    settings = load_config(cfg)
    with Running(settings) as d:
        assert d.daemon is not None

        def broken() -> None:
            raise RuntimeError("a bug in the label check")

        d.daemon.models["m"].performance.read_labels = broken  # type: ignore[method-assign,assignment]
        drop(tmp_path / "incoming-other", "o1.csv", frame(200, seed=4))
        drop(tmp_path / "incoming-m", "b1.csv", frame(200, seed=5))
        wait_for(lambda: status(settings, "other", "o1.csv") == "scored", what="other scored")
        wait_for(lambda: status(settings, "m", "b1.csv") == "scored", what="m scored")
        time.sleep(0.5)
        assert d.alive
        assert d.metric("watcher_problems_total", model="m", kind="label_file") > 3
    assert len(logs.matching("a bug in the label check")) == 1  # logged once, counted always


def test_scrubber_covers_repr_and_json_forms() -> None:
    from watcher.secrets import Scrubber

    scrub = Scrubber(["pa'ss\\word"])
    assert "pa" not in scrub(f"x {['pa' + chr(39) + 'ss' + chr(92) + 'word']!r} y")
    assert "pa" not in scrub(json.dumps({"input": "pa'ss\\word"}))
