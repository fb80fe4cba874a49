"""The long-running daemon: startup → main loop → shutdown.

The main loop is deliberately small: poll each model's source, score what arrived (in a
worker thread), reload a reference when the registry's production version changed, and
beat the health heartbeat. Everything that talks to the outside world (Airflow, SMTP)
runs as owned background workers fed by the outbox, so a slow SMTP server never delays
scoring and a crash never loses an action.

SIGTERM/SIGINT stop intake at once; a batch being scored gets `shutdown_timeout_seconds`
to finish and is otherwise abandoned (its ledger claim makes the next start score it
again); a second SIGINT exits immediately.

Size: over 400 lines because it still builds sources and reloads references itself; the
renovation (issue 15) moves those into a source factory and a reference module so that this
file is the lifecycle alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import stamina.instrumentation
from prometheus_client import CollectorRegistry, disable_created_metrics

from watcher import incidents
from watcher.alerts import alert_action
from watcher.config import ModelConfig, Settings, check_runtime
from watcher.errors import ConfigError, ReferenceDataError, SourceError, WatcherError
from watcher.metrics import Health, Metrics, MetricsServer
from watcher.model_quality import PerformanceTracker
from watcher.periodic import PeriodicWorker, run_periodically
from watcher.pipeline import ModelRuntime, Pipeline
from watcher.reference import Reference, load_reference, prepare, reference_tag, registry_loader
from watcher.registry import ModelRegistry
from watcher.registry_backend import open_registry, pointer_text
from watcher.secrets import Scrubber, secret_values
from watcher.sources.base import Source
from watcher.sources.directory import DirectorySource
from watcher.state import RunRecord, StateDirLock, StateStore, open_state
from watcher.state.lock import DatabaseLock

log = logging.getLogger(__name__)
T = TypeVar("T")


async def run_in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Like asyncio.to_thread, but the thread does not keep the process alive at exit.

    A shutdown that gives up waiting on a long scoring job must be able to exit; the work
    is safe to abandon because nothing of it is committed until its final transaction.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(*args), None)
        except BaseException as exc:
            outcome = (None, exc)
        # The loop is gone when a shutdown abandoned this job: there is no one to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, future, *outcome)

    threading.Thread(
        target=target, name=f"score-{getattr(fn, '__name__', 'job')}", daemon=True
    ).start()
    return await future


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def build_source(name: str, cfg: ModelConfig, store: StateStore, metrics: Metrics) -> Source:
    if cfg.source.kind == "directory":
        return DirectorySource(name, cfg.source, store, metrics)
    try:
        from watcher.sources.sql.source import SqlSource  # SQLAlchemy is only needed by sql sources
    except ImportError as exc:
        raise ConfigError(
            f"model {name!r} reads a sql source, but its drivers are not installed ({exc})",
            hint="pip install 'watcher-drift[sql]'",
        ) from exc

    return SqlSource(name, cfg.source, cfg.columns, store, metrics)


class Daemon:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        if settings.metrics.detail == "model":
            # A `_created` series beside every counter child is a third of a large fleet's
            # scrape and no PromQL function reads it (prometheus_client's own switch).
            disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.metrics = Metrics(registry)
        # Healthy while the main loop has beaten within a few poll intervals (or a minute).
        self.health = Health(max(60.0, 5 * settings.daemon.poll_interval_seconds))
        self.store = open_state(settings)
        self.store.scrub = Scrubber(secret_values(settings))
        self.lock = StateDirLock(settings.daemon.state_dir)
        target = self.store.target
        self.db_lock = (
            None
            if target.path is not None
            else DatabaseLock(target.conninfo, target.where, settings.state.connect_timeout_seconds)
        )
        self.pipeline = Pipeline(settings, self.store, self.metrics)
        # A folder, or MLflow (then every read is an HTTP request: kept off the loop).
        self.registry = open_registry(settings.registry)
        self.models: dict[str, ModelRuntime] = {}
        self.stop = asyncio.Event()
        self._server: MetricsServer | None = None
        self._workers: list[PeriodicWorker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._interrupts = 0
        self._reload_now: set[str] = set()
        # (model, step) -> the last error logged for it: a failure that repeats every round
        # is logged once (and again when it changes), counted every time.
        self._failing: dict[tuple[str, str], str] = {}
        # model -> (registry version that failed to load, when to try it again)
        self._bad_version: dict[str, tuple[str, float]] = {}
        # The reference version each model used before this start: its fallback when the
        # production reference, read on the first batch, turns out to be damaged.
        self._before_start: dict[str, str | None] = {}
        self._poll_errors: dict[str, str] = {}
        # Sources report up and down; this pages about it, one alert per outage.
        self.source_outages = incidents.SourceOutages(self.store)
        # Set by a source's file-system notifications: start the next round now.
        self._wake = asyncio.Event()

    # ---- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        self._install_signal_handlers()
        try:
            await self.startup()
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        cfg = self.settings
        check_runtime(cfg)  # what `watcher check-config` checks, no more, no less
        self.lock.acquire()  # before anything is claimed, mailed or bound
        if self.db_lock is not None:
            self.db_lock.acquire()
        self.metrics.state_writable.set_function(lambda: 0 if self.store.write_error else 1)
        self.health.problems["state store"] = lambda: (
            f"cannot write {self.store.target.where}: {self.store.write_error}; outbox deliveries "
            "are held until it can"
            if self.store.write_error
            else None
        )
        # stamina's own Prometheus hook counts on the global registry, which is never served.
        stamina.instrumentation.set_on_retry_hooks(
            [stamina.instrumentation.LoggingOnRetryHook, self.metrics.count_retry]
        )
        if cfg.metrics.enabled:
            self._server = MetricsServer(
                self.metrics, self.health, cfg.metrics.host, cfg.metrics.port
            )
            self._server.start()
            log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, self._server.port)
        for name, model_cfg in cfg.models.items():
            reference = await run_in_daemon_thread(self._load_reference_at_start, name, model_cfg)
            source = build_source(name, model_cfg, self.store, self.metrics)
            performance = PerformanceTracker(
                name, model_cfg, cfg.daemon.state_dir, self.store, self.metrics, source
            )
            self.models[name] = ModelRuntime(name, model_cfg, source, reference, performance)
            if isinstance(source, DirectorySource):
                source.start_watching(self._wake)
            self._before_start[name] = self.store.reference_version(name)
            self._use_reference(name, reference)
            self.metrics.init_model(name, preset_events=cfg.metrics.detail == "feature")
            self.metrics.source_up.labels(name).set(1)
        self._workers = self._build_workers()
        for worker in self._workers:
            self._tasks.append(
                asyncio.create_task(run_periodically(worker, self.stop), name=worker.name)
            )
        self.health.ready = True
        log.info("watching %d model(s): %s", len(self.models), ", ".join(self.models) or "-")

    async def main_loop(self) -> None:
        interval = self.settings.daemon.poll_interval_seconds
        while not self.stop.is_set():
            self.health.beat()
            for rt in self.models.values():
                if self.stop.is_set():
                    break
                # One model's failure (a damaged registry, a bad label file, a vanished
                # folder, a bug) never stops the others: each step is contained.
                await self._contained(rt.name, "registry", self._maybe_reload(rt))
                await self._contained(rt.name, "source", self._poll_and_score(rt))
                await self._contained(
                    rt.name, "label_file", run_in_daemon_thread(self.pipeline.on_labels, rt)
                )
                await self._contained(rt.name, "internal", self._async(self._check_silence, rt))
            with contextlib.suppress(Exception):  # a metric only; the store may be failing
                self._export_outbox()
            await self._until_next_round(interval)

    async def _until_next_round(self, interval: float) -> None:
        """Sleep one poll interval, or less when a stop or a file-system event comes."""
        waits = {
            asyncio.ensure_future(self.stop.wait()),
            asyncio.ensure_future(self._wake.wait()),
        }
        try:
            await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self._wake.clear()

    async def shutdown(self) -> None:
        self.stop.set()
        self.health.ready = False
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                log.warning("cancelling background task %s", task.get_name())
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self._workers:
            with contextlib.suppress(Exception):
                await worker.close()
        for rt in self.models.values():
            with contextlib.suppress(Exception):
                await rt.source.close()
        self.pipeline.close()
        if self._server is not None:
            self._server.stop()
        self.store.close()
        self.lock.release()
        if self.db_lock is not None:
            self.db_lock.release()
        log.info("stopped")

    def request_stop(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            log.warning("second interrupt: exiting now")
            os._exit(1)
        log.info("stop requested: no new batches; finishing the one in flight")
        self.stop.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

    # ---- the loop's steps -----------------------------------------------------------------

    @staticmethod
    async def _async(fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)

    async def _contained(self, model: str, step: str, work: Awaitable[Any]) -> None:
        """Run one step of one model; a failure is counted, logged once while it repeats,
        and retried next round, while the other models go on."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.problems.labels(model, step).inc()
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

    def _load_reference_at_start(self, name: str, cfg: ModelConfig) -> Reference:
        """The production reference; when the registry is damaged, the last one in use.

        A damaged pointer or a broken new version must not keep the daemon from starting
        when the version it used before is still intact in the registry. The reference is
        read and prepared on the model's first batch (`_ensure_reference`), not here: a
        thousand models start in seconds.
        """
        try:
            return load_reference(name, cfg, self.settings, lazy=True)
        except Exception as exc:
            return self._last_reference(name, cfg, exc)

    async def _ensure_reference(self, rt: ModelRuntime) -> None:
        """Read and prepare the model's reference before its first batch. When it cannot be
        (a damaged artifact), fall back to the last version in use as at start-up; else
        the error goes up (counted, logged once) and the batches wait, unclaimed."""
        if rt.reference.ready:
            return
        try:
            await run_in_daemon_thread(rt.reference.ensure)
        except Exception as exc:
            reference = await run_in_daemon_thread(self._last_reference, rt.name, rt.cfg, exc)
            if reference.version == rt.reference.version:
                raise
            rt.reference = reference
            self._use_reference(rt.name, reference)

    def _last_reference(self, name: str, cfg: ModelConfig, exc: Exception) -> Reference:
        """The last reference version in use, prepared, instead of one that failed with
        `exc`; raises `exc` when there is none or it fails too."""
        last = self._before_start.get(name) or self.store.reference_version(name)
        if not last or not last.removeprefix("v").isdigit():
            if isinstance(exc, WatcherError):
                raise exc
            raise ReferenceDataError(
                f"model {name}: cannot load the reference: {type(exc).__name__}: {exc}",
                hint="check the registry version in production (`watcher models`)",
            ) from exc
        try:
            version = last.removeprefix("v")
            frame = self.registry.load_reference(name, version)
            loader = registry_loader(self.settings.registry, name, version)
            reference = prepare(name, cfg, reference_tag(version), frame, load_frame=loader)
        except Exception:
            raise exc from None
        self.metrics.problems.labels(name, "registry").inc()
        self._bad_version[name] = (self._production_text(name), time.monotonic() + 60)
        log.error(
            "%s: cannot load the production reference (%s); using %s, the last one in use",
            name,
            exc,
            last,
        )
        return reference

    async def _read_registry(self, fn: Callable[..., T], *args: Any) -> T:
        """The file registry is read on the loop without yielding (pointer and version see
        the same file); MLflow's alias is an HTTP request, made in a thread."""
        if isinstance(self.registry, ModelRegistry):
            return fn(*args)
        return await run_in_daemon_thread(fn, *args)

    def _production_text(self, name: str) -> str:
        return pointer_text(self.registry, name)

    async def _poll_and_score(self, rt: ModelRuntime) -> None:
        try:
            refs = await rt.source.poll()
        except SourceError as exc:
            self.metrics.source_up.labels(rt.name).set(0)
            if self._failing.get((rt.name, "source down")) != str(exc):  # once per cause
                self._failing[(rt.name, "source down")] = str(exc)
                log.warning("source of %s unavailable: %s; retrying every round", rt.name, exc)
            self.source_outages.down(rt.name, rt.source)
            return
        except Exception as exc:
            # No input may stop the daemon: a listing that fails in a way nobody foresaw is
            # a source that is down this round. The traceback once per kind of error.
            self.metrics.source_up.labels(rt.name).set(0)
            seen = f"{type(exc).__name__}: {exc}"
            if self._poll_errors.get(rt.name) != seen:
                self._poll_errors[rt.name] = seen
                log.exception("polling the source of %s failed; retrying next round", rt.name)
            return
        if refs:
            await self._ensure_reference(rt)
        self._poll_errors.pop(rt.name, None)
        self.metrics.source_up.labels(rt.name).set(1)
        self._failing.pop((rt.name, "source down"), None)
        self.source_outages.up(rt.name, rt.source)
        if isinstance(rt.source, DirectorySource) and rt.source.reused_names:
            self.metrics.problems.labels(rt.name, "name_reused").inc(rt.source.reused_names)
            rt.source.reused_names = 0
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
                self.source_outages.down(rt.name, rt.source)
                return
            except WatcherError as exc:
                self.metrics.batches.labels(rt.name, "failed").inc()
                log.error("batch %s/%s failed: %s", rt.name, ref.batch_id, exc)
            except Exception:
                # A bug, not bad input: keep the daemon up, leave the batch claimed so a
                # restart (after a fix) scores it, and make it loud.
                self.metrics.batches.labels(rt.name, "failed").inc()
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

    async def _maybe_reload(self, rt: ModelRuntime) -> None:
        """Switch to a new reference when the registry's production version changed.

        A version that fails to load (damaged pointer, metadata or artifact) is logged once
        and tried again at most once a minute; the current reference stays in use.
        """
        forced = rt.name in self._reload_now
        self._reload_now.discard(rt.name)
        pointer = await self._read_registry(self._production_text, rt.name)
        bad = self._bad_version.get(rt.name)
        if bad is not None and bad[0] == pointer and time.monotonic() < bad[1] and not forced:
            return
        try:
            version = await self._read_registry(self.registry.production_version, rt.name)
            if version is None or (not forced and rt.reference.version == reference_tag(version)):
                self._bad_version.pop(rt.name, None)
                return
            reference = await run_in_daemon_thread(load_reference, rt.name, rt.cfg, self.settings)
        except Exception as exc:
            self.metrics.problems.labels(rt.name, "registry").inc()
            if bad is None or bad[0] != pointer:
                log.error(
                    "cannot load the new reference of %s (PRODUCTION %r): %s; keeping %s",
                    rt.name,
                    pointer,
                    exc if isinstance(exc, WatcherError) else f"{type(exc).__name__}: {exc}",
                    rt.reference.version,
                    extra={"model": rt.name},
                )
            self._bad_version[rt.name] = (pointer, time.monotonic() + 60)
            return
        self._bad_version.pop(rt.name, None)
        if reference.version != rt.reference.version:
            log.info(
                "%s: reference switched %s -> %s", rt.name, rt.reference.version, reference.version
            )
            rt.reference = reference
            self._use_reference(rt.name, reference)

    def _use_reference(self, name: str, reference: Reference) -> None:
        self.store.set_reference_version(name, reference.version)
        self.store.note_deployment(name)
        self.metrics.set_model_version(name, reference.version)
        self.metrics.drift_streak.labels(name).set(self.store.drift_streak(name))

    async def on_run_end(self, run: RunRecord) -> None:
        """Called by the run tracker for every ended run: its drift reports go to MLflow."""
        from watcher.run_artifacts import attach_drift_reports

        await run_in_daemon_thread(attach_drift_reports, self.registry, self.settings, run)

    async def on_run_success(self, model: str, run: RunRecord) -> None:
        """Called by the run tracker: a retrain run ended well; look at the registry now."""
        self._reload_now.add(model)
        rt = self.models.get(model)
        if rt is not None:
            await self._maybe_reload(rt)

    def _check_silence(self, rt: ModelRuntime) -> None:
        limit = self.settings.alerts.source_silent_after_seconds
        if limit <= 0:
            return
        key = f"source:{rt.name}:silent"
        silent_for = time.time() - rt.last_batch_at
        with self.store.transaction() as conn:
            if silent_for > limit:
                incidents.open_incident(
                    conn,
                    key,
                    "source_silent",
                    rt.name,
                    {},
                    alert=alert_action(
                        "source_silent",
                        key=f"{key}:{int(rt.last_batch_at)}",
                        model=rt.name,
                        title=f"no batch for {silent_for / 60:.0f} min",
                        severity="warning",
                        details={"silent_seconds": round(silent_for), "limit_seconds": limit},
                        incident=key,
                    ),
                )
            else:
                incidents.resolve_incident(
                    conn,
                    key,
                    alert=alert_action(
                        "source_recovered",
                        key=f"{key}:recovered:{int(rt.last_batch_at)}",
                        model=rt.name,
                        title="batches are arriving again",
                        severity="info",
                        incident=key,
                    ),
                )

    def _export_outbox(self) -> None:
        for kind, n in self.store.pending_counts().items():
            self.metrics.outbox_pending.labels(kind).set(n)

    def _build_workers(self) -> list[PeriodicWorker]:
        workers: list[PeriodicWorker] = []
        if self.settings.airflow.enabled:
            from watcher.airflow import build_airflow_workers

            workers += build_airflow_workers(
                self.settings, self.store, self.metrics, self.on_run_success, self.on_run_end
            )
        if self.settings.smtp.enabled:
            from watcher.alerts.dispatcher import build_mail_workers

            workers += build_mail_workers(self.settings, self.store, self.metrics)
        if self.settings.webhooks:
            from watcher.alerts.webhook import build_webhook_workers

            workers += build_webhook_workers(self.settings, self.store, self.metrics)
        state = self.settings.state
        if state.retention_days is not None:
            from watcher.state.retention import RetentionWorker

            workers.append(
                RetentionWorker(self.store, state.retention_days, state.retention_interval_seconds)
            )
        return workers
