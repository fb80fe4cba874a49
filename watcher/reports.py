"""Drift reports rendered off the critical path: after the batch's commit, one at a time, in
a child process, on a bounded deterministic sample.

Rendering evidently's HTML report of a 1M-row batch took 82 s and 2.3 GB inside the batch's
processing, and the main loop looked dead meanwhile. Now the batch is committed (metrics
exported, mail enqueued) first; the report is rendered by this renderer's thread in a
spawned process (its memory is returned when it exits, its GIL is its own), on at most
``alerts.report_max_rows`` rows of each side, sampled with a seed derived from the batch id so
the same batch always gives the same report. A render slower than
``alerts.report_timeout_seconds`` is killed. The mail that cites the report waits for it at
most ``alerts.report_wait_seconds`` (see `watcher.alerts.dispatcher`), then links it. When a
render fails, ``<report>.failed`` says why, and the mail stops waiting at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from watcher.config import ColumnsConfig, DriftConfig
from watcher.safetext import cut_bytes

log = logging.getLogger(__name__)


def report_path(root: Path, model: str, batch_id: str) -> Path:
    """Where a batch's report goes: a file name of safe characters that fits any file system."""
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_" for ch in batch_id)
    digest = hashlib.sha256(batch_id.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return root / model / f"{cut_bytes(safe.lstrip('.'), 150)}-{digest}.html"


def failed_marker(path: Path) -> Path:
    return path.with_name(path.name + ".failed")


def sample(frame: pd.DataFrame, max_rows: int, key: str) -> pd.DataFrame:
    """At most `max_rows` rows, the same ones for the same `key` every time."""
    if len(frame) <= max_rows:
        return frame
    seed = int(hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16)
    return frame.sample(n=max_rows, random_state=seed).sort_index()


# The reference frame, or how to read it again: the daemon does not keep reference frames
# (see `watcher.reference`), so the renderer's thread reads it, off the batch's path.
ReferenceFrame = pd.DataFrame | Callable[[], pd.DataFrame]


@dataclass(frozen=True)
class ReportJob:
    model: str
    batch_id: str
    reference: ReferenceFrame
    current: pd.DataFrame
    columns: ColumnsConfig
    drift: DriftConfig
    path: Path


def _render(job: ReportJob) -> None:  # runs in the child process
    # os._exit: threads evidently's import leaves behind would otherwise hold the child
    # past its work, until the timeout kills it and a written report counts as failed.
    try:
        from watcher.alerts.report import write_drift_report

        assert isinstance(job.reference, pd.DataFrame)  # read and sampled by the renderer
        write_drift_report(job.reference, job.current, job.columns, job.path, drift=job.drift)
    except BaseException:
        logging.getLogger(__name__).exception("rendering the drift report failed")
        os._exit(1)
    os._exit(0)


class ReportRenderer:
    """A bounded queue of report jobs and the one thread that renders them in turn."""

    def __init__(self, *, max_rows: int, timeout_seconds: float, max_queued: int = 4) -> None:
        self.max_rows = max_rows
        self.timeout = timeout_seconds
        self._jobs: queue.Queue[ReportJob | None] = queue.Queue(maxsize=max_queued)
        self._thread: threading.Thread | None = None
        self._child: multiprocessing.process.BaseProcess | None = None
        self._closed = False

    def submit(
        self,
        *,
        model: str,
        batch_id: str,
        reference: ReferenceFrame,
        current: pd.DataFrame,
        columns: ColumnsConfig,
        drift: DriftConfig,
        path: Path,
    ) -> bool:
        """Queue a report; False (and a `.failed` marker) when the queue is full or closed."""
        job = ReportJob(
            model,
            batch_id,
            reference,
            sample(current, self.max_rows, f"batch:{model}:{batch_id}"),
            columns,
            drift,
            path,
        )
        if self._closed:
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="report-renderer", daemon=True)
            self._thread.start()
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self._fail(job, f"{self._jobs.maxsize} reports were already waiting to be rendered")
            return False
        return True

    def close(self) -> None:
        """Stop taking jobs; a render in progress is killed (its batch is committed)."""
        self._closed = True
        child = self._child
        if child is not None and child.is_alive():
            child.kill()
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._jobs.put_nowait(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closed:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._render(job)
            except Exception as exc:  # a report is a convenience: never lose the thread
                log.exception("drift report for %s/%s failed", job.model, job.batch_id)
                self._fail(job, repr(exc))

    def _render(self, job: ReportJob) -> None:
        reference = job.reference() if callable(job.reference) else job.reference
        job = replace(job, reference=sample(reference, self.max_rows, f"reference:{job.model}"))
        del reference
        # spawn, not fork: the daemon has threads (and sqlite connections) a fork would copy.
        child = multiprocessing.get_context("spawn").Process(
            target=_render, args=(job,), name=f"report-{job.model}", daemon=True
        )
        self._child = child
        child.start()
        child.join(self.timeout)
        if child.is_alive():
            child.kill()
            child.join(5)
            self._fail(job, f"rendering took longer than {self.timeout:.0f}s and was stopped")
        elif child.exitcode != 0:
            self._fail(job, f"the rendering process exited with code {child.exitcode}")
        else:
            log.info("drift report for %s/%s written to %s", job.model, job.batch_id, job.path)
        self._child = None

    def _fail(self, job: ReportJob, why: str) -> None:
        log.warning(
            "no drift report for %s/%s: %s; the alert mail goes out without it",
            job.model,
            job.batch_id,
            why,
        )
        try:
            job.path.parent.mkdir(parents=True, exist_ok=True)
            failed_marker(job.path).write_text(why + "\n", encoding="utf-8")
        except OSError:
            log.warning("cannot write %s", failed_marker(job.path))
