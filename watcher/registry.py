"""The model registry shared by the retraining DAG (writes) and the daemon (reads).

A plain folder, so that the DAG's workers and the daemon only need a shared volume:

    <root>/<model>/versions/0001/model.skops        the estimator, saved with skops
                                 reference.parquet  training data: the next drift reference
                                 metadata.json      metrics, features, params, SHA-256 of each
    <root>/<model>/PRODUCTION                       the production version ("3"), one line
    <root>/<model>/promotions.jsonl                 every pointer switch, for rollback
    <root>/<model>/runs/<run_id>.json               what each retraining run decided

Versions are written into a hidden temporary folder and renamed into place, and the
pointer is switched with write-temp + `os.replace`, so a reader never sees half a version
or half a pointer. Every artifact is checked against its recorded SHA-256 before it is
loaded, and models are loaded with skops restricted to an allowlist of types, so a
registry folder cannot make the daemon run arbitrary code.

Size: the file backend's reading, writing and run records share its folder layout and
atomic renames; the value types (`Artifact`, `VersionInfo`), also used by the MLflow backend, are
the part to move to `registry_backend` when it is next split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from watcher.config import MODEL_NAME
from watcher.errors import ChecksumMismatch, RegistryError
from watcher.fileio import safe_file_name, write_atomic, write_text_atomic
from watcher.registry_backend import roll_back

METADATA = "metadata.json"
MODEL_FILE = "model.skops"
REFERENCE_FILE = "reference.parquet"
_FORMAT = 1

# Types skops does not trust by default that our training code produces. Anything else in a
# model file is refused: a registry folder must never be able to run code in the daemon.
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "numpy.dtype",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.tree._tree.Tree",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.MultinomialLogit",
        "watcher.retrain.features.CategoryText",
        "watcher.retrain.features.OutlierClipper",
    }
)

_MODEL_NAME = MODEL_NAME  # the config's rule, so check-config refuses what this refuses


@dataclass(frozen=True)
class Artifact:
    """One file of a version, relative to the version folder, and its SHA-256."""

    path: str
    sha256: str
    bytes: int = 0


@dataclass(frozen=True)
class VersionInfo:
    """Metadata of one registered version (what `metadata.json` holds)."""

    model: str
    version: str
    created_at: datetime
    run_id: str | None
    metrics: dict[str, float]
    features: list[str]
    params: dict[str, Any]
    artifacts: dict[str, Artifact]
    training_window: tuple[datetime, datetime] | None = None
    training_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path = Path()

    def to_json(self) -> dict[str, Any]:
        window = self.training_window
        return {
            "format": _FORMAT,
            "model": self.model,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "run_id": self.run_id,
            "metrics": self.metrics,
            "features": self.features,
            "params": self.params,
            "artifacts": {
                name: {"path": a.path, "sha256": a.sha256, "bytes": a.bytes}
                for name, a in self.artifacts.items()
            },
            "training_window": (
                {"start": window[0].isoformat(), "end": window[1].isoformat()} if window else None
            ),
            "training_rows": self.training_rows,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> VersionInfo:
        window = data.get("training_window")
        return cls(
            model=str(data["model"]),
            version=str(data["version"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            run_id=data.get("run_id"),
            metrics={k: float(v) for k, v in data.get("metrics", {}).items()},
            features=list(data.get("features", [])),
            params=dict(data.get("params", {})),
            artifacts={
                name: Artifact(str(a["path"]), str(a["sha256"]), int(a.get("bytes", 0)))
                for name, a in data["artifacts"].items()
            },
            training_window=(
                (datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"]))
                if window
                else None
            ),
            training_rows=int(data.get("training_rows", 0)),
            extra=dict(data.get("extra", {})),
            path=path,
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalize_version(version: str | int) -> str:
    """'0003', 'v3', 3 → '3' (the canonical form used in metadata, metrics and the CLI)."""
    text = str(version).strip().lower().removeprefix("v")
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(
            f"{version!r} is not a version number",
            hint="versions are 1, 2, 3 ... (see `watcher models`)",
        )
    return str(int(text))


def save_model(estimator: Any, path: Path) -> None:
    """Save with skops (no pickle), atomically."""
    import skops.io as sio

    with _quiet_skops():
        write_atomic(path, lambda tmp: sio.dump(estimator, tmp))


def load_trusted_model(path: Path) -> Any:
    """Load a skops file allowing only `TRUSTED_TYPES` beyond skops' own safe set."""
    import skops.io as sio  # heavy; readers of metadata only should not pay for it

    with _quiet_skops():
        try:
            untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
        except Exception as exc:  # not a skops zip (a renamed pickle, a truncated file)
            raise RegistryError(
                f"{path} is not a skops model file ({type(exc).__name__}: {exc}); "
                "refusing to load it",
                hint="only models saved by watcher's retraining steps can be loaded",
            ) from exc
        if untrusted:
            raise RegistryError(
                f"{path} holds types watcher does not trust: {untrusted}; refusing to load it",
                hint="only models built by watcher's retraining steps can be loaded",
            )
        try:
            return sio.load(path, trusted=sorted(TRUSTED_TYPES))
        except Exception as exc:
            raise RegistryError(
                f"{path} cannot be loaded: {type(exc).__name__}: {exc}",
                hint="restore the file, or roll back to another version",
            ) from exc


@contextlib.contextmanager
def _quiet_skops() -> Iterator[None]:
    """skops looks up objects without `__module__` by scanning every loaded module; inside
    an Airflow worker that touches Airflow's deprecated aliases and logs ~1,000 warnings
    per save or load, none about our code."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"skops\.io\._utils")
        yield


def _json_default(value: Any) -> Any:
    # numpy scalars and timestamps turn up in params and metrics.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in registry metadata")


class ModelRegistry:
    """Versions of each model under one root folder, with an atomically switched pointer."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ---- reading ---------------------------------------------------------------------

    def _model_dir(self, model: str) -> Path:
        if not _MODEL_NAME.match(model):
            raise RegistryError(f"{model!r} is not a valid model name")
        return self.root / model

    def _version_dir(self, model: str, version: str | int) -> Path:
        return self._model_dir(model) / "versions" / f"{int(normalize_version(version)):04d}"

    def production_version(self, model: str) -> str | None:
        """The version in production, or None. Cheap: reads one small file."""
        pointer = self._model_dir(model) / "PRODUCTION"
        try:
            text = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"cannot read {pointer}: {exc}") from exc
        try:
            return normalize_version(text) if text else None
        except RegistryError as exc:
            raise RegistryError(
                f"{pointer} holds {text[:40]!r}, which is not a version number",
                hint=f"run `watcher rollback {model} --to VERSION` to write a valid pointer",
            ) from exc

    def get(self, model: str, version: str) -> VersionInfo:
        """Metadata of one version; RegistryError if it does not exist."""
        vdir = self._version_dir(model, version)
        meta = vdir / METADATA
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            known = ", ".join(v.version for v in self.list_versions(model)) or "none"
            raise RegistryError(
                f"model {model} has no version {normalize_version(version)} in {self.root}",
                hint=f"known versions: {known}",
            ) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{meta} is not valid JSON: {exc}") from exc
        try:
            return VersionInfo.from_json(data, vdir)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RegistryError(
                f"{meta} is damaged: {type(exc).__name__}: {exc}",
                hint="restore it from a backup, or roll back to another version",
            ) from exc

    def list_versions(self, model: str) -> list[VersionInfo]:
        """Every complete version of a model, oldest first."""
        vroot = self._model_dir(model) / "versions"
        if not vroot.is_dir():
            return []
        found = [
            p
            for p in vroot.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / METADATA).exists()
        ]
        versions = []
        for p in sorted(found, key=lambda p: int(p.name)):
            # A version whose metadata is damaged cannot be used; it must not hide the rest
            # (nor keep the DAG from registering the next one).
            with contextlib.suppress(RegistryError):
                versions.append(self.get(model, p.name))
        return versions

    def models(self) -> list[str]:
        """Names of the models that have a folder in the registry."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and _MODEL_NAME.match(p.name)
        )

    def find_run(self, model: str, run_id: str) -> VersionInfo | None:
        """The version a run registered, if any (makes deploy idempotent per run)."""
        for info in self.list_versions(model):
            if info.run_id == run_id:
                return info
        return None

    def verify(self, model: str, version: str) -> VersionInfo:
        """Check every artifact of a version against its SHA-256; raise ChecksumMismatch."""
        info = self.get(model, version)
        for name in info.artifacts:
            self._verified_path(info, name)
        return info

    def _verified_path(self, info: VersionInfo, name: str) -> Path:
        art = info.artifacts.get(name)
        if art is None:
            raise RegistryError(f"model {info.model} version {info.version} has no {name} artifact")
        path = info.path / art.path
        # The metadata names files inside its own version folder, nothing else.
        if not path.resolve().is_relative_to(info.path.resolve()):
            raise RegistryError(
                f"model {info.model} version {info.version}: artifact path {art.path!r} "
                "points outside the version folder; refusing to load it",
                hint="the metadata was edited by hand or damaged; restore it",
            )
        if not path.is_file():
            raise RegistryError(
                f"model {info.model} version {info.version}: artifact {path} is missing",
                hint="restore it from a backup, or roll back to another version",
            )
        actual = sha256_file(path)
        if actual != art.sha256:
            raise ChecksumMismatch(
                f"model {info.model} version {info.version}: {path} has SHA-256 {actual[:16]}…, "
                f"but {art.sha256[:16]}… was recorded when it was registered; refusing to load it",
                hint="the file was changed or damaged after deployment; restore it, or run "
                f"`watcher rollback {info.model}` to switch production to another version",
            )
        return path

    def load_reference(self, model: str, version: str) -> pd.DataFrame:
        """The version's training data (the drift reference), checksum verified first."""
        info = self.get(model, version)
        path = self._verified_path(info, "reference")
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for files that are not Parquet
            raise RegistryError(
                f"model {model} version {info.version}: {path} is not a readable Parquet "
                f"file ({type(exc).__name__}: {exc})",
                hint="restore it, or roll back to another version",
            ) from exc

    def load_model(self, model: str, version: str) -> Any:
        """The estimator, checksum verified, loaded by skops with allowlisted types only."""
        info = self.get(model, version)
        path = self._verified_path(info, "model")
        try:
            return load_trusted_model(path)
        except RegistryError as exc:
            raise RegistryError(
                f"model {model} version {info.version}: {exc}", hint=exc.hint
            ) from exc

    # ---- writing ---------------------------------------------------------------------

    def register(
        self,
        model: str,
        *,
        estimator: Any,
        reference: pd.DataFrame,
        metrics: dict[str, Any],
        features: list[str],
        params: dict[str, Any],
        run_id: str | None,
        extra: dict[str, Any] | None = None,
        training_window: tuple[datetime, datetime] | None = None,
    ) -> VersionInfo:
        """Store a new version (not yet in production). Atomic: written aside, then renamed."""
        vroot = self._model_dir(model) / "versions"
        vroot.mkdir(parents=True, exist_ok=True)
        tmp = vroot / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            save_model(estimator, tmp / MODEL_FILE)
            reference.to_parquet(tmp / REFERENCE_FILE, index=False)
            artifacts = {
                name: Artifact(fname, sha256_file(tmp / fname), (tmp / fname).stat().st_size)
                for name, fname in (("model", MODEL_FILE), ("reference", REFERENCE_FILE))
            }
            # Every numbered folder counts, damaged or not: a number is never reused.
            number = max((int(p.name) for p in vroot.iterdir() if p.name.isdigit()), default=0) + 1
            while True:
                info = VersionInfo(
                    model=model,
                    version=str(number),
                    created_at=datetime.now(UTC),
                    run_id=run_id,
                    metrics={k: float(v) for k, v in metrics.items()},
                    features=list(features),
                    params=dict(params),
                    artifacts=artifacts,
                    training_window=training_window,
                    training_rows=len(reference),
                    extra=dict(extra or {}),
                    path=vroot / f"{number:04d}",
                )
                text = json.dumps(info.to_json(), indent=2, default=_json_default)
                write_text_atomic(tmp / METADATA, text, fsync=True)
                try:
                    # Renaming onto an existing (non-empty) version fails: another writer won
                    # that number, so take the next one.
                    os.rename(tmp, info.path)
                except OSError:
                    if not info.path.exists():
                        raise
                    number += 1
                    continue
                return info
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def promote(self, model: str, version: str, *, reason: str = "promote") -> None:
        """Make a version the production one. Verifies its artifacts; atomic pointer switch."""
        info = self.verify(model, version)
        mdir = self._model_dir(model)
        previous = self.production_version(model)
        write_text_atomic(mdir / "PRODUCTION", info.version + "\n", fsync=True)
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "version": info.version,
            "previous": previous,
            "reason": reason,
        }
        with (mdir / "promotions.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def promotions(self, model: str) -> list[dict[str, Any]]:
        """The pointer's history, oldest first."""
        path = self._model_dir(model) / "promotions.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def rollback(self, model: str, to: str | None = None) -> str:
        """Switch production back: to `to`, or to the version that was in production before."""
        return roll_back(self, model, {v.version for v in self.list_versions(model)}, to)

    def prune(self, model: str, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions; never the production one."""
        if keep < 1:
            raise RegistryError(f"keep must be at least 1, got {keep}")
        current = self.production_version(model)
        versions = [v.version for v in self.list_versions(model)]
        kept = set(versions[-keep:]) | ({current} if current else set())
        removed: list[str] = []
        for version in versions:
            if version in kept:
                continue
            vdir = self._version_dir(model, version)
            # Rename first so a half-deleted folder never looks like a version.
            trash = vdir.with_name(f".trash-{vdir.name}-{uuid.uuid4().hex[:8]}")
            os.rename(vdir, trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(version)
        return removed

    # ---- what retraining runs decided -------------------------------------------------

    def record_run(self, model: str, run_id: str, record: Mapping[str, Any]) -> Path:
        """Keep a retraining run's decision (deployed or not, and why) next to the versions."""
        rdir = self._model_dir(model) / "runs"
        rdir.mkdir(parents=True, exist_ok=True)
        path = rdir / f"{safe_file_name(run_id)}.json"
        write_text_atomic(
            path, json.dumps(dict(record), indent=2, default=_json_default), fsync=True
        )
        return path

    def run_record(self, model: str, run_id: str) -> dict[str, Any] | None:
        """What `record_run` stored for a run, or None."""
        path = self._model_dir(model) / "runs" / f"{safe_file_name(run_id)}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data
