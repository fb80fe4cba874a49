"""The long-running daemon: startup → main loop → shutdown.

The main loop is deliberately small: poll each model's source, score what arrived (in a
worker thread), reload a reference when the registry's production version changed, and
beat the health heartbeat. Everything that talks to the outside world (Airflow, SMTP)
runs as owned background workers fed by the outbox, so a slow SMTP server never delays
scoring and a crash never loses an action. The parts live elsewhere: one model's round in
`watcher.model_round`, sources built by `watcher.sources.factory`, references kept by
`watcher.reference_keeper`, a source's health alerted by `watcher.source_alerts`, the
workers run by `watcher.background`.

SIGTERM/SIGINT stop intake at once; a batch being scored gets `shutdown_timeout_seconds`
to finish and is otherwise abandoned (its ledger claim makes the next start score it
again), the background workers `background_shutdown_timeout_seconds`; a second SIGINT
exits immediately (a second SIGTERM does not: a supervisor repeating its polite request
must not turn it into a kill).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import stamina.instrumentation
from prometheus_client import CollectorRegistry, disable_created_metrics

from watcher.background import Background, build_workers
from watcher.config import Settings, check_runtime
from watcher.metrics import Metrics
from watcher.metrics_http import Health, MetricsServer
from watcher.model_quality import PerformanceTracker
from watcher.model_round import ModelRound
from watcher.pipeline import ModelRuntime, Pipeline
from watcher.reference_keeper import ReferenceKeeper
from watcher.replicas import Replicas, on_duty_only
from watcher.scheduling import ModelScheduler
from watcher.secrets import Scrubber, secret_values
from watcher.source_alerts import SourceAlerts
from watcher.sources.directory import DirectorySource
from watcher.sources.factory import build_source
from watcher.state import RunRecord, StateDirLock, open_state
from watcher.threads import run_in_daemon_thread

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings, prometheus: CollectorRegistry | None = None) -> None:
        self.settings = settings
        if settings.metrics.detail == "model":
            # A `_created` series beside every counter child is a third of a large fleet's
            # scrape and no PromQL function reads it (prometheus_client's own switch).
            disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.metrics = Metrics(prometheus)
        # Healthy while the main loop has beaten within a few poll intervals (or a minute).
        self.health = Health(max(60.0, 5 * settings.daemon.poll_interval_seconds))
        self.store = open_state(settings)
        self.store.scrub = Scrubber(secret_values(settings))
        self.lock = StateDirLock(settings.daemon.state_dir)
        # On PostgreSQL, replicas share the models (watcher.replicas); SQLite: one daemon.
        self.replicas: Replicas | None = None
        if self.store.target.path is None:
            self.replicas = Replicas(self.store, settings.models, settings.state, self.metrics)
        self.scheduler = ModelScheduler(settings.daemon.workers)
        if self.replicas is not None:
            self.replicas.busy = self.scheduler.busy
        self.pipeline = Pipeline(settings, self.store, self.metrics)
        self.references = ReferenceKeeper(settings, self.store, self.metrics)
        self.sources = SourceAlerts(settings, self.store, self.metrics)
        self.models: dict[str, ModelRuntime] = {}
        self.stop = asyncio.Event()
        self.round = ModelRound(
            settings,
            self.pipeline,
            self.references,
            self.sources,
            self.metrics,
            self.health,
            self.stop,
        )
        self.background = Background([])
        self._server: MetricsServer | None = None
        self._sigints = 0
        # Replaced in tests: a forced exit must not end the test run.
        self._force_exit: Callable[[int], Any] = os._exit
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
        if self.replicas is None:
            self.lock.acquire()  # before anything is claimed, mailed or bound
        else:
            self.replicas.start()  # leases before anything is scored
        self._watch_state_store()
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
            reference = await self.references.at_start(name, model_cfg)
            source = build_source(name, model_cfg, self.store, self.metrics)
            performance = PerformanceTracker(
                name, model_cfg, cfg.daemon.state_dir, self.store, self.metrics, source
            )
            self.models[name] = ModelRuntime(name, model_cfg, source, reference, performance)
            if isinstance(source, DirectorySource):
                source.start_watching(self._wake)
            self.metrics.init_model(name, preset_events=cfg.metrics.detail == "feature")
            self.metrics.source_polled(name, up=True)
        workers = build_workers(cfg, self.store, self.metrics, self.on_run_success, self.on_run_end)
        if self.replicas is not None:  # the fleet's duties on one replica at a time
            workers = on_duty_only(workers, self.replicas)
        self.background = Background(workers)
        self.background.start(self.stop)
        self.health.ready = True
        log.info("watching %d model(s): %s", len(self.models), ", ".join(self.models) or "-")

    async def main_loop(self) -> None:
        interval = self.settings.daemon.poll_interval_seconds
        while not self.stop.is_set():
            self.health.beat()
            owned = self.models if self.replicas is None else self.replicas.owned_models()
            await self.scheduler.round(owned, self._model_round, interval, self.health.beat)
            with contextlib.suppress(Exception):  # a metric only; the store may be failing
                self.metrics.outbox_pending_now(self.store.pending_counts())
            await self._until_next_round(interval)
        await self.scheduler.drain()

    async def _model_round(self, name: str) -> None:
        """One model's turn, run by the scheduler (concurrently up to `daemon.workers`)."""
        if self.stop.is_set() or (self.replicas is not None and not self.replicas.owns(name)):
            return
        await self.round.run(self.models[name])

    async def shutdown(self) -> None:
        self.stop.set()
        self.health.ready = False
        await self.background.close(self.settings.daemon.background_shutdown_timeout_seconds)
        for rt in self.models.values():
            with contextlib.suppress(Exception):
                await rt.source.close()
        self.pipeline.close()
        if self._server is not None:
            self._server.stop()
        if self.replicas is not None:
            self.replicas.stop()  # the other replicas take the models over now
        self.store.close()
        self.lock.release()
        log.info("stopped")

    def request_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop intake; a second SIGINT (Ctrl-C) exits at once, a second SIGTERM does not."""
        if sig == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                log.warning("second interrupt: exiting now")
                self._force_exit(1)
                return
        log.info("stop requested: no new batches; finishing the one in flight")
        self.stop.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig)

    def _watch_state_store(self) -> None:
        self.metrics.state_writable.set_function(lambda: 0 if self.store.write_error else 1)
        self.health.problems["state store"] = lambda: (
            f"cannot write {self.store.target.where}: {self.store.write_error}; outbox deliveries "
            "are held until it can"
            if self.store.write_error
            else None
        )

    # ---- the loop's steps -----------------------------------------------------------------

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

    # ---- called by the run tracker ----------------------------------------------------------

    async def on_run_end(self, run: RunRecord) -> None:
        """Every ended run: its drift reports go to MLflow."""
        from watcher.run_artifacts import attach_drift_reports

        await run_in_daemon_thread(
            attach_drift_reports, self.references.registry, self.settings, run
        )

    async def on_run_success(self, model: str, run: RunRecord) -> None:
        """A retrain run ended well: look at the registry now."""
        rt = self.models.get(model)
        if rt is not None:
            await self.references.reload_now(rt)
