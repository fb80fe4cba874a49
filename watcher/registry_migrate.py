"""Copy a file registry's versions into the configured (MLflow) registry.

Every version is read through the file registry's checks (SHA-256, skops allowlist) and
registered again in the target, oldest first, so the target numbers them in the same order;
the version that was in production gets the target's production pointer (the `champion`
alias). A version copied before is recognised by `extra.migrated_from` and skipped, so the
command can be rerun after a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from watcher.registry import ModelRegistry
from watcher.registry_backend import Registry


@dataclass(frozen=True)
class Copied:
    model: str
    source_version: str
    target_version: str
    skipped: bool  # already copied by an earlier migration


def migrate(
    source: ModelRegistry, target: Registry, models: list[str] | None = None
) -> list[Copied]:
    """Copy every version of `models` (default: all in the source); returns what happened."""
    done: list[Copied] = []
    for model in models or source.models():
        already = {
            str(v.extra.get("migrated_from")): v.version
            for v in target.list_versions(model)
            if v.extra.get("migrated_from")
        }
        mapping: dict[str, str] = {}
        for info in source.list_versions(model):
            key = f"{source.root.resolve()}#{model}#{info.version}"
            if key in already:
                mapping[info.version] = already[key]
                done.append(Copied(model, info.version, already[key], True))
                continue
            new = target.register(
                model,
                estimator=source.load_model(model, info.version),
                reference=source.load_reference(model, info.version),
                metrics=info.metrics,
                features=info.features,
                params=info.params,
                run_id=info.run_id,
                extra={**info.extra, "migrated_from": key},
                training_window=info.training_window,
            )
            mapping[info.version] = new.version
            done.append(Copied(model, info.version, new.version, False))
        production = source.production_version(model)
        if production in mapping and target.production_version(model) != mapping[production]:
            target.promote(model, mapping[production], reason=f"migrated from {source.root}")
    return done
