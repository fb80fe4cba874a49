"""Data quality checks and drift scoring of batches against a model's reference.

`watcher.drift.engine` scores drift with evidently's tests (see its docstring for the
rules); `watcher.drift.stattests` holds the tests themselves; `watcher.drift.quality`
checks a batch before it is scored.
"""
