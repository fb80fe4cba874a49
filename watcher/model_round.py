"""One model in the daemon's main loop: opened at start, then one round after another,
each step contained.

Opening a model builds what its rounds use (`ModelRuntime`): its reference, its source
(`watcher.sources.factory`), its performance tracker, and presets its series.

A round is: reload the reference if the registry moved, poll the source and score what
arrived (each batch in a worker thread), read new label files, check the source's
silence. One model's failure (a damaged registry, a bad label file, a vanished folder, a
bug) never stops the others: a step that fails is counted, logged once while it repeats,
and retried next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from watcher.config import ModelConfig, Settings
from watcher.errors import SourceError, WatcherError
from watcher.metrics import Metrics
from watcher.metrics_http import Health
from watcher.model_quality import PerformanceTracker
from watcher.pipeline import ModelRuntime, Pipeline
from watcher.reference_keeper import ReferenceKeeper
from watcher.source_alerts import SourceAlerts
from watcher.sources.directory import DirectorySource
from watcher.sources.factory import build_source
from watcher.state import DB_ERRORS, LeaseLost, StateStore
from watcher.threads import run_in_daemon_thread

log = logging.getLogger(__name__)


async def open_model(
    name: str,
    cfg: ModelConfig,
    settings: Settings,
    references: ReferenceKeeper,
    store: StateStore,
    metrics: Metrics,
    wake: asyncio.Event,
) -> ModelRuntime:
    """What one model's rounds use; a folder source sets `wake` when a batch may be ready."""
    reference = await references.at_start(name, cfg)
    source = build_source(name, cfg, store, metrics)
    performance = PerformanceTracker(name, cfg, settings.daemon.state_dir, store, metrics, source)
    rt = ModelRuntime(name, cfg, source, reference, performance)
    if isinstance(source, DirectorySource):
        source.start_watching(wake)
    metrics.init_model(name, preset_events=settings.metrics.detail == "feature")
    metrics.source_polled(name, up=True)
    return rt


class ModelRound:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        references: ReferenceKeeper,
        sources: SourceAlerts,
        metrics: Metrics,
        health: Health,
        stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.references = references
        self.sources = sources
        self.metrics = metrics
        self.health = health
        self.stop = stop
        # (model, step) -> the last error logged for it: a failure that repeats every round
        # is logged once (and again when it changes), counted every time.
        self._failing: dict[tuple[str, str], str] = {}

    async def run(self, rt: ModelRuntime) -> None:
        await self._contained(rt.name, "registry", self.references.maybe_reload(rt))
        await self._contained(rt.name, "source", self._poll_and_score(rt))
        await self._contained(
            rt.name, "label_file", run_in_daemon_thread(self.pipeline.on_labels, rt)
        )
        await self._contained(rt.name, "internal", _on_loop(self.sources.check_silence, rt))

    async def _contained(self, model: str, step: str, work: Awaitable[Any]) -> None:
        """Run one step of one model; a failure is counted, logged once while it repeats,
        and retried next round, while the other models go on."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.problem(model, step)
            text = f"{type(exc).__name__}: {exc}"
            if self._failing.get((model, step)) != text:
                self._failing[(model, step)] = text
                log.error(
                    "%s: %s step failed: %s; the other models go on, retrying next round",
                    model,
                    step,
                    text,
                    exc_info=not isinstance(exc, WatcherError),
                    extra={"model": model},
                )
            return
        if self._failing.pop((model, step), None) is not None:
            log.info("%s: %s step works again", model, step, extra={"model": model})

    async def _poll_and_score(self, rt: ModelRuntime) -> None:
        try:
            refs = await rt.source.poll()
        except SourceError as exc:
            self.sources.down(rt, exc)
            return
        except Exception as exc:
            self.sources.failed(rt, exc)
            return
        if refs:
            await self.references.ensure(rt)
        self.sources.up(rt)
        for ref in refs:
            if self.stop.is_set():
                return
            job = asyncio.ensure_future(run_in_daemon_thread(self.pipeline.process, rt, ref))
            if not await self._finish_or_abandon(job, rt.name, ref.batch_id):
                return
            try:
                job.result()
            except asyncio.CancelledError:
                raise
            except SourceError as exc:
                log.warning("could not read %s/%s: %s; will retry", rt.name, ref.batch_id, exc)
                self.sources.outages.down(rt.name, rt.source)
                return
            except LeaseLost:
                return  # another replica owns the model now (counted and logged by the fence)
            except DB_ERRORS as exc:
                self.metrics.problem(rt.name, "state_write")
                log.warning(
                    "%s/%s: state database error: %s; scored again next round",
                    rt.name,
                    ref.batch_id,
                    exc,
                )
                return
            except WatcherError as exc:
                self.metrics.batch_set_aside(rt.name, "failed")
                log.error("batch %s/%s failed: %s", rt.name, ref.batch_id, exc)
            except Exception:
                # A bug, not bad input: keep the daemon up, leave the batch claimed so a
                # restart (after a fix) scores it, and make it loud.
                self.metrics.batch_set_aside(rt.name, "failed")
                log.exception("unexpected error scoring %s/%s", rt.name, ref.batch_id)
            self.health.beat()

    async def _finish_or_abandon(self, job: asyncio.Future[Any], model: str, batch: str) -> bool:
        """Wait for a batch; after a stop request, only `shutdown_timeout_seconds` more.

        False when the batch was abandoned: nothing of it is committed until its final
        transaction, and its ledger claim makes the next start score it again.
        """
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            # Busy is not dead: the loop beats while it waits, so /healthz stays 200 through
            # a long batch (a liveness probe would otherwise kill it mid-batch, for ever).
            while not job.done() and not stopping.done():
                self.health.beat()
                await asyncio.wait(
                    {job, stopping}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            stopping.cancel()
        if job.done():
            return True
        timeout = self.settings.daemon.shutdown_timeout_seconds
        done, _ = await asyncio.wait({job}, timeout=timeout)
        if done:
            return True
        log.warning(
            "abandoning %s/%s after waiting %.0fs on shutdown; it is scored again at the next "
            "start",
            model,
            batch,
            timeout,
        )
        return False


async def _on_loop(fn: Callable[..., Any], *args: Any) -> None:
    """A short synchronous step, on the loop (a few milliseconds of state access)."""
    fn(*args)
