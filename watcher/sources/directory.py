"""Batches as Parquet or CSV files landing in a folder: the embedded default source.

Writers should write to a temporary name (a leading dot, or ``.tmp``/``.part``) and rename
when done; a rename is atomic, so a batch is never seen half-written. Because not every
writer does that, a file is also taken only once its size and modification time have
stayed the same across two polls and it is at least ``settle_seconds`` old.

Scored files move to ``processed/`` (where the retraining DAG finds them) and rejected ones
to ``quarantine/`` next to a ``<name>.reason.txt`` that says what was wrong and what to do.
The ledger in the state store, not the folders, decides what was processed: a file left
behind by a crash between commit and move is moved on the next poll, never rescored.
Nothing in ``processed/`` or ``quarantine/`` is ever overwritten: a name already taken
there gets a time stamp. A new file that reuses the name of a batch already processed
(a producer writing ``daily.csv`` every day) is renamed to a unique name, logged and
counted, and then scored under that name.

The incoming folder is created on the first start only. When it vanishes later (an
unmounted share), the source is down (``watcher_source_up`` 0, a ``source_down`` alert)
until it is back; it is never re-created, so an empty local folder is never mistaken for
the share.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from watcher.config import DirectorySourceConfig
from watcher.errors import BatchRejected, SourceError
from watcher.sources.base import BatchRef
from watcher.state import BatchRecord, StateStore

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
        # Created on the first start only: see the module docstring.
        known = f"directory:{model}:path"
        if store.watermark(known) != str(self.incoming) or self.incoming.is_dir():
            for folder in (self.incoming, self.processed_dir, self.quarantine_dir):
                folder.mkdir(parents=True, exist_ok=True)
            with store.transaction() as conn:
                store.set_watermark(conn, known, str(self.incoming))
        # (size, mtime_ns) seen at the previous poll: a file is complete once it stops changing.
        self._seen: dict[str, tuple[int, int]] = {}
        self.reused_names = 0  # files renamed because their name was taken (the daemon counts)

    async def poll(self) -> list[BatchRef]:
        return await asyncio.to_thread(self._poll)

    def _poll(self) -> list[BatchRef]:
        candidates: list[tuple[int, str, Path]] = []
        now = time.time()
        current: dict[str, tuple[int, int]] = {}
        for path in self._listing():
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
            record = self.store.batch(self.model, name)
            status = record.status if record else None
            if record is not None and status != "claimed" and self._reused(path, record):
                self._rename_reused(path, record)
                continue
            if status == "scored":
                self.archive(BatchRef(self.model, name, str(path)))
            elif status == "rejected":
                reason = self.store.batch_reason(self.model, name) or "rejected"
                self.set_aside(BatchRef(self.model, name, str(path)), reason)
            else:
                refs.append(BatchRef(self.model, name, str(path)))
        return refs

    def _listing(self) -> list[Path]:
        if not self.incoming.is_dir():
            raise SourceError(
                f"incoming folder {self.incoming} does not exist (unmounted or moved?)",
                hint="mount or restore it; watcher does not create it again, so that an "
                "unmounted share is never mistaken for an empty folder",
            )
        try:
            entries = list(self.incoming.iterdir())
            for folder in (self.processed_dir, self.quarantine_dir):
                folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise SourceError(
                f"cannot read incoming folder {self.incoming}: {exc.strerror or exc}",
                hint="check the mount and its permissions",
            ) from exc
        return entries

    def _reused(self, path: Path, record: BatchRecord) -> bool:
        """Is this file a new batch under the name of one already processed?

        The original, left in incoming/ by a crash between commit and move, was modified
        before it was claimed and has not been moved yet; a new file under the same name
        finds the original already moved, or was written after it was finished.
        """
        moved_to = self.processed_dir if record.status == "scored" else self.quarantine_dir
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return False
        finished = record.finished_at
        return (moved_to / path.name).exists() or (finished is not None and mtime > finished)

    def _rename_reused(self, path: Path, record: BatchRecord) -> None:
        stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y%m%dT%H%M%S")
        new = _free_name(self.incoming, f"{path.stem}.{stamp}{path.suffix}", self._taken)
        try:
            os.rename(path, new)
        except OSError as exc:
            log.error(
                "%s reuses the name of batch %s/%s (%s) but cannot be renamed: %s; it is "
                "not scored. Drop it under a new name",
                path,
                self.model,
                path.name,
                record.status,
                exc.strerror or exc,
            )
            return
        log.warning(
            "%s/%s reuses the name of a batch %s at %s: renamed to %s and scored under that "
            "name (producers should give every batch a unique name)",
            self.model,
            path.name,
            record.status,
            datetime.fromtimestamp(record.finished_at or 0, UTC).isoformat(timespec="seconds"),
            new.name,
            extra={"model": self.model, "batch": path.name},
        )
        self.reused_names += 1

    def _taken(self, name: str) -> bool:
        return self.store.batch(self.model, name) is not None

    def load(self, ref: BatchRef) -> pd.DataFrame:
        path = Path(ref.uri)
        size = path.stat().st_size
        cap = self.cfg.max_batch_bytes
        if cap is not None and size > cap:
            raise BatchRejected(
                f"{path.name} is {size:,} bytes, more than source.max_batch_bytes={cap:,}",
                check="too_large",
                hint="split it into smaller batches, or raise source.max_batch_bytes if the "
                "host has the memory (scoring takes about 5x the file size)",
            )
        rows = self.cfg.max_batch_rows
        if rows is not None and path.suffix.lower() == ".parquet":
            counted = 0
            with contextlib.suppress(Exception):  # unreadable: _load says so properly
                # Parquet knows its row count: refuse before reading anything.
                counted = pq.ParquetFile(path).metadata.num_rows
            _too_many_rows(path, counted, rows)
        frame = self._load(path, size)
        if rows is not None:
            _too_many_rows(path, len(frame), rows)
        return frame

    def _load(self, path: Path, size: int) -> pd.DataFrame:
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
        dest = _free_name(self.quarantine_dir, src.name)
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
            os.replace(src, _free_name(self.processed_dir, src.name))

    def commit(self, conn: sqlite3.Connection, ref: BatchRef) -> None:
        return None  # the ledger entry is all the progress a folder needs

    async def close(self) -> None:
        return None


def _too_many_rows(path: Path, n: int, cap: int) -> None:
    if n > cap:
        raise BatchRejected(
            f"{path.name} has {n:,} rows, more than source.max_batch_rows={cap:,}",
            check="too_large",
            hint="split it into smaller batches, or raise source.max_batch_rows",
        )


def _free_name(folder: Path, name: str, taken: Callable[[str], bool] = lambda _: False) -> Path:
    """`folder/name`, or with a time stamp (and a number) when that is taken: never overwrite."""
    dest = folder / name
    if not dest.exists() and not dest.with_name(name + ".reason.txt").exists() and not taken(name):
        return dest
    stem, suffix = Path(name).stem, Path(name).suffix
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for n in range(1, 10_000):
        candidate = f"{stem}.{stamp}{'' if n == 1 else f'-{n}'}{suffix}"
        path = folder / candidate
        if not path.exists() and not taken(candidate):
            return path
    raise OSError(f"no free name for {name} in {folder}")


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
