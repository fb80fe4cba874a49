"""One daemon per state directory (SQLite). On PostgreSQL, replicas share the models
instead (watcher.replicas)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from watcher.errors import WatcherError


class StateLocked(WatcherError):
    """Another daemon runs on the same state directory."""


class StateDirLock:
    """One daemon per state directory: an exclusive `flock` on ``<state_dir>/daemon.lock``.

    Two daemons on one state would both claim the same batches and mail the same alerts.
    The kernel drops the lock when the process dies (even by SIGKILL), so a crash never
    leaves a stale lock behind. CLI commands (`status`, `trigger`) do not take it.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(
                f"another watcher daemon (pid {holder}) is running on the state directory "
                f"{self.path.parent}; refusing to start a second one",
                hint="stop the other daemon first, or give this one its own daemon.state_dir",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
