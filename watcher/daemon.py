"""The long-running daemon: startup → main loop → shutdown.

The main loop is deliberately small: poll each model's source, score what arrived (in a
worker thread), reload a reference when the registry's production version changed, and
beat the health heartbeat. Everything that talks to the outside world (Airflow, SMTP)
runs as owned background workers fed by the outbox, so a slow SMTP server never delays
scoring and a crash never loses an action. The parts live elsewhere: one model opened and
its rounds in `watcher.model_round`, the rounds scheduled (and the wait between them) by
`watcher.scheduling`, references kept by `watcher.reference_keeper`, a source's health
alerted by `watcher.source_alerts`, the workers run by `watcher.background`, the models
shared between replicas by `watcher.replicas`.

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
from watcher.model_round import ModelRound, open_model
from watcher.pipeline import ModelRuntime, Pipeline
from watcher.reference_keeper import ReferenceKeeper
from watcher.replicas import on_duty_only, replicas_for
from watcher.scheduling import ModelScheduler
from watcher.secrets import Scrubber, secret_values
from watcher.source_alerts import SourceAlerts
from watcher.state import DB_ERRORS, RunRecord, StateDirLock, StateUnavailable, open_state

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
        self.scheduler = ModelScheduler(settings.daemon.workers)
        self.replicas = replicas_for(  # None on SQLite: one daemon owns every model
            self.store, settings.models, settings.state, self.metrics, self.scheduler.busy
        )
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

    # ---- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        self._install_signal_handlers()
        try:
            try:
                await self.startup()
            except DB_ERRORS as exc:
                raise StateUnavailable(
                    f"the state database failed while watcher was starting: {exc}",
                    hint="watcher exits (code 2) so that its supervisor starts it again; "
                    "check that the database server is up",
                ) from exc
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
            self.models[name] = await open_model(
                name, model_cfg, cfg, self.references, self.store, self.metrics, self.scheduler.wake
            )
        workers = build_workers(
            cfg, self.store, self.metrics, self.on_run_success, self.references.run_ended
        )
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
            await self.scheduler.until_next_round(self.stop, interval)
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

    # ---- called by the run tracker (an ended run's reports: `ReferenceKeeper.run_ended`) ----

    async def on_run_success(self, model: str, run: RunRecord) -> None:
        """A retrain run ended well: look at the registry now."""
        rt = self.models.get(model)
        if rt is not None:
            await self.references.reload_now(rt)
