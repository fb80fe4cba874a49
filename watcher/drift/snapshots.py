"""Scored batches as snapshots in an Evidently UI workspace (`[evidently] workspace = ...`).

evidently users look at drift in evidently's own UI; this puts every scored batch (or only
the drifted ones) there, as a `DataDriftPreset` snapshot named after the model and batch,
tagged with both. It runs off the hot path: the pipeline hands a batch over after its
transaction committed, one background (daemon) thread builds the report (about a second) and adds
it to the workspace. A failure (workspace unreachable, a report evidently cannot build) is
logged and counted in `watcher_evidently_snapshots_total{outcome="failed"}`; the batch is
already scored and committed, so nothing is lost or blocked. When the thread falls
behind by `max_pending` batches, further ones are dropped (outcome "dropped").
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pandas as pd

from watcher.config import EvidentlyConfig, ModelConfig
from watcher.metrics import Metrics

log = logging.getLogger(__name__)


class SnapshotPublisher:
    """Adds batches to one Evidently workspace and project, in a thread of its own."""

    def __init__(self, cfg: EvidentlyConfig, metrics: Metrics) -> None:
        if not cfg.workspace:
            raise ValueError("SnapshotPublisher needs evidently.workspace")
        self.cfg = cfg
        self.metrics = metrics
        # A daemon thread, not an executor: evidently's remote client sets no timeout, and
        # a hung workspace must not keep the process from exiting at shutdown.
        self._queue: queue.Queue[tuple[Future[str | None], tuple[Any, ...]] | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._worker, name="evidently-snapshots", daemon=True
        )
        self._thread.start()
        self._lock = threading.Lock()
        self._pending = 0
        self._workspace: Any = None
        self.project_id: str | None = None
        # The last reference frame read (model, version, frame): the daemon keeps no
        # reference frames, so this thread reads one again when its version changes.
        self._reference: tuple[str, str, pd.DataFrame] | None = None

    def wants(self, dataset_drift: bool) -> bool:
        return self.cfg.snapshots == "all" or dataset_drift

    def project_url(self) -> str | None:
        """The project's page in the UI, for alert mails (None until it is known)."""
        base = self.cfg.link_base
        if base is None:
            return None
        return f"{base}/projects/{self.project_id}" if self.project_id else base

    def submit(
        self,
        model: str,
        batch_id: str,
        reference: pd.DataFrame | Callable[[], pd.DataFrame],
        current: pd.DataFrame,
        cfg: ModelConfig,
        *,
        dataset_drift: bool,
        reference_version: str,
    ) -> Future[str | None] | None:
        """Queue one scored batch. Returns its future, or None when it is not wanted or
        the queue is full. Never raises for a workspace problem."""
        if not self.wants(dataset_drift):
            return None
        with self._lock:
            if self._pending >= self.cfg.max_pending:
                self.metrics.snapshot_sent(model, "dropped")
                log.warning(
                    "evidently snapshot of %s/%s dropped: %d batches already wait for the "
                    "workspace %s",
                    model,
                    batch_id,
                    self._pending,
                    self.cfg.workspace,
                )
                return None
            self._pending += 1
        future: Future[str | None] = Future()
        args = (model, batch_id, reference, current, cfg, dataset_drift, reference_version)
        self._queue.put((future, args))
        return future

    def _worker(self) -> None:
        while (item := self._queue.get()) is not None:
            future, args = item
            if future.set_running_or_notify_cancel():
                future.set_result(self._publish(*args))

    def _publish(
        self,
        model: str,
        batch_id: str,
        reference: pd.DataFrame | Callable[[], pd.DataFrame],
        current: pd.DataFrame,
        cfg: ModelConfig,
        dataset_drift: bool,
        reference_version: str,
    ) -> str | None:
        try:
            from watcher.alerts.report import drift_snapshot

            if callable(reference):
                reference = self._reference_frame(model, reference_version, reference)

            snapshot = drift_snapshot(
                reference,
                current,
                cfg.columns,
                drift=cfg.drift,
                name=f"{model} {batch_id}",
                tags=[model, f"batch:{batch_id}", "drift" if dataset_drift else "no drift"],
                metadata={
                    "model": model,
                    "batch_id": batch_id,
                    "reference_version": reference_version,
                },
            )
            workspace = self._connect()
            project_id = self._project(workspace)
            ref = workspace.add_run(project_id, snapshot)
        except Exception as exc:  # any failure here must not touch the scored batch
            self.metrics.snapshot_sent(model, "failed")
            log.warning(
                "evidently snapshot of %s/%s not added to %s: %s: %s",
                model,
                batch_id,
                self.cfg.workspace,
                type(exc).__name__,
                exc,
            )
            return None
        finally:
            with self._lock:
                self._pending -= 1
        self.metrics.snapshot_sent(model, "added")
        url = str(getattr(ref, "url", "") or "")
        log.info("evidently snapshot of %s/%s added: %s", model, batch_id, url or ref)
        return url

    def _reference_frame(
        self, model: str, version: str, load: Callable[[], pd.DataFrame]
    ) -> pd.DataFrame:
        kept = self._reference
        if kept is None or kept[:2] != (model, version):
            self._reference = None  # the old frame goes before the new one is read
            kept = (model, version, load())
            self._reference = kept
        return kept[2]

    def _connect(self) -> Any:
        if self._workspace is None:
            if self.cfg.is_remote:
                from evidently.ui.workspace import RemoteWorkspace

                self._workspace = RemoteWorkspace(str(self.cfg.workspace))
            else:
                from evidently.ui.workspace import Workspace

                self._workspace = Workspace.create(str(self.cfg.workspace))
        return self._workspace

    def _project(self, workspace: Any) -> str:
        if self.project_id is None:
            found = workspace.search_project(self.cfg.project)
            project = found[0] if found else workspace.create_project(self.cfg.project)
            self.project_id = str(project.id)
        return self.project_id

    def close(self) -> None:
        """Stop: snapshots not started yet are given up (they are a view of batches that
        are already committed); one being added finishes, or dies with the process."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
                with self._lock:
                    self._pending -= 1
        self._queue.put(None)
