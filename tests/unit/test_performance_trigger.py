"""The policy's second decision point: labels arrive, the production model's loss on each
labelled period is recorded, and the policy decides again, in one transaction with the
trigger it causes. Real files, the real pipeline and state store; Airflow's side (the
outbox delivering the trigger) is tested in test_daemon_airflow.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from performance_support import Loop, config, labelled, make_loop
from support import drop

from watcher.policy import run_id_for


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    made = make_loop(config(tmp_path))
    yield made
    made.store.close()


def test_concept_drift_triggers_once_on_the_labels_and_a_steady_loss_never(loop: Loop) -> None:
    for i in range(6):  # the loss holds steady: nothing fires
        loop.period(i)
    assert [o for _, o, _ in loop.decisions()] == ["no_trigger"] * 6
    assert loop.triggers() == []
    # No data drift either: same inputs throughout.
    assert not any(b.dataset_drift for b in loop.store.recent_batches("m", 100))

    loop.period(6, shift=3.0)  # same inputs, the target moved: the loss triples
    point, outcome, signal = loop.decisions()[-1]
    assert (point, outcome, signal) == ("labels:labels-06.csv", "triggered", "performance")
    [trigger] = loop.triggers()
    assert trigger["key"] == run_id_for("m", "labels:labels-06.csv")
    conf = trigger["payload"]["conf"]
    assert conf["reason_kind"] == "performance_degraded"
    assert conf["reason"].startswith("performance: loss ")
    assert conf["signal"]["signal"] == "performance"
    assert conf["signal"]["numbers"]["excess"] > 1.0  # the loss more than doubled
    assert "vs" in trigger["payload"]["note"]  # the run's note carries the numbers
    [mail] = [
        i["payload"] for i in loop.store.outbox_items("m") if i["key"].startswith("triggered:")
    ]
    assert mail["details"]["reason_kind"] == "performance_degraded"
    assert mail["details"]["performance_excess"] == conf["signal"]["numbers"]["excess"]

    # Still degraded: the run is pending in the outbox, so the next labels are suppressed.
    loop.period(7, shift=3.0)
    assert loop.decisions()[-1][1] == "suppressed_active_run"
    assert len(loop.triggers()) == 1

    # Every decision kept its readings; the gauges say the same.
    [last] = loop.store.decisions("m", 1)
    perf = next(r for r in last.readings if r["signal"] == "performance")
    assert perf["fired"] is True
    value = loop.metrics.registry.get_sample_value(
        "watcher_trigger_signal_value", {"model": "m", "signal": "performance"}
    )
    assert value == pytest.approx(perf["value"])
    assert loop.metrics.registry.get_sample_value(
        "watcher_trigger_signal_threshold", {"model": "m", "signal": "performance"}
    ) == pytest.approx(0.5)


def test_labels_read_once_and_history_restarts_at_a_deployment(loop: Loop) -> None:
    for i in range(3):
        loop.period(i)
    with loop.store.transaction() as conn:
        periods = loop.store.label_periods(conn, "m", loop.rt.reference.version)
    assert [p.period for p in periods] == [f"labels-{i:02d}.csv" for i in range(3)]
    assert all(p.metric == "mae" and p.rows == 200 for p in periods)
    assert loop.pipeline.on_labels(loop.rt) is None  # nothing new: no decision
    assert len(loop.decisions()) == 3

    # A new production version: its history is empty, and its age counts from now.
    loop.store.set_reference_version("m", "v2")
    loop.rt.reference = replace(loop.rt.reference, version="v2", metrics={"mae": 0.8})
    with loop.store.transaction() as conn:
        assert loop.store.label_periods(conn, "m", "v2") == []
        reading = loop.pipeline.performance_reading(conn, loop.rt)
        assert loop.store.batches_served(conn, "m", "v2") == 0
    assert reading is not None
    assert not reading.fired
    assert reading.reason == "no labelled period of 30+ rows since deployment"


def test_max_age_triggers_by_batches_served(tmp_path: Path) -> None:
    loop = make_loop(config(tmp_path, triggers=["max_age"], max_age_batches=3))
    store = loop.store
    try:
        outcomes = []
        for i in range(3):
            loop.period(i)
            outcomes.append(store.decisions("m", 1, batch_id=f"b{i:02d}.parquet")[0].outcome)
        assert outcomes == ["no_trigger", "no_trigger", "triggered"]
        [trigger] = loop.triggers()
        assert trigger["payload"]["conf"]["reason_kind"] == "max_age"
        assert "3 batch(es) since deployment (max 3)" in trigger["payload"]["note"]
        readings = json.dumps(store.decisions("m", 1, batch_id="b02.parquet")[0].readings)
        assert '"max_age"' in readings

        # The run ended (delivered, nothing deployed: the same version serves on). The
        # schedule counts from that trigger: another 3 batches before the next one.
        for item in loop.store.outbox_items("m", status="pending"):
            loop.store.mark_done(item["id"])
        for i in range(3, 6):
            loop.period(i)
            outcomes.append(store.decisions("m", 1, batch_id=f"b{i:02d}.parquet")[0].outcome)
        assert outcomes[3:] == ["no_trigger", "no_trigger", "triggered"]
        assert len(loop.triggers()) == 2
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["pvalue", "warn"])
def test_small_batches_against_a_large_reference_are_said_and_scored_honestly(
    tmp_path: Path, mode: str
) -> None:
    """1,500 reference rows: evidently's rule picks wasserstein/jensenshannon at 0.1, which
    60 unchanged rows exceed by chance. The daemon measures that line at load and says so;
    by default it scores such a batch with ks/chisquare."""
    # consecutive = 10: no incident opens, so no evidently report is rendered (seconds).
    loop = make_loop(
        config(tmp_path, reference_rows=1500, drift={"small_batches": mode}, consecutive=10)
    )
    try:
        noise = loop.rt.reference.noise
        assert noise is not None
        assert noise.rows > 60, noise
        for i in range(4):
            loop.period(i, rows=60)
        batches = loop.store.recent_batches("m", 10)
        for b in batches:
            assert b.result is not None
            note = b.result["small_batch"]
            assert note["rows"] == 60
            assert note["min_rows"] == noise.rows
            assert "a batch of 60 rows is too small for " in note["note"]
        tests = {c["stattest"] for b in batches for c in b.result["drift"]["columns"].values()}
        drifted = sum(bool(b.dataset_drift) for b in batches)
        if mode == "pvalue":
            assert tests <= {"ks", "chisquare"}
            assert drifted == 0  # nothing changed, nothing drifts
        else:
            assert tests == {"wasserstein", "jensenshannon"}
            assert drifted >= 3  # the noise the note warned about
        m = loop.metrics.registry
        assert m.get_sample_value("watcher_drift_batch_too_small", {"model": "m"}) == 1
        assert m.get_sample_value("watcher_drift_min_batch_rows", {"model": "m"}) == noise.rows
    finally:
        loop.store.close()


@pytest.mark.parametrize("weighted", [True, False])
def test_importance_weighting_ignores_drift_in_features_the_model_does_not_use(
    tmp_path: Path, weighted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    loop = make_loop(
        config(
            tmp_path,
            triggers=["drift"],
            consecutive=1,
            drift_signal={"importance_weighted": weighted},
        )
    )
    try:
        # The model leans on c; a, température and wind speed (3 of 5 features: dataset
        # drift at drift_share 0.5) are the ones that move.
        loop.rt.reference = replace(loop.rt.reference, importance={"c": 1.0, "a": 0.0})
        batch = labelled(300, seed=7, start_id=0).drop(columns=["y"])
        batch["a"] += 3.0
        batch["température"] += 1.0
        batch["wind speed"] *= 4.0
        drop(loop.tmp / "incoming", "moved.parquet", batch)
        asyncio.run(loop.rt.source.poll())
        [ref] = asyncio.run(loop.rt.source.poll())
        outcome = loop.pipeline.process(loop.rt, ref)
        assert outcome.drift is not None
        assert outcome.drift.dataset_drift  # evidently's verdict, mailed and exported, stays
        assert outcome.verdict is not None
        assert outcome.verdict.outcome == ("no_drift" if weighted else "triggered")

        # Without recorded importances the daemon counts unweighted, and says so once.
        loop.rt.reference = replace(loop.rt.reference, importance=None, version="v9")
        with caplog.at_level("WARNING"), loop.store.transaction() as conn:
            assert loop.pipeline._weighted_flags(conn, loop.rt) is None
            assert loop.pipeline._weighted_flags(conn, loop.rt) is None
        said = [r for r in caplog.records if "records no feature_importance" in r.getMessage()]
        assert len(said) == (1 if weighted else 0)
    finally:
        loop.store.close()
