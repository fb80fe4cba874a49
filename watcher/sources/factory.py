"""The concrete source a model's `[models.<name>.source]` names."""

from __future__ import annotations

from watcher.config import ModelConfig
from watcher.errors import ConfigError
from watcher.metrics import Metrics
from watcher.sources.base import Source
from watcher.sources.directory import DirectorySource
from watcher.state import StateStore


def build_source(name: str, cfg: ModelConfig, store: StateStore, metrics: Metrics) -> Source:
    """A folder or a SQL table; the SQL drivers are imported only when a model reads one."""
    if cfg.source.kind == "directory":
        return DirectorySource(name, cfg.source, store, metrics)
    try:
        from watcher.sources.sql.source import SqlSource  # SQLAlchemy: sql sources only
    except ImportError as exc:
        raise ConfigError(
            f"model {name!r} reads a sql source, but its drivers are not installed ({exc})",
            hint="pip install 'watcher-drift[sql]'",
        ) from exc

    return SqlSource(name, cfg.source, cfg.columns, store, metrics)
