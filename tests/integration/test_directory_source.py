"""The folder source: arrival order, exactly-once via the ledger, files still being written."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from support import drop, frame

from watcher.config import DirectorySourceConfig
from watcher.errors import BatchRejected
from watcher.sources.base import BatchRef
from watcher.sources.directory import DirectorySource
from watcher.state import StateStore


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


def poll(src: DirectorySource) -> list[str]:
    return [r.batch_id for r in asyncio.run(src.poll())]


def test_arrival_order_and_settling(tmp_path: Path, store: StateStore) -> None:
    src = DirectorySource("m", DirectorySourceConfig(path=tmp_path / "in", settle_seconds=0), store)
    for i, name in enumerate(["c.csv", "a.parquet", "b.csv"]):
        path = drop(src.incoming, name, frame(20, seed=i))
        os.utime(path, ns=(1_000_000_000 * (i + 1), 1_000_000_000 * (i + 1)))
    assert poll(src) == []  # first sight: not yet known to be complete
    assert poll(src) == ["c.csv", "a.parquet", "b.csv"]  # oldest first, not by name


def test_a_growing_file_is_not_read_until_it_stops_changing(
    tmp_path: Path, store: StateStore
) -> None:
    src = DirectorySource("m", DirectorySourceConfig(path=tmp_path / "in", settle_seconds=0), store)
    path = src.incoming / "growing.csv"
    text = frame(200, seed=1).to_csv(index=False)
    half = len(text) // 2
    path.write_text(text[:half])  # a writer that does not use write-then-rename
    assert poll(src) == []
    with path.open("a") as fh:  # it keeps writing between polls
        fh.write(text[half:])
    # A distinct mtime in the past: the file changed (its size did too), and a mtime in the
    # future would hold it back as "too fresh" whatever the settle time.
    past = time.time_ns() - 1_000_000_000
    os.utime(path, ns=(past, past))
    assert poll(src) == []  # changed since the last poll: still not complete
    assert poll(src) == ["growing.csv"]  # unchanged across two polls: complete
    df = src.load(BatchRef("m", "growing.csv", str(path)))
    assert len(df) == 200


def test_settle_seconds_holds_back_fresh_files(tmp_path: Path, store: StateStore) -> None:
    src = DirectorySource(
        "m", DirectorySourceConfig(path=tmp_path / "in", settle_seconds=3600), store
    )
    drop(src.incoming, "fresh.csv", frame(20, seed=1))
    assert poll(src) == []
    assert poll(src) == []


def test_ledger_not_folders_decides(tmp_path: Path, store: StateStore) -> None:
    src = DirectorySource("m", DirectorySourceConfig(path=tmp_path / "in", settle_seconds=0), store)
    drop(src.incoming, "done.csv", frame(20, seed=1))
    assert store.claim_batch("m", "done.csv", "x")
    with store.transaction() as conn:
        store.finish_batch(
            conn, model="m", batch_id="done.csv", status="scored", rows=20, reference_version="r"
        )
    # A crash after commit but before the move left the file in incoming/.
    poll(src)
    assert poll(src) == []
    assert (src.processed_dir / "done.csv").exists()


def test_claimed_but_unfinished_is_claimable_again(store: StateStore) -> None:
    assert store.claim_batch("m", "b", "uri")
    assert store.claim_batch("m", "b", "uri")  # the daemon died while scoring it
    with store.transaction() as conn:
        store.finish_batch(
            conn, model="m", batch_id="b", status="scored", rows=1, reference_version="r"
        )
    assert not store.claim_batch("m", "b", "uri")


def test_unsupported_extension_is_rejected_with_a_hint(tmp_path: Path, store: StateStore) -> None:
    cfg = DirectorySourceConfig(path=tmp_path / "in", patterns=["*"], settle_seconds=0)
    src = DirectorySource("m", cfg, store)
    path = src.incoming / "batch.json"
    path.write_text("{}")
    with pytest.raises(BatchRejected, match="unsupported extension") as info:
        src.load(BatchRef("m", "batch.json", str(path)))
    assert info.value.check == "unsupported_format"
    assert "parquet" in info.value.hint
