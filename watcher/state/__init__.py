"""The state package: see `watcher.state.store`."""

from watcher.state.core import StateUnavailable
from watcher.state.db import DB_ERRORS, StateConn
from watcher.state.leases import LeaseLost
from watcher.state.lock import StateDirLock, StateLocked
from watcher.state.migrate import StateSchemaError
from watcher.state.outbox import backoff
from watcher.state.records import (
    ACTIVE_RUN_STATES,
    Action,
    ActionKind,
    BatchRecord,
    BatchStatus,
    Decision,
    LabelPeriod,
    OutboxItem,
    RunRecord,
)
from watcher.state.store import Pruned, StateStore, open_state

__all__ = [
    "ACTIVE_RUN_STATES",
    "DB_ERRORS",
    "Action",
    "ActionKind",
    "BatchRecord",
    "BatchStatus",
    "Decision",
    "LabelPeriod",
    "LeaseLost",
    "OutboxItem",
    "Pruned",
    "RunRecord",
    "StateConn",
    "StateDirLock",
    "StateLocked",
    "StateSchemaError",
    "StateStore",
    "StateUnavailable",
    "backoff",
    "open_state",
]
