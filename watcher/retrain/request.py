"""What a retraining run is asked to do: the DAG run's conf, as one typed value.

Three places speak it: the pipeline (a policy decision), `watcher trigger` (by hand) and
the retraining DAG (its params, and what its tasks read). They all go through
`RetrainRequest`: `to_conf` is what is sent, `from_conf` what is read back (with a clear
error for a conf that does not fit), and `params_schema` the DAG's params, so a field added
here reaches all three.

The daemon fills model, reason, reason_kind, signal, batches, window, drift,
reference_version and data; people triggering by hand (the Airflow UI, `watcher trigger`)
may add data_uris, window_end and margin.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from watcher.errors import ConfigError

log = logging.getLogger(__name__)

# A field's JSON type in the DAG's params, and what it means.
_SCHEMA: dict[str, tuple[Any, str]] = {
    "model": ("string", "the model to retrain"),
    "reason": ("string", "why this run was started"),
    "reason_kind": (
        ["null", "string"],
        "the signal that fired: drift_persisting, performance_degraded, max_age",
    ),
    "signal": (["null", "object"], "its reading (daemon)"),
    "batches": ("array", "batch ids that drifted"),
    "data_uris": ("array", "extra batch files to use"),
    "window_end": (["null", "string"], "ISO time: ignore rows after it (default: the newest row)"),
    "margin": (["null", "number"], "override retrain.margin for this run"),
    "window": (["null", "object"], "drift window (daemon)"),
    "drift": (["null", "object"], "drift summary (daemon)"),
    "reference_version": (["null", "string"], "the reference the drift was measured against"),
    "data": (["null", "object"], "where the data is (daemon)"),
    "manual": ("boolean", "started by hand (watcher trigger)"),
}
# Sent even when empty: what every run is about.
_ALWAYS = ("model", "reason", "batches")


@dataclass(frozen=True)
class RetrainRequest:
    model: str
    reason: str = "manual"
    reason_kind: str | None = None  # the signal that fired (`watcher.policy.REASON_KIND`)
    signal: dict[str, Any] | None = None
    batches: list[str] = field(default_factory=list)
    data_uris: list[str] = field(default_factory=list)
    window_end: str | None = None
    margin: float | None = None
    window: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    reference_version: str | None = None
    data: dict[str, Any] | None = None
    manual: bool = False

    def __post_init__(self) -> None:
        _check(self)

    def to_conf(self) -> dict[str, Any]:
        """The DAG run's conf (JSON): the fields that say something, in a stable order."""
        return {k: v for k, v in asdict(self).items() if k in _ALWAYS or v not in (None, [], False)}

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> RetrainRequest:
        """Read a conf (or the DAG's params) back; ConfigError says what does not fit.
        Unknown fields (a newer sender's) are logged and left out, not fatal."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(conf) - known)
        if unknown:
            log.warning("retrain request: ignoring unknown field(s) %s", unknown)
        if not isinstance(conf.get("model"), str):
            raise ConfigError("retrain request names no model (conf field 'model')")
        values = {k: conf[k] for k in known if k in conf and conf[k] is not None}
        return cls(**values)

    @property
    def window_end_time(self) -> datetime | None:
        """The end of the training window: `window_end`, else a SQL source's drift window's
        end (from the daemon), else None (the newest row)."""
        source_window = (self.window or {}).get("source_window") or [None, None]
        end = self.window_end or source_window[-1]
        return datetime.fromisoformat(end) if end else None

    @staticmethod
    def params_schema(model: str) -> dict[str, dict[str, Any]]:
        """Each field's default and JSON schema: the DAG's params (`airflow.sdk.Param`)."""
        out: dict[str, dict[str, Any]] = {}
        defaults = asdict(RetrainRequest(model))
        for name, (json_type, description) in _SCHEMA.items():
            spec: dict[str, Any] = {
                "default": defaults[name],
                "type": json_type,
                "description": description,
            }
            if json_type == "array":
                spec["items"] = {"type": "string"}
            out[name] = spec
        out["model"]["enum"] = [model]
        return out


_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "reason": (str,),
    "reason_kind": (str, type(None)),
    "signal": (dict, type(None)),
    "batches": (list,),
    "data_uris": (list,),
    "window_end": (str, type(None)),
    "margin": (int, float, type(None)),
    "window": (dict, type(None)),
    "drift": (dict, type(None)),
    "reference_version": (str, type(None)),
    "data": (dict, type(None)),
    "manual": (bool,),
}


def _check(r: RetrainRequest) -> None:
    for name, types in _TYPES.items():
        value = getattr(r, name)
        bad_bool = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or bad_bool:
            raise ConfigError(
                f"retrain request field {name!r} is {type(value).__name__}: {value!r:.80}",
                hint=f"{name}: {_SCHEMA[name][1]} ({_SCHEMA[name][0]})",
            )
    for name in ("batches", "data_uris"):
        if not all(isinstance(v, str) for v in getattr(r, name)):
            raise ConfigError(f"retrain request field {name!r} must list strings")
    if not r.model:
        raise ConfigError("retrain request names no model (conf field 'model')")
    if r.window_end is not None:
        try:
            datetime.fromisoformat(r.window_end)
        except ValueError as exc:
            raise ConfigError(
                f"retrain request window_end {r.window_end!r} is not an ISO time",
                hint="e.g. 2011-06-30T00:00:00+00:00",
            ) from exc
