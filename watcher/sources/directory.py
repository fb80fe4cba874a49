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

Nothing in the folder is trusted. A symbolic link is not followed (unless
``symlinks = "inside"`` and it stays inside the folder), FIFOs, sockets, devices and
directories are never opened; such an entry whose name matches the patterns is rejected
with the reason like any bad batch, others are counted once in
``watcher_source_file_problems_total``. A file is opened with ``O_NOFOLLOW`` and checked
again on the open descriptor, so a swap between the check and the read changes nothing.
Names may hold any byte: the batch id is `watcher.safetext.safe_id` of the name, and a
file that cannot be moved (a read-only mount, ``chattr +i``) stays where it is, is logged
once and counted, and never stops the daemon.

With ``watch = "auto"`` (the default) the folder is watched with inotify (asyncinotify): a
file renamed into the folder (``IN_MOVED_TO``) is complete by construction and is taken at
the next round, which the notification starts at once; a file written in place still waits
for the settle rule, woken when its writer closes it (``IN_CLOSE_WRITE``). Where inotify is
not available the source polls, as with ``watch = "poll"``.

Size: one `DirectorySource` whose listing, settling, reading and moving share the
per-file state, and each carries its hostile-input handling next to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import logging
import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow.parquet as pq

from watcher import chunked
from watcher.config import DirectorySourceConfig
from watcher.errors import BatchRejected, SourceError
from watcher.metrics import Metrics
from watcher.safetext import cut_bytes, escape, is_clean, safe_id, sample_names
from watcher.sources.base import BatchRef, Outage
from watcher.state import BatchRecord, StateConn, StateStore

log = logging.getLogger(__name__)

_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
_DELIMITERS = ",;\t|"
_NAME_MAX = 255  # bytes in one path component on every Linux file system watcher runs on
_REASON_SUFFIX = ".reason.txt"


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


class DirectorySource:
    def __init__(
        self,
        model: str,
        cfg: DirectorySourceConfig,
        store: StateStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.incoming = cfg.path
        self.processed_dir = cfg.path / "processed"
        self.quarantine_dir = cfg.path / "quarantine"
        known = f"directory:{model}:path"
        if store.watermark(known) != str(self.incoming) or self.incoming.is_dir():
            for folder in (self.incoming, self.processed_dir, self.quarantine_dir):
                folder.mkdir(parents=True, exist_ok=True)
            with store.transaction() as conn:
                store.set_watermark(conn, known, str(self.incoming))
        self.reused_names = 0  # files renamed because their name was taken (the daemon counts)
        # (size, mtime_ns) seen at the previous poll: a file is complete once it stops changing.
        self._seen: dict[str, tuple[int, int]] = {}
        # batch id -> the entry's real path (its name may not be printable or UTF-8).
        self._paths: dict[str, Path] = {}
        # Problems already logged and counted, so a stuck file is reported once, not per poll.
        self._reported: set[tuple[str, str]] = set()
        # Names whose last event was a rename into the folder: complete, no settle needed.
        self._renamed: set[str] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._outage: Outage | None = None  # set by a poll that failed, cleared by one that worked

    def start_watching(self, wake: asyncio.Event) -> bool:
        """Watch the folder with inotify and set `wake` when a batch may be complete.
        False (and polling only) where notifications are unavailable or turned off."""
        if self.cfg.watch == "poll":
            return False
        try:
            from asyncinotify import Inotify, Mask

            inotify = Inotify()
            inotify.add_watch(
                self.incoming,
                Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.CREATE | Mask.MODIFY | Mask.ONLYDIR,
            )
        except (ImportError, OSError, TypeError, AttributeError) as exc:
            log.info(
                "%s: no file-system notifications for %s (%s); polling every round",
                self.model,
                self.incoming,
                exc,
            )
            return False
        self._watch_task = asyncio.create_task(
            self._watch(inotify, wake), name=f"watch-{self.model}"
        )
        return True

    async def _watch(self, inotify: Any, wake: asyncio.Event) -> None:
        from asyncinotify import Mask

        try:
            async for event in inotify:
                name = os.fsdecode(event.name) if event.name is not None else None
                if event.mask & Mask.MOVED_TO and name is not None:
                    self._renamed.add(name)
                    wake.set()
                elif event.mask & (Mask.CREATE | Mask.MODIFY) and name is not None:
                    self._renamed.discard(name)  # written in place: the settle rule applies
                elif event.mask & (Mask.CLOSE_WRITE | Mask.Q_OVERFLOW):
                    wake.set()
        finally:
            inotify.close()

    async def poll(self) -> list[BatchRef]:
        try:
            refs = await asyncio.to_thread(self._poll)
        except SourceError as exc:
            # A folder that vanished (unmounted share) is worth a page at once.
            self._outage = Outage(
                title=f"incoming folder unavailable: {exc.message}",
                details={"path": str(self.incoming), "error": exc.message, "what_to_do": exc.hint},
                since=time.time(),
            )
            raise
        self._outage = None
        return refs

    def outage(self) -> Outage | None:
        return self._outage

    def recovery(self) -> Outage:
        return Outage(title="the incoming folder is back")

    def _poll(self) -> list[BatchRef]:
        if not self.incoming.is_dir():
            raise SourceError(
                f"incoming folder {self.incoming} does not exist (unmounted or moved?)",
                hint="mount or restore it; watcher does not create it again, so that an "
                "unmounted share is never mistaken for an empty folder",
            )
        try:
            with os.scandir(self.incoming) as it:
                entries = list(it)
            for folder in (self.processed_dir, self.quarantine_dir):
                folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise SourceError(
                f"cannot list the batch folder {self.incoming}: {exc.strerror}",
                hint="check that the folder exists, is mounted and readable by watcher",
            ) from exc
        candidates: list[tuple[int, str, Path]] = []
        first_sight: list[int] = []
        now = time.time()
        current: dict[str, tuple[int, int]] = {}
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(_TEMP_SUFFIXES):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # renamed away between listing and stat
                continue
            except OSError as exc:
                self._problem(name, "unreadable", f"cannot stat it: {exc.strerror}")
                continue
            matches = any(Path(name).match(p) for p in self.cfg.patterns)
            if stat.S_ISDIR(st.st_mode) and (name in ("processed", "quarantine") or not matches):
                if name not in ("processed", "quarantine"):
                    self._problem(name, "directory", "a directory, not a batch file: skipped")
                continue
            if not matches:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            current[name] = sig
            # Only a regular file can still be being written; anything else is refused
            # without being opened, so it need not settle. Neither does one renamed in.
            settled = (
                not stat.S_ISREG(st.st_mode)
                or name in self._renamed
                or (self._seen.get(name) == sig and now - st.st_mtime >= self.cfg.settle_seconds)
            )
            if settled:
                candidates.append((st.st_mtime_ns, name, Path(entry.path)))
            elif name not in self._seen:
                first_sight.append(st.st_mtime_ns)
        self._seen = current
        if first_sight:
            # A file seen for the first time settles by the next poll: newer files wait
            # for it, so batches are scored in arrival order (also by a replica that just
            # took the model over, or a daemon that just started, with files waiting).
            candidates = [c for c in candidates if c[0] < min(first_sight)]
        self._renamed &= set(current)

        refs: list[BatchRef] = []
        for _, name, path in sorted(candidates):
            batch_id = safe_id(name)
            self._paths[batch_id] = path
            ref = BatchRef(self.model, batch_id, str(self.incoming / batch_id))
            record = self.store.batch(self.model, batch_id)
            status = record.status if record else None
            if record is not None and status != "claimed" and self._reused(path, record):
                self._rename_reused(path, record)
                continue
            if status == "scored":
                self.archive(ref)
            elif status in ("rejected", "failed"):
                reason = self.store.batch_reason(self.model, batch_id) or str(status)
                self.set_aside(ref, reason)
            else:
                refs.append(ref)
        return refs

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

    def _path(self, ref: BatchRef) -> Path:
        return self._paths.get(ref.batch_id) or Path(ref.uri)

    def _problem(self, name: str, reason: str, what: str) -> None:
        """Log and count a problem with a folder entry once per entry and reason."""
        if (name, reason) in self._reported:
            return
        self._reported.add((name, reason))
        if self.metrics is not None:
            self.metrics.source_file_problems.labels(self.model, reason).inc()
        log.warning("%s/%s: %s", self.model, safe_id(name), what)

    # ---- reading ----------------------------------------------------------------------------

    def load(self, ref: BatchRef) -> pd.DataFrame:
        path = self._path(ref)
        shown = ref.batch_id
        with self._open(path, shown) as fh:
            size = os.fstat(fh.fileno()).st_size
            cap = self.cfg.max_batch_bytes
            if cap is not None and size > cap:
                raise BatchRejected(
                    f"{shown} is {size:,} bytes, more than source.max_batch_bytes={cap:,}",
                    check="too_large",
                    hint="split it into smaller batches, or raise source.max_batch_bytes if "
                    "the host has the memory (scoring takes about 5x the file size)",
                )
            if size == 0:
                raise BatchRejected(
                    f"{shown} is an empty file (0 bytes)",
                    check="empty_file",
                    hint="the writer may have failed; write to a temporary name and rename "
                    "when done",
                )
            suffix = path.suffix.lower()
            rows = self.cfg.max_batch_rows
            if suffix == ".parquet":
                if rows is not None:
                    counted = 0
                    with contextlib.suppress(Exception):  # unreadable: _read_parquet says so
                        # Parquet knows its row count: refuse before reading anything.
                        counted = pq.ParquetFile(fh).metadata.num_rows
                    fh.seek(0)
                    _too_many_rows(shown, counted, rows)
                return _capped(_read_parquet(fh, shown), shown, rows)
            if suffix in (".csv", ".txt", ".tsv"):
                return _capped(_read_csv(fh, shown), shown, rows)
        raise BatchRejected(
            f"{shown} has an unsupported extension {escape(suffix, 20)!r}",
            check="unsupported_format",
            hint="write batches as .parquet or .csv",
        )

    def _open(self, path: Path, shown: str) -> IO[bytes]:
        """Open a regular file of the folder, never through a link out of it."""
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                path = self._inside_target(path, shown)
                st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(shown, st.st_mode)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise BatchRejected(
                f"{shown} disappeared between listing and reading",
                check="vanished",
                hint="do not move or delete a batch once it is in the folder; drop it again "
                "under a new name to score it",
            ) from exc
        except OSError as exc:
            raise BatchRejected(
                f"{shown} cannot be opened: {exc.strerror}",
                check="unreadable",
                hint="make the file a regular file readable by watcher",
            ) from exc
        fh = os.fdopen(fd, "rb")
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped after the check
            fh.close()
            raise _not_regular(shown, mode)
        return fh

    def _inside_target(self, path: Path, shown: str) -> Path:
        if self.cfg.symlinks == "inside":
            try:
                target = Path(os.path.realpath(path, strict=True))
            except OSError as exc:  # dangling, a loop, or unreadable
                raise BatchRejected(
                    f"{shown} is a symbolic link whose target cannot be resolved ({exc.strerror})",
                    check="symlink",
                    hint="links must point at a file inside the batch folder",
                ) from exc
            if target.parent == self.incoming.resolve():
                return target
        raise BatchRejected(
            f"{shown} is a symbolic link; watcher does not follow links out of the batch folder",
            check="symlink",
            hint="copy or move the batch into the folder (write to a temporary name and "
            'rename); with source.symlinks = "inside" links to files in the folder are read',
        )

    # ---- moving -----------------------------------------------------------------------------

    def reason_file(self, name: str) -> Path:
        """Where a quarantined entry's reason goes: `<name>.reason.txt` when that name is
        printable and fits the file system, else a shortened escaped name with a hash."""
        if is_clean(name) and len(os.fsencode(name + _REASON_SUFFIX)) <= _NAME_MAX:
            return self.quarantine_dir / (name + _REASON_SUFFIX)
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
        stem = cut_bytes(escape(name), 200).replace("/", "_")
        return self.quarantine_dir / f"{stem}~{digest}{_REASON_SUFFIX}"

    def set_aside(self, ref: BatchRef, reason: str) -> str | None:
        src = self._path(ref)
        dest = _free_name(self.quarantine_dir, src.name)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            self.reason_file(dest.name).write_text(
                f"model: {self.model}\nbatch: {ref.batch_id}\nquarantined: {stamp}\n"
                f"reason: {escape(reason, 2000)}\n\nFix the file and drop it into "
                f"{self.incoming} under a new name to score it; the original name is "
                "recorded as processed.\n",
                encoding="utf-8",
            )
        except OSError as exc:
            self._problem(src.name, "reason_file", f"cannot write its reason file: {exc.strerror}")
        if self._move(src, dest, "quarantine"):
            return str(self.quarantine_dir / safe_id(dest.name))
        return None

    def archive(self, ref: BatchRef) -> None:
        src = self._path(ref)
        if src.parent == self.incoming:
            self._move(src, _free_name(self.processed_dir, src.name), "processed")

    def _move(self, src: Path, dest: Path, where: str) -> bool:
        """Move an entry (a link moves as a link); False when it is not there or stays."""
        if not os.path.lexists(src):
            return False
        try:
            os.replace(src, dest)
        except OSError as exc:
            self._problem(
                src.name,
                "cannot_move",
                f"cannot be moved to {where}/: {exc.strerror}. It stays in the folder and is "
                "not read again (the ledger has its outcome); check the folder's permissions, "
                "a read-only mount, an immutable flag (lsattr) or processed/ and quarantine/ "
                "on another file system than the folder",
            )
            return False
        return True

    def commit(self, conn: StateConn, ref: BatchRef) -> None:
        return None  # the ledger entry is all the progress a folder needs

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task


def _too_many_rows(shown: str, n: int, cap: int) -> None:
    if n > cap:
        raise BatchRejected(
            f"{shown} has {n:,} rows, more than source.max_batch_rows={cap:,}",
            check="too_large",
            hint="split it into smaller batches, or raise source.max_batch_rows",
        )


def _capped(frame: pd.DataFrame, shown: str, cap: int | None) -> pd.DataFrame:
    if cap is not None:
        _too_many_rows(shown, len(frame), cap)
    return frame


def _free_name(folder: Path, name: str, taken: Callable[[str], bool] = lambda _: False) -> Path:
    """`folder/name`, or with a time stamp (and a number) when that is taken: never overwrite.
    `lexists` never raises (a 255-byte name plus ".reason.txt" is too long to even look up)."""
    dest = folder / name
    reason = folder / (name + _REASON_SUFFIX)
    if not os.path.lexists(dest) and not os.path.lexists(reason) and not taken(name):
        return dest
    # The stamp must fit too: shorten a long stem (a name is at most 255 bytes).
    stem, suffix = cut_bytes(Path(name).stem, 200), Path(name).suffix[:20]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for n in range(1, 10_000):
        candidate = f"{stem}.{stamp}{'' if n == 1 else f'-{n}'}{suffix}"
        path = folder / candidate
        if not os.path.lexists(path) and not taken(candidate):
            return path
    raise OSError(f"no free name for {name} in {folder}")


def _not_regular(shown: str, mode: int) -> BatchRejected:
    kind = _kind(mode)
    return BatchRejected(
        f"{shown} is a {kind}, not a regular file; watcher does not read it",
        check="symlink" if kind == "symbolic link" else "not_a_file",
        hint="only regular Parquet/CSV files are batches",
    )


def _read_parquet(fh: IO[bytes], shown: str) -> pd.DataFrame:
    try:
        names = pq.read_schema(fh).names
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise BatchRejected(
            f"{shown} is not a readable Parquet file: {escape(str(exc), 200)}",
            check="unreadable",
            hint="re-export the batch; the file may be truncated or not Parquet at all",
        ) from exc
    _refuse_duplicates(shown, names)
    try:
        fh.seek(0)
        return chunked.read_parquet(fh)
    except Exception as exc:
        raise BatchRejected(
            f"{shown} could not be read as Parquet: {escape(str(exc), 200)}", check="unreadable"
        ) from exc


def _read_csv(fh: IO[bytes], shown: str) -> pd.DataFrame:
    raw = fh.read(64 * 1024)
    try:
        sample = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(raw) - 3:  # not merely a character cut at the sample's end
            raise BatchRejected(
                f"{shown} is not UTF-8 text: {exc.reason} at byte {exc.start}",
                check="unreadable",
                hint="write CSV batches as UTF-8",
            ) from exc
        sample = raw[: exc.start].decode("utf-8-sig")
    try:
        delimiter = csv.Sniffer().sniff(sample.split("\n", 1)[0], delimiters=_DELIMITERS).delimiter
    except csv.Error:
        delimiter = ","  # a single column has no delimiter to find; the schema check will say
    header = next(csv.reader(io.StringIO(sample), delimiter=delimiter), [])
    _refuse_duplicates(shown, [h.strip() for h in header])
    fh.seek(0)
    try:
        df = pd.read_csv(fh, sep=delimiter, encoding="utf-8-sig", skipinitialspace=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BatchRejected(
            f"{shown} could not be parsed as CSV (delimiter {delimiter!r}): "
            f"{escape(str(exc), 200)}",
            check="unreadable",
            hint="check quoting and that every row has as many fields as the header",
        ) from exc
    df.columns = [str(c).strip() for c in df.columns]
    df.attrs["delimiter"] = delimiter
    return df


def _refuse_duplicates(shown: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BatchRejected(
            f"{shown} has duplicate column names: {sample_names(list(dupes), 5)}",
            check="duplicate_columns",
            hint="each column must appear once; rename or drop the duplicates",
        )
