"""Gauges labelled by model, kept in plain dicts and rendered by one custom collector.

A daemon watching a thousand models exports fifteen of these per model. As prometheus_client
`Gauge` children each is an object with its own lock that a scrape walks, copies and
re-labels one by one; here a scrape reads one dict per family and hands prometheus_client
(`GaugeMetricFamily`, `generate_latest`) the finished label values: about a third less
Python work per series, which is what a scrape competes for with the scoring threads (the
GIL). The exposition itself is still prometheus_client's.

The setters keep `Gauge`'s shape (`gauge.labels(model, ...).set(value)`), so callers and
`registry.get_sample_value(...)` in tests do not see the difference.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _Child:
    __slots__ = ("_key", "_values")

    def __init__(self, values: dict[tuple[str, ...], float], key: tuple[str, ...]) -> None:
        self._values = values
        self._key = key

    def set(self, value: float) -> None:
        # One dict store: atomic under the GIL, so the scrape thread needs no lock.
        self._values[self._key] = float(value)


class ModelGauge:
    """One gauge family whose first label is `model` (by default its only one)."""

    def __init__(
        self, name: str, documentation: str, labelnames: tuple[str, ...] = ("model",)
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {}

    def labels(self, *values: str, **by_name: str) -> _Child:
        if by_name:
            values = tuple(by_name[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        # As Gauge.labels, which str()s its values.
        return _Child(self.values, tuple(str(v) for v in values))

    def remove(self, *values: str) -> None:
        self.values.pop(tuple(str(v) for v in values), None)

    def family(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        # list() copies the items in one C call: a model added meanwhile cannot break it.
        for key, value in list(self.values.items()):
            family.add_metric(key, value)
        return family


class ModelGauges(Collector):
    """The collector of every `ModelGauge` of one registry, in declaration order."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauges: list[ModelGauge] = []
        self._registry = registry
        registry.register(self)

    def gauge(
        self, name: str, documentation: str, labelnames: tuple[str, ...] = ("model",)
    ) -> ModelGauge:
        gauge = ModelGauge(name, documentation, labelnames)
        # Re-registering makes the registry see the new name (and refuse a duplicate).
        self._registry.unregister(self)
        self._gauges.append(gauge)
        self._registry.register(self)
        return gauge

    def forget(self, model: str) -> None:
        """Drop every series of `model` (a replica no longer owns it: the owner exports
        them now, and a stale copy here would read as a second, frozen truth)."""
        for gauge in self._gauges:
            for key in [k for k in list(gauge.values) if k[0] == model]:
                gauge.values.pop(key, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for gauge in self._gauges:
            yield gauge.family()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # The names, for the registry's duplicate check (no values needed).
        for gauge in self._gauges:
            yield GaugeMetricFamily(gauge.name, gauge.documentation, labels=list(gauge.labelnames))
