"""RetrainRequest: one definition of the DAG run's conf for the pipeline, `watcher trigger`
and the DAG's params."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from watcher.errors import ConfigError
from watcher.retrain.request import RetrainRequest


def test_a_manual_request_sends_what_watcher_trigger_always_sent() -> None:
    conf = RetrainRequest("bikes", reason="new labels", manual=True).to_conf()
    assert conf == {"model": "bikes", "reason": "new labels", "batches": [], "manual": True}
    assert RetrainRequest.from_conf(conf) == RetrainRequest("bikes", "new labels", manual=True)


def test_a_daemon_request_round_trips_through_json_fields() -> None:
    request = RetrainRequest(
        model="bikes",
        reason="dataset drift in 2 consecutive batches (threshold 2)",
        reason_kind="drift_persisting",
        signal={"signal": "drift", "value": 2.0},
        batches=["b1", "b2"],
        window={"from": 1.0, "to": 2.0, "source_window": None},
        drift={"drift_share": 0.5, "features": []},
        reference_version="file-3",
        data={"source_kind": "directory", "batches_path": "/x", "labels_path": None},
    )
    conf = request.to_conf()
    assert "margin" not in conf  # left at its default
    assert "manual" not in conf
    assert RetrainRequest.from_conf(conf) == request


def test_the_dag_params_are_the_fields_with_their_defaults() -> None:
    schema = RetrainRequest.params_schema("bikes")
    assert schema["model"] == {
        "default": "bikes",
        "type": "string",
        "description": "the model to retrain",
        "enum": ["bikes"],
    }
    assert schema["batches"]["items"] == {"type": "string"}
    # The DAG's params (every field, defaults included) read back as the default request.
    params = {name: spec["default"] for name, spec in schema.items()}
    assert RetrainRequest.from_conf(params) == RetrainRequest("bikes")


def test_window_end_falls_back_to_the_sql_drift_window() -> None:
    end = "2011-03-01T00:00:00+00:00"
    r = RetrainRequest("m", window={"source_window": ["2011-02-28T00:00:00+00:00", end]})
    assert r.window_end_time == datetime(2011, 3, 1, tzinfo=UTC)
    assert RetrainRequest("m", window_end=end, window=None).window_end_time == r.window_end_time
    assert RetrainRequest("m").window_end_time is None


@pytest.mark.parametrize(
    ("conf", "says"),
    [
        ({"reason": "x"}, "names no model"),
        ({"model": "m", "batches": "b1"}, "'batches' is str"),
        ({"model": "m", "batches": [1]}, "'batches' must list strings"),
        ({"model": "m", "margin": "0.1"}, "'margin' is str"),
        ({"model": "m", "manual": "yes"}, "'manual' is str"),
        ({"model": "m", "window_end": "last tuesday"}, "not an ISO time"),
    ],
)
def test_a_conf_that_does_not_fit_is_a_clear_error(conf: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        RetrainRequest.from_conf(conf)


def test_unknown_fields_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    assert RetrainRequest.from_conf({"model": "m", "marker": 1}) == RetrainRequest("m")
    assert "marker" in caplog.text
