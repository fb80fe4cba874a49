"""Batches as Parquet or CSV files landing in a folder: the embedded default source.

Writers should write to a temporary name (a leading dot, or ``.tmp``/``.part``) and rename
when done; a rename is atomic, so a batch is never seen half-written. Because not every
writer does that, a file is also taken only once its size and modification time have
stayed the same across two polls and it is at least ``settle_seconds`` old.

Scored files move to ``processed/`` (where the retraining DAG finds them) and rejected ones
to ``quarantine/`` next to a ``<name>.reason.txt`` that says what was wrong and what to do.
The ledger in the state store, not the folders, decides what was processed: a file left
behind by a crash between commit and move is moved on the next poll, never rescored.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from watcher.config import DirectorySourceConfig
from watcher.errors import BatchRejected
from watcher.sources.base import BatchRef
from watcher.state import StateStore

log = logging.getLogger(__name__)

_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
_DELIMITERS = ",;\t|"


class DirectorySource:
    def __init__(self, model: str, cfg: DirectorySourceConfig, store: StateStore) -> None:
        self.model = model
        self.cfg = cfg
        self.store = store
        self.incoming = cfg.path
        self.processed_dir = cfg.path / "processed"
        self.quarantine_dir = cfg.path / "quarantine"
        for folder in (self.incoming, self.processed_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # (size, mtime_ns) seen at the previous poll: a file is complete once it stops changing.
        self._seen: dict[str, tuple[int, int]] = {}

    async def poll(self) -> list[BatchRef]:
        return await asyncio.to_thread(self._poll)

    def _poll(self) -> list[BatchRef]:
        candidates: list[tuple[int, str, Path]] = []
        now = time.time()
        current: dict[str, tuple[int, int]] = {}
        for path in self.incoming.iterdir():
            name = path.name
            if (
                not path.is_file()
                or name.startswith(".")
                or name.endswith(_TEMP_SUFFIXES)
                or not any(path.match(p) for p in self.cfg.patterns)
            ):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # renamed away between listing and stat
                continue
            sig = (st.st_size, st.st_mtime_ns)
            current[name] = sig
            settled = self._seen.get(name) == sig and now - st.st_mtime >= self.cfg.settle_seconds
            if settled:
                candidates.append((st.st_mtime_ns, name, path))
        self._seen = current

        refs: list[BatchRef] = []
        for _, name, path in sorted(candidates):
            status = self.store.batch_status(self.model, name)
            if status == "scored":
                self.archive(BatchRef(self.model, name, str(path)))
            elif status == "rejected":
                reason = self.store.batch_reason(self.model, name) or "rejected"
                self.set_aside(BatchRef(self.model, name, str(path)), reason)
            else:
                refs.append(BatchRef(self.model, name, str(path)))
        return refs

    def load(self, ref: BatchRef) -> pd.DataFrame:
        path = Path(ref.uri)
        size = path.stat().st_size
        if size == 0:
            raise BatchRejected(
                f"{path.name} is an empty file (0 bytes)",
                check="empty_file",
                hint="the writer may have failed; write to a temporary name and rename when done",
            )
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return _read_parquet(path)
        if suffix in (".csv", ".txt", ".tsv"):
            return _read_csv(path)
        raise BatchRejected(
            f"{path.name} has an unsupported extension {suffix!r}",
            check="unsupported_format",
            hint="write batches as .parquet or .csv",
        )

    def set_aside(self, ref: BatchRef, reason: str) -> str | None:
        src = Path(ref.uri)
        dest = self.quarantine_dir / src.name
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        dest.with_name(dest.name + ".reason.txt").write_text(
            f"model: {self.model}\nbatch: {ref.batch_id}\nquarantined: {stamp}\n"
            f"reason: {reason}\n\nFix the file and drop it into {self.incoming} under a new "
            "name to score it; the original name is recorded as processed.\n",
            encoding="utf-8",
        )
        if src.exists():
            os.replace(src, dest)
        return str(dest)

    def archive(self, ref: BatchRef) -> None:
        src = Path(ref.uri)
        if src.exists() and src.parent == self.incoming:
            os.replace(src, self.processed_dir / src.name)

    def commit(self, conn: sqlite3.Connection, ref: BatchRef) -> None:
        return None  # the ledger entry is all the progress a folder needs

    async def close(self) -> None:
        return None


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise BatchRejected(
            f"{path.name} is not a readable Parquet file: {exc}",
            check="unreadable",
            hint="re-export the batch; the file may be truncated or not Parquet at all",
        ) from exc
    _refuse_duplicates(path, names)
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise BatchRejected(
            f"{path.name} could not be read as Parquet: {exc}", check="unreadable"
        ) from exc


def _read_csv(path: Path) -> pd.DataFrame:
    with path.open("r", encoding="utf-8-sig", errors="strict", newline="") as fh:
        try:
            sample = fh.read(64 * 1024)
        except UnicodeDecodeError as exc:
            raise BatchRejected(
                f"{path.name} is not UTF-8 text: {exc.reason} at byte {exc.start}",
                check="unreadable",
                hint="write CSV batches as UTF-8",
            ) from exc
    try:
        delimiter = csv.Sniffer().sniff(sample.split("\n", 1)[0], delimiters=_DELIMITERS).delimiter
    except csv.Error:
        delimiter = ","  # a single column has no delimiter to find; the schema check will say
    header = next(csv.reader(io.StringIO(sample), delimiter=delimiter), [])
    _refuse_duplicates(path, [h.strip() for h in header])
    try:
        df = pd.read_csv(path, sep=delimiter, encoding="utf-8-sig", skipinitialspace=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BatchRejected(
            f"{path.name} could not be parsed as CSV (delimiter {delimiter!r}): {exc}",
            check="unreadable",
            hint="check quoting and that every row has as many fields as the header",
        ) from exc
    df.columns = [str(c).strip() for c in df.columns]
    df.attrs["delimiter"] = delimiter
    return df


def _refuse_duplicates(path: Path, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BatchRejected(
            f"{path.name} has duplicate column names: {dupes}",
            check="duplicate_columns",
            hint="each column must appear once; rename or drop the duplicates",
        )
