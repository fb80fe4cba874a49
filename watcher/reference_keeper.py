"""Which reference each model scores against, kept in step with the model registry.

The daemon holds one `ReferenceKeeper`: it owns the one model registry the daemon reads
(a folder, or MLflow), loads each model's production reference at start-up (lazily: read
and prepared on the first batch), falls back to the version in use before the start when
the production one is damaged, and switches to a new version when the registry's
production pointer moves or a retrain run ended well. What a reference *is* (prepared
once, lean) is `watcher.reference`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from watcher.config import ModelConfig, Settings
from watcher.errors import ReferenceDataError, WatcherError
from watcher.metrics import Metrics
from watcher.pipeline import ModelRuntime
from watcher.reference import Reference, load_reference, prepare, reference_tag, registry_loader
from watcher.registry import ModelRegistry
from watcher.registry_backend import open_registry, pointer_text
from watcher.state import RunRecord, StateStore
from watcher.threads import run_in_daemon_thread

log = logging.getLogger(__name__)
T = TypeVar("T")

# A registry version that failed to load is tried again at most this often.
RETRY_BAD_VERSION_SECONDS = 60.0


class ReferenceKeeper:
    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        # A folder, or MLflow (then every read is an HTTP request: kept off the loop).
        self.registry = open_registry(settings.registry)
        self._reload_now: set[str] = set()
        # model -> (registry version that failed to load, when to try it again)
        self._bad_version: dict[str, tuple[str, float]] = {}
        # The reference version each model used before this start: its fallback when the
        # production reference, read on the first batch, turns out to be damaged.
        self._before_start: dict[str, str | None] = {}

    async def at_start(self, name: str, cfg: ModelConfig) -> Reference:
        """The model's reference for this start, recorded as the one in use."""
        reference = await run_in_daemon_thread(self._load_at_start, name, cfg)
        self._before_start[name] = self.store.reference_version(name)
        self.use(name, reference)
        return reference

    def _load_at_start(self, name: str, cfg: ModelConfig) -> Reference:
        """The production reference; when the registry is damaged, the last one in use.

        A damaged pointer or a broken new version must not keep the daemon from starting
        when the version it used before is still intact in the registry. The reference is
        read and prepared on the model's first batch (`ensure`), not here: a thousand
        models start in seconds.
        """
        try:
            return load_reference(name, cfg, self.settings, lazy=True)
        except Exception as exc:
            return self._last_reference(name, cfg, exc)

    async def ensure(self, rt: ModelRuntime) -> None:
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
            self.use(rt.name, reference)

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
        self.metrics.problem(name, "registry")
        self._bad_version[name] = (
            pointer_text(self.registry, name),
            time.monotonic() + RETRY_BAD_VERSION_SECONDS,
        )
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

    async def run_ended(self, run: RunRecord) -> None:
        """Every ended retrain run: its drift reports go to its MLflow run."""
        from watcher.run_artifacts import attach_drift_reports

        await run_in_daemon_thread(attach_drift_reports, self.registry, self.settings, run)

    async def reload_now(self, rt: ModelRuntime) -> None:
        """A retrain run ended well: look at the registry now, even at a version that failed
        to load a moment ago."""
        self._reload_now.add(rt.name)
        await self.maybe_reload(rt)

    async def maybe_reload(self, rt: ModelRuntime) -> None:
        """Switch to a new reference when the registry's production version changed.

        A version that fails to load (damaged pointer, metadata or artifact) is logged once
        and tried again at most once a minute; the current reference stays in use.
        """
        forced = rt.name in self._reload_now
        self._reload_now.discard(rt.name)
        pointer = await self._read_registry(pointer_text, self.registry, rt.name)
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
            self.metrics.problem(rt.name, "registry")
            if bad is None or bad[0] != pointer:
                log.error(
                    "cannot load the new reference of %s (PRODUCTION %r): %s; keeping %s",
                    rt.name,
                    pointer,
                    exc if isinstance(exc, WatcherError) else f"{type(exc).__name__}: {exc}",
                    rt.reference.version,
                    extra={"model": rt.name},
                )
            self._bad_version[rt.name] = (pointer, time.monotonic() + RETRY_BAD_VERSION_SECONDS)
            return
        self._bad_version.pop(rt.name, None)
        if reference.version != rt.reference.version:
            log.info(
                "%s: reference switched %s -> %s", rt.name, rt.reference.version, reference.version
            )
            rt.reference = reference
            self.use(rt.name, reference)

    def use(self, name: str, reference: Reference) -> None:
        """Record `reference` as the model's version in use (state, metrics, drift streak)."""
        self.store.set_reference_version(name, reference.version)
        self.store.note_deployment(name)
        self.metrics.set_model_version(name, reference.version)
        self.metrics.drift_streak_now(name, self.store.drift_streak(name))
