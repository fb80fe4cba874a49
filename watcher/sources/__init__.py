"""Where batches come from: one protocol, interchangeable implementations."""

from watcher.sources.base import BatchRef, Source

__all__ = ["BatchRef", "Source"]
