"""The model families' cached exposition: the bytes prometheus_client's encoders write for
the same values (text and OpenMetrics, `_created` on and off), brought up to date by every
write and removal, never by time; and a whole scrape that both parsers read back."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import (
    CollectorRegistry,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client import metrics as client_metrics
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from watcher.metrics import Metrics
from watcher.metrics_models import ModelFamilies, scrape

NASTY = ["plain", 'quo"te', "back\\slash", "new\nline", "ünï €"]


class _Only(Collector):
    """The model families alone, collected the way prometheus_client collects them."""

    def __init__(self, families: ModelFamilies) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return self.families.collect()


@pytest.fixture(params=[True, False], ids=["created", "no_created"])
def created(request: pytest.FixtureRequest) -> Iterator[bool]:
    was = client_metrics._use_created
    if request.param:
        enable_created_metrics()  # type: ignore[no-untyped-call]
    else:
        disable_created_metrics()  # type: ignore[no-untyped-call]
    yield bool(request.param)
    client_metrics._use_created = was


def _families() -> ModelFamilies:
    families = ModelFamilies(CollectorRegistry())
    gauge = families.gauge("t_gauge", 'A "gauge"\\ with\nnewline.', ("model", "version"))
    counter = families.counter("t_events", 'Events "by" kind\\.', ("model", "kind"))
    plain = families.gauge("t_plain", "One label.")
    families.counter("t_empty", "Never written.", ("model",))
    for i, model in enumerate(NASTY):
        gauge.labels(model, f"v{i}").set(i / 3)
        counter.labels(model, "a").inc(i)
        counter.labels(model, "b")  # exported at 0, as a prometheus_client Counter child
        plain.labels(model).set(float(10**i) * 1.5e6)
    plain.labels("inf").set(float("inf"))
    plain.labels("nan").set(float("nan"))
    return families


def _expected(families: ModelFamilies, openmetrics: bool) -> bytes:
    if openmetrics:
        return om_exposition.generate_latest(_Only(families)).removesuffix(b"# EOF\n")
    return generate_latest(_Only(families))


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_cached_text_is_prometheus_clients_text(created: bool, openmetrics: bool) -> None:
    families = _families()
    first = families.exposition(openmetrics=openmetrics).encode()
    assert first == _expected(families, openmetrics)
    assert (b"t_events_created{" in first) is created
    # Served from the cache (nothing written since): the same bytes again.
    assert families.exposition(openmetrics=openmetrics).encode() == first


def test_writes_and_removals_invalidate_the_cache(created: bool) -> None:
    families = _families()
    gauge, counter, plain = (f for f in families._families[:3])
    assert isinstance(gauge, type(plain))
    before = families.exposition(openmetrics=False)
    assert 't_plain{model="plain"} 1.5e+06\n' in before

    plain.labels("plain").set(42)  # type: ignore[union-attr]
    counter.labels("plain", "a").inc(2)  # type: ignore[union-attr]
    gauge.remove("plain", "v0")
    counter.remove('quo"te', "b")
    after = families.exposition(openmetrics=False)
    assert 't_plain{model="plain"} 42.0\n' in after
    assert 't_events_total{kind="a",model="plain"} 2.0\n' in after
    assert 't_gauge{model="plain",version="v0"}' not in after
    assert 't_events_total{kind="b",model="quo\\"te"}' not in after
    assert after.encode() == _expected(families, openmetrics=False)

    # Made again after its removal: back, with a new value (and its `_created` line).
    gauge.labels("plain", "v0").set(7)  # type: ignore[union-attr]
    counter.labels('quo"te', "b").inc()  # type: ignore[union-attr]
    for openmetrics in (False, True):
        text = families.exposition(openmetrics=openmetrics)
        assert 't_gauge{model="plain",version="v0"} 7.0\n' in text
        assert text.encode() == _expected(families, openmetrics)


def test_counter_refuses_a_negative_increment() -> None:
    families = ModelFamilies(CollectorRegistry())
    counter = families.counter("t_c", "A counter.", ("model",))
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("m").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("m", "extra")


def _filled_metrics() -> Metrics:
    m = Metrics()
    for i, model in enumerate(NASTY):
        m.init_model(model)
        m.set_model_version(model, f"v{i}")
        m.batches.labels(model, "scored").inc()
        m.dataset_drift_ratio.labels(model).set(i / 7)
        m.trigger_signal_value.labels(model, "drift").set(i)
        m.feature_drift_score.labels(model, "f", "wasserstein").set(0.25)
        m.batch_duration.labels(model, "drift").observe(0.02)
    return m


def _samples(text: str, openmetrics: bool) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parse = om_parse if openmetrics else text_string_to_metric_families
    found = {}
    for family in parse(text):
        if family.name.startswith("process_"):  # the process's own, read anew each time
            continue
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("text/plain; version=1.0.0", False),
        ("application/openmetrics-text; version=1.0.0", True),
    ],
)
def test_a_whole_scrape_reads_back_as_prometheus_clients(
    accept: str | None, openmetrics: bool
) -> None:
    m = _filled_metrics()
    headers, body = scrape(m.registry, m.model_families, accept, "gzip, deflate")
    assert ("Content-Encoding", "gzip") in headers
    text = gzip.decompress(body).decode()
    reference = (om_exposition.generate_latest if openmetrics else generate_latest)(m.registry)
    assert _samples(text, openmetrics) == _samples(reference.decode(), openmetrics)
    assert text.endswith("# EOF\n") is openmetrics
    assert text.count("# EOF") == int(openmetrics)
    content_type = dict(headers)["Content-Type"]
    assert content_type.startswith("application/openmetrics-text" if openmetrics else "text/plain")

    # A write right after a scrape is in the next one: no time-based staleness.
    m.dataset_drift_ratio.labels("plain").set(0.875)
    m.batches.labels("plain", "scored").inc()
    _, body = scrape(m.registry, m.model_families, accept, None)
    again = _samples(body.decode(), openmetrics)
    assert again[("watcher_dataset_drift_ratio", (("model", "plain"),))] == 0.875
    assert again[("watcher_batches_total", (("model", "plain"), ("outcome", "scored")))] == 2


def test_a_filtered_scrape_keeps_only_the_names_asked_for() -> None:
    m = _filled_metrics()
    _, body = scrape(m.registry, m.model_families, None, None, "name[]=watcher_dataset_drift_ratio")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert names == {"watcher_dataset_drift_ratio"}


def test_scrapes_during_writes_end_on_the_last_values() -> None:
    """Writers and two scraping threads at once: once the writers are done, a scrape shows
    every last value (no line lost between two scrapes sharing the dirty set)."""
    m = Metrics()
    models = [f"m{i}" for i in range(200)]
    stop = threading.Event()

    def scrape_loop() -> None:
        while not stop.is_set():
            scrape(m.registry, m.model_families, None, None)

    scrapers = [threading.Thread(target=scrape_loop) for _ in range(2)]
    for t in scrapers:
        t.start()
    try:
        for round_ in range(30):
            for model in models:
                m.dataset_drift_ratio.labels(model).set(round_)
                m.batches.labels(model, "scored").inc()
                if round_ % 7 == 3:
                    m.drift_streak.labels(model).set(round_)
                    m.drift_streak.remove(model)
    finally:
        stop.set()
        for t in scrapers:
            t.join()
    _, body = scrape(m.registry, m.model_families, None, None)
    got = _samples(body.decode(), openmetrics=False)
    assert got == _samples(generate_latest(m.registry).decode(), openmetrics=False)
    assert all(got[("watcher_dataset_drift_ratio", (("model", x),))] == 29 for x in models)
    assert all(
        got[("watcher_batches_total", (("model", x), ("outcome", "scored")))] == 30 for x in models
    )
    assert not [k for k in got if k[0] == "watcher_drift_streak"]


def test_a_counter_child_kept_across_a_removal_counts_again_from_zero() -> None:
    families = ModelFamilies(CollectorRegistry())
    counter = families.counter("t_c", "A counter.", ("model",))
    child = counter.labels("m")
    child.inc(3)
    counter.remove("m")
    assert "t_c_total{" not in families.exposition(openmetrics=False)
    child.inc()
    assert 't_c_total{model="m"} 1.0\n' in families.exposition(openmetrics=False)


def test_forgetting_a_model_drops_its_gauges_from_the_next_scrape_and_keeps_its_counters() -> None:
    """A replica that lost a model stops exporting its gauges (the new owner does)."""
    families = _families()
    before = families.exposition(openmetrics=False)
    assert 't_plain{model="plain"} 1.5e+06\n' in before
    families.forget("plain")
    after = families.exposition(openmetrics=False)
    assert 't_plain{model="plain"}' not in after
    assert 't_gauge{model="plain",version="v0"}' not in after
    assert 't_events_total{kind="a",model="plain"} 0.0\n' in after
    assert 't_plain{model="quo\\"te"}' in after  # the other models stay
    assert after.encode() == _expected(families, openmetrics=False)
