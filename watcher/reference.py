"""A model's reference, prepared once per version, and lean: the frame is not kept.

What scoring and the quality checks need of a reference is small: per numeric column its
sorted finite values (plus the running integrals the distances need, on first use), per
categorical column its counts, and the quality profile (ranges, category sets). That is
what `Reference` keeps. The reference frame itself (for a thousand models, gigabytes) is
dropped after preparation and read again from where it came from (the registry, or the
configured file) on the rare occasions it is wanted whole: a drift report, an Evidently
snapshot. Columns scored with a test on evidently's own path (or a custom test) are the
exception: their rows are kept, in row order, because those tests need them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from watcher.batchsize import NoiseLine, noise_line
from watcher.config import ModelConfig, RegistryConfig, Settings
from watcher.drift import engine
from watcher.drift.quality import ReferenceProfile, profile_reference
from watcher.errors import ReferenceDataError
from watcher.fileio import read_table

log = logging.getLogger(__name__)

FrameLoader = Callable[[], pd.DataFrame]


@dataclass(frozen=True)
class Prepared:
    """What scoring and the quality checks use of a reference version."""

    prepared: engine.PreparedReference
    profile: ReferenceProfile
    # Below this many rows a batch's dataset drift is noise for this reference's tests.
    noise: NoiseLine | None = None


class _Once:
    """Builds the prepared parts on first use, once (a failure is raised, and tried
    again at the next use)."""

    def __init__(self, build: Callable[[], Prepared] | Prepared) -> None:
        self._lock = threading.Lock()
        self._build = build if callable(build) else None
        self._value = None if callable(build) else build

    @property
    def ready(self) -> bool:
        return self._value is not None

    def get(self) -> Prepared:
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._value is None:
                assert self._build is not None
                self._value = self._build()
                self._build = None  # the closure may hold a frame: let it go
            return self._value


@dataclass(frozen=True)
class Reference:
    """A model's reference version: prepared once, on first use (`lazy=True` in
    `load_reference`) or at once."""

    version: str
    # Reads the reference frame again (from the registry or the file): it is not kept.
    load_frame: FrameLoader
    parts: _Once
    # The version's holdout metrics and feature importance, from the registry metadata
    # (empty/None for a reference file): the performance signal's baseline, the drift
    # signal's weights.
    metrics: dict[str, float] = field(default_factory=dict)
    importance: dict[str, float] | None = None

    @property
    def ready(self) -> bool:
        """Prepared already (scoring a batch will not read and prepare the reference)."""
        return self.parts.ready

    def ensure(self) -> None:
        """Prepare now (reading the reference if needed); raises what preparing raises."""
        self.parts.get()

    @property
    def prepared(self) -> engine.PreparedReference:
        return self.parts.get().prepared

    @property
    def profile(self) -> ReferenceProfile:
        return self.parts.get().profile

    @property
    def noise(self) -> NoiseLine | None:
        return self.parts.get().noise

    @property
    def n_rows(self) -> int:
        return self.prepared.n_rows


def reference_tag(registry_version: str) -> str:
    """How a registry version is named as a reference (and in `watcher_model_info`)."""
    return registry_version if registry_version.startswith("v") else f"v{registry_version}"


def registry_loader(cfg: RegistryConfig, name: str, version: str) -> FrameLoader:
    """Reads a registry version's reference again (its SHA-256 verified each time)."""

    def load() -> pd.DataFrame:
        from watcher.registry_backend import open_registry

        return open_registry(cfg).load_reference(name, version)

    return load


def file_loader(path: Path, digest: str) -> FrameLoader:
    """Reads a reference file again; refuses it when it changed since it was prepared."""

    def load() -> pd.DataFrame:
        now = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        if now != digest:
            raise ReferenceDataError(
                f"reference file {path} changed since it was loaded (file-{digest}, now "
                f"file-{now})",
                hint="restart the daemon (or deploy a registry version) to use the new file",
            )
        return read_table(path)

    return load


def load_reference(
    name: str, cfg: ModelConfig, settings: Settings, *, lazy: bool = False
) -> Reference:
    """The production version's training data from the registry, else the configured file.

    `lazy=True` (the daemon's start-up) reads only the version and its metadata now; the
    reference is read and prepared on first use (`Reference.ensure`), so a thousand
    models start in seconds and a model with no batch costs no preparation.
    """
    # The registry imports skops (and maybe MLflow): load it lazily.
    from watcher.registry_backend import describe, open_registry

    registry = open_registry(settings.registry)
    version = registry.production_version(name)
    if version is not None:
        info = registry.get(name, version)
        raw = info.extra.get("feature_importance")
        importance = (
            {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) and raw else None
        )
        loader = registry_loader(settings.registry, name, version)
        tag = reference_tag(version)
        if lazy:
            ref = later(name, cfg, tag, loader)
        else:  # the registry verifies the SHA-256 first
            ref = prepare(name, cfg, tag, registry.load_reference(name, version), load_frame=loader)
        return replace(ref, metrics=dict(info.metrics), importance=importance)
    elif cfg.reference is not None:
        if not cfg.reference.exists():
            raise ReferenceDataError(
                f"model {name}: reference file {cfg.reference} does not exist",
                hint="set models.<name>.reference to a Parquet/CSV file, or deploy a version",
            )
        digest = hashlib.sha256(cfg.reference.read_bytes()).hexdigest()[:12]
        tag = f"file-{digest}"
        loader = file_loader(cfg.reference, digest)
        if lazy:
            return later(name, cfg, tag, loader)
        return prepare(name, cfg, tag, read_table(cfg.reference), load_frame=loader)
    raise ReferenceDataError(
        f"model {name} has no reference: no production version in the registry "
        f"({describe(settings.registry)}) and no models.{name}.reference file",
        hint="bootstrap a first version or point `reference` at the training data",
    )


def later(name: str, cfg: ModelConfig, version: str, load_frame: FrameLoader) -> Reference:
    """A reference read and prepared on first use."""
    return Reference(
        version, load_frame, _Once(lambda: prepare_parts(name, cfg, version, load_frame()))
    )


def prepare(
    name: str,
    cfg: ModelConfig,
    version: str,
    frame: pd.DataFrame,
    *,
    load_frame: FrameLoader | None = None,
) -> Reference:
    """Prepare `frame` as model `name`'s reference now. Without `load_frame` (a reference
    built by hand, in tests) the frame is kept to be handed out again."""
    parts = prepare_parts(name, cfg, version, frame)
    if load_frame is None:
        kept = frame

        def load_frame() -> pd.DataFrame:
            return kept

    return Reference(version, load_frame, _Once(parts))


def prepare_parts(name: str, cfg: ModelConfig, version: str, frame: pd.DataFrame) -> Prepared:
    """Prepare `frame` as model `name`'s reference: what scoring and quality need of it."""
    specs, prediction = engine.specs_from_config(cfg)
    missing = [s.name for s in specs if s.name not in frame.columns]
    if missing:
        raise ReferenceDataError(
            f"model {name}: the reference ({version}) lacks feature column(s) {missing}",
            hint="the configured columns must exist in the reference data",
        )
    if prediction is not None and prediction.name not in frame.columns:
        prediction = None  # a first reference may predate predictions; score features only
    prepared = engine.prepare_reference(
        frame,
        specs,
        version=version,
        prediction=prediction,
        lean=True,
        num_stattest=cfg.drift.num_stattest,
        cat_stattest=cfg.drift.cat_stattest,
    )
    try:
        noise: NoiseLine | None = noise_line(
            prepared,
            frame,
            drift_share=cfg.drift.drift_share,
            num_stattest=cfg.drift.num_stattest,
            cat_stattest=cfg.drift.cat_stattest,
        )
    except Exception:  # a measurement for warnings must never stop a reference loading
        log.exception("model %s: could not measure the small-batch line of %s", name, version)
        noise = None
    if noise is not None and noise.rows:
        log.info(
            "model %s, reference %s (%d rows, %s): batches under %d rows show dataset drift "
            "by chance (false alarms by size: %s)",
            name,
            version,
            len(frame),
            "/".join(noise.tests),
            noise.rows,
            ", ".join(f"{n}: {a:.0%}" for n, a in noise.false_alarm.items()),
        )
    return Prepared(prepared, profile_reference(frame, cfg.columns, prepared.samples), noise)
