"""Gauges and counters labelled by model, kept in plain dicts, their exposition kept rendered.

A daemon watching a thousand models exports about sixteen series per model: some 16,000.
Rendering them all on every scrape, in Python, while the scoring thread holds the GIL, took
300-450 ms a scrape (issue 18's target is 250 ms). A model's values change once per batch,
so most lines of a scrape are the lines of the scrape before: each family keeps its sample
lines rendered, and a write marks its series dirty; a scrape renders only the dirty ones and
joins the rest (`ModelFamilies.exposition`). The cache is invalidated by the writes
themselves, never by time: a scrape made right after a batch shows that batch.

Everything else a scrape shows is still rendered by prometheus_client: `scrape` asks its
encoder (negotiated from `Accept`, as prometheus_client's handler does) for the rest of the
registry with these families left out (`ModelFamilies.left_out`) and appends these. The
lines are the ones prometheus_client's own encoders write for the same values, in the text
format and in OpenMetrics alike, `_created` series included when they are on
(tests/unit/test_metrics_models.py compares them byte for byte), and `registry.collect()` /
`get_sample_value(...)` still see every family through `ModelFamilies.collect`.

The writers keep prometheus_client's shape (`gauge.labels(model, ...).set(value)`,
`counter.labels(model, ...).inc()`), so callers do not see the difference.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, cast
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as _client_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Label values are escaped alike in both formats (backslash, newline, double quote);
# HELP text escapes the double quote only in OpenMetrics.
_LABEL_ESCAPES = str.maketrans({"\\": r"\\", "\n": r"\n", '"': r"\""})
_TEXT_HELP_ESCAPES = str.maketrans({"\\": r"\\", "\n": r"\n"})

Key = tuple[str, ...]
# The value as prometheus_client writes it ('1.5e+06', '+Inf', 'NaN'); unannotated upstream.
_number = cast(Callable[[float], str], floatToGoString)


def _created_on() -> bool:
    # prometheus_client's own switch (`disable_created_metrics()`, the environment's
    # PROMETHEUS_DISABLE_CREATED_SERIES), read at scrape time as its Counter reads it.
    return bool(getattr(_client_metrics, "_use_created", True))


class _Family:
    """The values of one family and their rendered lines."""

    kind: Literal["gauge", "counter"]

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.values: dict[Key, float] = {}
        # Keys written (or removed) since a scrape last rendered them: writers add, only a
        # scrape (under `ModelFamilies`'s render lock) takes out. A dict, not a set: new
        # series get their lines in the order they were written, as prometheus_client has
        # them.
        self._dirty: dict[Key, None] = {}
        self._lines: dict[Key, str] = {}  # key -> its rendered sample line(s)
        self._labels: dict[Key, str] = {}  # key -> '{model="..."}'
        # prometheus_client writes labels sorted by name.
        self._label_order = sorted(range(len(labelnames)), key=lambda i: labelnames[i])

    def _key(self, values: tuple[str, ...], by_name: dict[str, str]) -> Key:
        if by_name:
            values = tuple(by_name[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        return tuple(str(v) for v in values)  # as prometheus_client, which str()s them

    def remove(self, *values: str) -> None:
        key = tuple(str(v) for v in values)
        self.values.pop(key, None)
        self._dirty[key] = None  # after the pop: the next scrape drops its line

    def _label_text(self, key: Key) -> str:
        text = self._labels.get(key)
        if text is None:
            pairs = ",".join(
                f'{self.labelnames[i]}="{key[i].translate(_LABEL_ESCAPES)}"'
                for i in self._label_order
            )
            text = self._labels[key] = "{" + pairs + "}"
        return text

    def _store(self, key: Key, value: float) -> None:
        self._lines[key] = f"{self.name}{self._label_text(key)} {_number(value)}\n"

    def _forget(self, key: Key) -> None:
        self._lines.pop(key, None)
        self._labels.pop(key, None)

    def _refresh(self) -> None:
        """Render the lines written since the last scrape. Only under `ModelFamilies`'s
        render lock."""
        dirty = self._dirty
        if not dirty:
            return
        keys = []
        while dirty:  # popitem(): atomic, latest first; a key written again is added again
            keys.append(dirty.popitem()[0])
        # Each key is out of `dirty` before its value is read: a write after the read
        # marks it dirty again, for the next scrape.
        for key in reversed(keys):
            value = self.values.get(key)
            if value is None:  # removed
                self._forget(key)
            else:
                self._store(key, value)

    def render(self, openmetrics: bool) -> str:
        """The family's exposition text. Only under `ModelFamilies`'s render lock."""
        raise NotImplementedError

    def collect(self) -> Metric:
        raise NotImplementedError


def _help(documentation: str, openmetrics: bool) -> str:
    return documentation.translate(_LABEL_ESCAPES if openmetrics else _TEXT_HELP_ESCAPES)


class _GaugeChild:
    __slots__ = ("_dirty", "_key", "_values")

    def __init__(self, family: ModelGauge, key: Key) -> None:
        self._values = family.values
        self._dirty = family._dirty
        self._key = key

    def set(self, value: float) -> None:
        # Two single operations, each atomic under the GIL, in this order: a scrape that
        # takes the key out of `dirty` after it is marked reads this value or a later one.
        self._values[self._key] = float(value)
        self._dirty[self._key] = None


class ModelGauge(_Family):
    """One gauge family whose first label is `model` (by default its only one)."""

    kind = "gauge"

    def labels(self, *values: str, **by_name: str) -> _GaugeChild:
        return _GaugeChild(self, self._key(values, by_name))

    def render(self, openmetrics: bool) -> str:
        self._refresh()
        doc = _help(self.documentation, openmetrics)
        header = f"# HELP {self.name} {doc}\n# TYPE {self.name} gauge\n"
        return header + "".join(self._lines.values())

    def collect(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        # list() copies the items in one C call: a model added meanwhile cannot break it.
        for key, value in list(self.values.items()):
            family.add_metric(key, value)
        return family


class _CounterChild:
    __slots__ = ("_family", "_key")

    def __init__(self, family: ModelCounter, key: Key) -> None:
        self._family = family
        self._key = key

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        family = self._family
        # A read-modify-write: the lock keeps two writers of one series from losing a count.
        with family.lock:
            if self._key not in family.values:  # removed since `labels`: made again
                family.created[self._key] = time.time()
                family.values[self._key] = 0.0
            family.values[self._key] += amount
        family._dirty[self._key] = None


class ModelCounter(_Family):
    """One counter family whose first label is `model`, as prometheus_client's `Counter`:
    `name` without `_total`, a series exported at 0 from its first `labels(...)`, and a
    `_created` series beside it unless those are switched off."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        super().__init__(name, documentation, labelnames)
        self.lock = threading.Lock()
        self.created: dict[Key, float] = {}
        self._created_lines: dict[Key, str] = {}  # key -> its `_created` sample line

    def labels(self, *values: str, **by_name: str) -> _CounterChild:
        key = self._key(values, by_name)
        if key not in self.values:
            with self.lock:
                if key not in self.values:
                    self.created[key] = time.time()
                    self.values[key] = 0.0
                    self._dirty[key] = None
        return _CounterChild(self, key)

    def remove(self, *values: str) -> None:
        with self.lock:
            self.created.pop(tuple(str(v) for v in values), None)
            super().remove(*values)

    def _store(self, key: Key, value: float) -> None:
        # Both lines together: a series removed and made again gets its new `_created`.
        labels = self._label_text(key)
        self._lines[key] = f"{self.name}_total{labels} {_number(value)}\n"
        # 0.0 only if removed meanwhile: then its key is dirty again, and forgotten below.
        created = _number(self.created.get(key, 0.0))
        self._created_lines[key] = f"{self.name}_created{labels} {created}\n"

    def _forget(self, key: Key) -> None:
        super()._forget(key)
        self._created_lines.pop(key, None)

    def render(self, openmetrics: bool) -> str:
        self._refresh()
        doc = _help(self.documentation, openmetrics)
        name = self.name if openmetrics else f"{self.name}_total"
        header = f"# HELP {name} {doc}\n# TYPE {name} counter\n"
        lines, created = self._lines, self._created_lines
        if not (lines and _created_on()):
            return header + "".join(lines.values())
        if openmetrics:  # each `_created` right after its sample, as prometheus_client writes
            return header + "".join([lines[k] + created[k] for k in lines])
        # The text format has no `_created`: prometheus_client writes them as a gauge after
        # (none at all for a family without series).
        return (
            header
            + "".join(lines.values())
            + f"# HELP {self.name}_created {doc}\n# TYPE {self.name}_created gauge\n"
            + "".join(created.values())
        )

    def collect(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        created = _created_on()
        for key, value in list(self.values.items()):
            family.add_metric(key, value, created=self.created.get(key) if created else None)
        return family


class ModelFamilies(Collector):
    """The collector of every model family of one registry, in declaration order."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._families: list[_Family] = []
        self._registry = registry
        # Two scrapes at once must not split one dirty set between them (each would miss
        # the other's lines): rendering is one scrape at a time. Writers never take it.
        self._render_lock = threading.Lock()
        self._left_out = threading.local()
        registry.register(self)

    def _add(self, family: _Family) -> None:
        # Re-registering makes the registry see the new name (and refuse a duplicate).
        self._registry.unregister(self)
        self._families.append(family)
        self._registry.register(self)

    def gauge(
        self, name: str, documentation: str, labelnames: tuple[str, ...] = ("model",)
    ) -> ModelGauge:
        gauge = ModelGauge(name, documentation, labelnames)
        self._add(gauge)
        return gauge

    def counter(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> ModelCounter:
        counter = ModelCounter(name, documentation, labelnames)
        self._add(counter)
        return counter

    def forget(self, model: str) -> None:
        """Drop every gauge series of `model` (a replica no longer owns it: the owner
        exports them now, and a stale copy here would read as a second, frozen truth).
        Counters stay: summed across replicas, a rate never reads them as current."""
        for family in self._families:
            if family.kind == "gauge":
                for key in [k for k in list(family.values) if k[0] == model]:
                    family.remove(*key)

    def collect(self) -> Iterator[Metric]:
        if getattr(self._left_out, "active", False):
            return
        for family in self._families:
            yield family.collect()

    def describe(self) -> Iterator[Metric]:
        # The names, for the registry's duplicate check (no values needed).
        for family in self._families:
            kind = GaugeMetricFamily if family.kind == "gauge" else CounterMetricFamily
            yield kind(family.name, family.documentation, labels=list(family.labelnames))

    @contextmanager
    def left_out(self) -> Iterator[None]:
        """While inside, this thread's `registry.collect()` leaves these families out (the
        scrape renders them with `exposition`); other threads still see them."""
        self._left_out.active = True
        try:
            yield
        finally:
            self._left_out.active = False

    def exposition(self, *, openmetrics: bool) -> str:
        """Every family's text, as prometheus_client's encoder of that format writes it
        (without OpenMetrics' `# EOF`, which ends the whole scrape)."""
        with self._render_lock:
            return "".join([family.render(openmetrics) for family in self._families])


_EOF = b"# EOF\n"


def scrape(
    registry: CollectorRegistry,
    families: ModelFamilies,
    accept: str | None,
    accept_encoding: str | None,
    query: str = "",
) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and body of a /metrics answer, negotiated as prometheus_client's
    handler negotiates them (format from `Accept`, `?name[]=` filters, gzip when
    `Accept-Encoding` allows), with the model families' text from their cache."""
    encoder, content_type = choose_encoder(accept or "")
    names = parse_qs(query).get("name[]")
    if names:  # a filtered scrape (rare): prometheus_client's path, every family collected
        body = encoder(registry.restricted_registry(names))
    else:
        openmetrics = content_type.startswith("application/openmetrics-text")
        with families.left_out():
            rest = encoder(registry)
        models = families.exposition(openmetrics=openmetrics).encode()
        end = _EOF if openmetrics else b""  # the model families go before the terminator
        body = rest.removesuffix(end) + models + end
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding or ""):
        # Level 1, not gzip's default 9: 1 MB of exposition takes ~2 ms instead of ~85 ms
        # here, for ~10 % more bytes on the wire (66 KB instead of 59 KB for 1,000 models).
        body = gzip.compress(body, compresslevel=1)
        headers.append(("Content-Encoding", "gzip"))
    return headers, body
