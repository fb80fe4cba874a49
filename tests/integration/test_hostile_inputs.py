"""Hostile entries in the batch folder: a real `watcher run` process (text log, real SMTP)
meets each of them. For every case the daemon keeps running, the batch ends in the ledger
with a reason, and nothing of a link's target (a file outside the folder holding a canary)
appears in the reason, the reason file, the log or a mail.

The daemon processes all cases in one go (module fixture); each case is then its own test.
A file vanishing between listing and reading is timed by the test itself, so it runs the
daemon's own objects in-process (`test_file_vanishing_between_listing_and_reading`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_smtp import SmtpServer
from harness import DaemonProcess, started_daemon
from support import drop, frame, wait_for, write_config

from watcher.config import load_config, toml_value
from watcher.dev.localservices import free_port
from watcher.safetext import safe_id
from watcher.state import StateStore

CANARY = "CANARY-7f3a9c-do-not-leak"
LONG_NAME = "L" * 251 + ".csv"  # 255 bytes: the longest name a file system allows
FORGED = "evil\n2099-01-01 00:00:00,000 CRITICAL watcher.daemon: forged line.csv"
NOT_UTF8 = os.fsdecode(b"latin-\xe9t\xe9.csv")


@dataclass(frozen=True)
class Case:
    test: str
    name: str  # the entry's name in the folder
    status: str  # ledger status it must end with
    check: str  # the reason's check


CASES = [
    Case("symlink out of the folder", "link-out.csv", "rejected", "symlink"),
    Case("symlink loop", "loop.csv", "rejected", "symlink"),
    Case("dangling symlink", "dangling.csv", "rejected", "symlink"),
    Case("FIFO", "pipe.csv", "rejected", "not_a_file"),
    Case("directory", "folder.csv", "rejected", "not_a_file"),
    Case("255-byte name", LONG_NAME, "rejected", "too_few_rows"),
    Case("control characters in the name", FORGED, "rejected", "too_few_rows"),
    Case("bytes that are not UTF-8 in the name", NOT_UTF8, "rejected", "too_few_rows"),
    Case("Parquet list column", "nested-list.parquet", "rejected", "type_change"),
    Case("Parquet struct column", "nested-struct.parquet", "rejected", "type_change"),
    Case("Parquet map column", "nested-map.parquet", "rejected", "type_change"),
]


def _secret_table(path: Path) -> None:
    """A file outside the folder that would parse as a CSV: its header holds the canary."""
    lines = [f"{CANARY},{CANARY}-2"] + [f"{i},{i}" for i in range(30)]
    path.write_text("\n".join(lines) + "\n")


def _nested(path: Path, kind: str) -> None:
    base = frame(200, seed=3)
    table = pa.Table.from_pandas(base, preserve_index=False)
    n = len(base)
    if kind == "list":
        col = pa.array([[1.0, 2.0]] * n, type=pa.list_(pa.float64()))
        table = table.set_column(table.schema.get_field_index("a"), "a", col)
    elif kind == "struct":
        col = pa.array([{"x": 1.0}] * n)
        table = table.set_column(table.schema.get_field_index("b"), "b", col)
    else:
        col = pa.array([[("k", "v")]] * n, type=pa.map_(pa.string(), pa.string()))
        table = table.set_column(table.schema.get_field_index("c"), "c", col)
    tmp = path.with_name("." + path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.rename(path)


def _plant(incoming: Path, outside: Path) -> None:
    secret = outside / "secret.csv"
    _secret_table(secret)
    (incoming / "link-out.csv").symlink_to(secret)
    (incoming / "loop.csv").symlink_to(incoming / "loop.csv")
    (incoming / "dangling.csv").symlink_to(outside / "gone.csv")
    os.mkfifo(incoming / "pipe.csv")
    (incoming / "folder.csv").mkdir()
    _secret_table(incoming / "folder.csv" / "inside.csv")
    (incoming / "just-a-folder").mkdir()
    small = frame(3, seed=4)
    # `drop` writes to ".<name>.tmp", too long for the 255-byte name: a short temporary.
    small.to_csv(incoming / ".long.tmp", index=False)
    (incoming / ".long.tmp").rename(incoming / LONG_NAME)
    drop(incoming, NOT_UTF8, small)
    drop(incoming, FORGED, small)
    for kind in ("list", "struct", "map"):
        _nested(incoming / f"nested-{kind}.parquet", kind)


@dataclass
class Run:
    tmp: Path
    log: str
    mails: list[str]
    reasons: dict[str, tuple[str | None, str | None]]
    metrics: str
    alive: bool


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _unmovable_archive(incoming: Path) -> Path:
    """Make every move into ``processed/`` fail, whoever the daemon runs as.

    ``chattr +i`` needs a file system that supports it and permission bits do not stop
    root, so ``processed/`` is made a link to a folder on another file system (the shared
    memory tmpfs): a rename cannot cross file systems, so the scored batch's move fails
    with EXDEV, as it does for an immutable file or a read-only mount. Returns that folder
    (the caller removes it)."""
    elsewhere = Path(tempfile.mkdtemp(prefix="watcher-hostile-", dir="/dev/shm"))
    assert os.stat(elsewhere).st_dev != os.stat(incoming).st_dev, (
        "/dev/shm is on the same file system as the test's folder: a rename would not fail"
    )
    processed = incoming / "processed"
    if processed.is_dir():
        processed.rmdir()
    processed.symlink_to(elsewhere, target_is_directory=True)
    return elsewhere


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("hostile")
    outside = tmp / "outside"
    outside.mkdir()
    smtp = SmtpServer().start()
    port = free_port()
    smtp_toml = "[smtp]\n" + "".join(
        f"{k} = {toml_value(v)}\n" for k, v in smtp.smtp_settings().items()
    )
    # One mail per rejected entry, not a digest of them.
    smtp_toml += "[alerts]\ndigest_threshold = 100\n"
    cfg = write_config(tmp, metrics_port=port, extra_top=smtp_toml, poll=0.2)
    incoming = tmp / "incoming"
    _plant(incoming, outside)
    # A good batch that cannot be moved once scored (D1): the daemon must not die over it.
    elsewhere = _unmovable_archive(incoming)
    drop(incoming, "frozen.csv", frame(200, seed=5))
    proc = DaemonProcess(cfg, tmp / "daemon.log")
    try:
        ids = [safe_id(c.name) for c in CASES] + ["frozen.csv"]

        def finished() -> bool:
            with _store(tmp) as s:
                return all(s.batch_status("m", i) not in (None, "claimed") for i in ids)

        wait_for(finished, 90, interval=0.3, what="every hostile entry to end in the ledger")
        smtp.wait_for(len(CASES), timeout=60)

        # A few more polls over the entries that stay (immutable file, plain folder).
        def counted() -> str:
            text = _metrics(port)
            return text if 'reason="cannot_move"' in text else ""

        metrics = wait_for(counted, 30, what="the unmovable file counted")
        alive = proc.alive()
        with _store(tmp) as s:
            reasons = {
                c.name: (s.batch_status("m", safe_id(c.name)), s.batch_reason("m", safe_id(c.name)))
                for c in CASES
            }
            reasons["frozen.csv"] = (s.batch_status("m", "frozen.csv"), None)
        yield Run(
            tmp,
            "",
            [m.data.decode("utf-8", "replace") for m in smtp.messages],
            reasons,
            metrics,
            alive,
        )
    finally:
        if proc.alive():
            proc.stop()
        shutil.rmtree(elsewhere, ignore_errors=True)
        smtp.stop()


class _store:
    def __init__(self, tmp: Path) -> None:
        self.store = StateStore(tmp / "state" / "state.db")

    def __enter__(self) -> StateStore:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def _log(run: Run) -> str:
    return (run.tmp / "daemon.log").read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize("case", CASES, ids=[c.test for c in CASES])
def test_hostile_entry_ends_with_a_reason_and_leaks_nothing(run: Run, case: Case) -> None:
    assert run.alive, "the daemon died"
    status, reason = run.reasons[case.name]
    assert status == case.status, (status, reason)
    assert reason is not None
    assert reason.startswith(f"{case.check}:"), reason
    assert CANARY not in reason
    assert "\n" not in reason
    log = _log(run)
    assert CANARY not in log
    assert not any(CANARY in m for m in run.mails)
    # The reason file sits in quarantine under a name the file system takes, printable.
    quarantine = run.tmp / "incoming" / "quarantine"
    reason_files = [p for p in quarantine.iterdir() if p.name.endswith(".reason.txt")]
    ident = safe_id(case.name)
    mine = [p for p in reason_files if f"batch: {ident}\n" in p.read_text(encoding="utf-8")]
    assert len(mine) == 1, [p.name for p in reason_files]
    assert len(os.fsencode(mine[0].name)) <= 255
    assert CANARY not in mine[0].read_text(encoding="utf-8")
    # The entry itself left the folder (a link moves as a link, never its target).
    assert not os.path.lexists(run.tmp / "incoming" / case.name)
    assert os.path.lexists(quarantine / case.name)
    assert (run.tmp / "outside" / "secret.csv").exists()


def test_no_log_line_is_forged_by_a_file_name(run: Run) -> None:
    lines = _log(run).splitlines()
    assert not any(line.startswith("2099-01-01") for line in lines)
    assert any("evil\\n2099-01-01" in line for line in lines)


def test_a_plain_directory_is_counted_once_and_left_alone(run: Run) -> None:
    assert 'reason="directory"' in run.metrics
    assert (run.tmp / "incoming" / "just-a-folder").is_dir()
    assert _log(run).count("just-a-folder: a directory") == 1


def test_unmovable_file_is_scored_and_left_in_place_without_stopping_the_daemon(
    run: Run,
) -> None:
    assert run.alive
    assert run.reasons["frozen.csv"][0] == "scored"
    assert (run.tmp / "incoming" / "frozen.csv").exists()
    line = next(line for line in run.metrics.splitlines() if 'reason="cannot_move"' in line)
    assert line.endswith(" 1.0")  # counted once, not per poll
    assert _log(run).count("frozen.csv: cannot be moved to processed/") == 1


def test_file_vanishing_between_listing_and_reading(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path))
    incoming = tmp_path / "incoming"
    drop(incoming, "vanish.csv", frame(200, seed=6))

    async def scenario() -> tuple[str, str | None, str | None]:
        async with started_daemon(settings) as daemon:
            rt = daemon.models["m"]
            refs = await wait_for_refs(rt.source)
            (incoming / "vanish.csv").unlink()  # gone after the listing, before the read
            outcome = daemon.pipeline.process(rt, refs[0])
            return (
                outcome.status,
                daemon.store.batch_status("m", "vanish.csv"),
                daemon.store.batch_reason("m", "vanish.csv"),
            )

    outcome, status, reason = asyncio.run(scenario())
    assert outcome == "rejected"
    assert status == "rejected"
    assert reason is not None
    assert reason.startswith("vanished:"), reason


async def wait_for_refs(source: object) -> list[object]:
    for _ in range(50):
        refs = await source.poll()  # type: ignore[attr-defined]
        if refs:
            return list(refs)
        await asyncio.sleep(0.05)
    raise AssertionError("the batch was never listed")


def test_an_unexpected_error_ends_the_batch_failed_and_a_restart_leaves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No file known today makes scoring raise something unforeseen (the nested types used
    # to): a patched quality check stands in for that bug.
    settings = load_config(write_config(tmp_path))
    incoming = tmp_path / "incoming"
    drop(incoming, "bug.csv", frame(200, seed=9))

    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug in a check")

    async def first() -> tuple[str, float | None]:
        async with started_daemon(settings) as daemon:
            rt = daemon.models["m"]
            refs = await wait_for_refs(rt.source)
            with monkeypatch.context() as m:
                m.setattr("watcher.pipeline.check_batch", bug)
                outcome = daemon.pipeline.process(rt, refs[0])
            failed = daemon.metrics.registry.get_sample_value(
                "watcher_batches_total", {"model": "m", "outcome": "failed"}
            )
            return outcome.status, failed

    status, failed = asyncio.run(first())
    assert (status, failed) == ("failed", 1)
    store = StateStore(tmp_path / "state" / "state.db")
    try:
        assert store.batch_status("m", "bug.csv") == "failed"
        reason = store.batch_reason("m", "bug.csv")
        assert reason is not None
        assert reason.startswith("processing_error:")
        assert "ZeroDivisionError: a bug in a check" in reason
    finally:
        store.close()
    assert (incoming / "quarantine" / "bug.csv").exists()
    assert not (incoming / "bug.csv").exists()

    # A restart (the same file dropped back by someone) does not claim it again.
    (incoming / "quarantine" / "bug.csv").rename(incoming / "bug.csv")

    async def second() -> int:
        async with started_daemon(settings) as daemon:
            refs = await daemon.models["m"].source.poll()
            refs += await daemon.models["m"].source.poll()
            return len(refs)

    assert asyncio.run(second()) == 0
    assert not (incoming / "bug.csv").exists()
    # Set aside again; quarantine never overwrites, so under a time-stamped name.
    assert len(list((incoming / "quarantine").glob("bug*.csv"))) == 1


def test_symlinks_inside_the_folder_are_read_only_when_configured(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    _secret_table(outside / "secret.csv")
    cfg = write_config(tmp_path)
    incoming = tmp_path / "incoming"
    cfg.write_text(
        cfg.read_text().replace("settle_seconds = 0 }", 'settle_seconds = 0, symlinks = "inside" }')
    )
    settings = load_config(tmp_path / "watcher.toml")
    assert settings.models["m"].source.symlinks == "inside"  # type: ignore[union-attr]
    drop(incoming, ".real.data", frame(200, seed=10))  # hidden: only reachable by the link
    (incoming / "inside.csv").symlink_to(incoming / ".real.data")
    (incoming / "escape.csv").symlink_to(outside / "secret.csv")
    (incoming / "via-dots.csv").symlink_to(Path("..") / "outside" / "secret.csv")

    async def run() -> dict[str, str]:
        async with started_daemon(settings) as daemon:
            rt = daemon.models["m"]
            out = {}
            for ref in await wait_for_refs(rt.source):
                out[ref.batch_id] = daemon.pipeline.process(rt, ref).status  # type: ignore[attr-defined]
            return out

    outcomes = asyncio.run(run())
    assert outcomes == {
        "inside.csv": "scored",
        "escape.csv": "rejected",
        "via-dots.csv": "rejected",
    }
