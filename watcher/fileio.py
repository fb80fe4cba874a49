"""Files watcher writes and reads outside its state store, for the daemon and the DAG alike.

Atomic writes
    Everything written where another process (or a later task) reads it appears whole or
    not at all: written under a hidden temporary name in the same folder (``.<name>.<random>
    .tmp``, a name the folder source never picks up) and renamed over the target. `fsync`
    also waits for the disk, for files whose loss after a power cut matters (the registry's
    production pointer and metadata); run files and caches skip it.

Tables and label files
    A table is a CSV or Parquet file, told apart by its suffix. A label file is a table with
    the id and target columns; `read_label_file` says in one `LabelFileError` why a file
    cannot be used. What to do about it is the caller's rule: the daemon sets the file aside
    and goes on, the DAG's ingest fails (a run must not train on part of its labels).

Safe file names
    `safe_file_name` turns a run id or batch id (``:``, ``+``, ``/``...) into one file name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from watcher.errors import SourceError


def safe_file_name(text: str) -> str:
    """`text` as one file name: anything but letters, digits, ``.``, ``_`` and ``-`` is ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def write_atomic(path: Path, write: Callable[[Path], None], *, fsync: bool = False) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`.
    The temporary file is removed when `write` fails."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if fsync:
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return write_atomic(path, write, fsync=fsync)


def write_json_atomic(path: Path, payload: Any, *, fsync: bool = False) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, default=str), fsync=fsync)


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> Path:
    return write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a frame."""
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    raise SourceError(f"{path} is neither .csv nor .parquet", hint="write tables as CSV or Parquet")


class LabelFileError(SourceError):
    """A label file cannot be used, and why."""


def read_label_file(path: Path, id_col: str, target: str) -> pd.DataFrame:
    """The `id_col` and `target` columns of one label file (CSV in UTF-8, or Parquet)."""
    if path.stat().st_size == 0:
        raise LabelFileError(f"{path.name} is empty (0 bytes)")
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LabelFileError(
            f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except Exception as exc:  # pandas and pyarrow raise many types for damaged files
        kind = "Parquet" if path.suffix.lower() == ".parquet" else "CSV"
        raise LabelFileError(
            f"{path.name} is not a readable {kind} file: {type(exc).__name__}: {str(exc)[:200]}"
        ) from exc
    missing = [c for c in (id_col, target) if c not in df.columns]
    if missing:
        raise LabelFileError(
            f"{path.name} lacks column(s) {missing}",
            hint="label files hold the id column and the target column",
        )
    return df[[id_col, target]]
