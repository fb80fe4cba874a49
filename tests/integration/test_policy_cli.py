"""`watcher check-config` and `watcher status` on the trigger policy: the validations
`run` shares, each signal's value, and runs the gate refused told from deployed ones."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from harness import watcher_cli
from performance_support import config, make_loop

from watcher.config import load_config
from watcher.errors import ConfigError
from watcher.registry import ModelRegistry

MODEL = """
[models.m]
source = {{ kind = "directory", path = "in"{labels} }}
columns = {{ numeric = ["x"], prediction = "p"{roles} }}
retrain = {{ {retrain} }}
policy = {{ triggers = {triggers} }}
"""


def write(
    tmp: Path, *, labels: str = "", roles: str = "", retrain: str = "", triggers: str = '["drift"]'
) -> Path:
    path = tmp / "watcher.toml"
    text = MODEL.format(labels=labels, roles=roles, retrain=retrain, triggers=triggers)
    path.write_text(text, encoding="utf-8")
    return path


def watcher(*args: str) -> subprocess.CompletedProcess[str]:
    return watcher_cli(*args, timeout=120, env={"COLUMNS": "300"})


@pytest.mark.parametrize(
    ("retrain", "message"),
    [
        (
            'primary_metric = "accuracy"',
            "primary_metric 'accuracy' does not fit retrain.task 'regression': "
            "use one of mae, rmse, r2",
        ),
        (
            'task = "classification", primary_metric = "mae"',
            "primary_metric 'mae' does not fit retrain.task 'classification': "
            "use one of accuracy, f1, roc_auc",
        ),
    ],
)
def test_metric_must_fit_the_task(tmp_path: Path, retrain: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, retrain=retrain))
    res = watcher("check-config", str(write(tmp_path, retrain=retrain)))
    assert res.returncode == 2
    assert message in res.stderr


def test_impute_none_is_refused_for_a_family_that_does_not_accept_nan(tmp_path: Path) -> None:
    message = (
        "retrain.impute = 'none' leaves missing values to the estimator, but family 'linear' "
        "does not accept NaN: use impute = 'median' or model_families = "
        "['hist_gradient_boosting', 'random_forest'] only"
    )
    bad = write(tmp_path, retrain='impute = "none", model_families = ["linear"]')
    res = watcher("check-config", str(bad))
    assert res.returncode == 2
    assert "models.m.retrain" in res.stderr
    assert message in res.stderr
    ok = write(tmp_path, retrain='impute = "none", model_families = ["hist_gradient_boosting"]')
    res = watcher("check-config", str(ok))
    assert res.returncode == 0, res.stderr


def test_check_config_refuses_a_score_column_that_would_not_be_read(tmp_path: Path) -> None:
    for retrain, message in (
        (
            "",
            "columns.score ('s') is a predicted probability of the positive class, for a "
            "binary classifier, but retrain.task is 'regression': remove columns.score, or "
            "set task = 'classification'",
        ),
        (
            'task = "classification", primary_metric = "f1"',
            "columns.score ('s') is only read when retrain.primary_metric is 'roc_auc' (it "
            "is 'f1'): remove columns.score, or set primary_metric = 'roc_auc'",
        ),
    ):
        res = watcher("check-config", str(write(tmp_path, roles=', score = "s"', retrain=retrain)))
        assert res.returncode == 2
        assert "models.m" in res.stderr
        assert message in res.stderr


def test_check_config_says_which_metric_a_roc_auc_model_is_followed_by(tmp_path: Path) -> None:
    roc_auc = 'task = "classification", primary_metric = "roc_auc"'
    perf = {
        "triggers": '["performance"]',
        "labels": ', labels_path = "labels"',
        "retrain": roc_auc,
    }
    res = watcher("check-config", str(write(tmp_path, roles=', target = "y", id = "id"', **perf)))
    assert res.returncode == 0, res.stderr
    assert "performance: accuracy loss vs the holdout level" in res.stdout
    assert "set columns.score to the positive class's probability to follow roc_auc" in res.stdout
    roles = ', target = "y", id = "id", score = "s"'
    res = watcher("check-config", str(write(tmp_path, roles=roles, **perf)))
    assert res.returncode == 0, res.stderr
    assert "performance: roc_auc loss vs the holdout level" in res.stdout
    assert "(from the probabilities in column 's')" in res.stdout


def test_a_classifier_defaults_to_accuracy(tmp_path: Path) -> None:
    s = load_config(write(tmp_path, retrain='task = "classification"'))
    assert s.models["m"].retrain.primary_metric == "accuracy"


def test_performance_needs_labels_and_their_columns(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, triggers='["performance"]'))
    assert (
        "policy.triggers has 'performance', which compares the model's predictions with "
        "labels, but it lacks columns.target, columns.id, source.labels_path: set them"
    ) in str(caught.value)
    ok = write(
        tmp_path,
        triggers='["performance"]',
        labels=', labels_path = "labels"',
        roles=', target = "y", id = "id"',
    )
    assert load_config(ok).models["m"].policy.triggers == ["performance"]


def test_check_config_says_the_policy_and_the_small_batch_line(tmp_path: Path) -> None:
    path = config(tmp_path, reference_rows=1500, max_age_batches=12)
    res = watcher("check-config", str(path))
    assert res.returncode == 0, res.stderr
    assert (
        "retrain when: drift in 2 consecutive batches; performance: mae loss vs the holdout "
        "level, cusum (tolerance 10%, threshold 0.5, periods pooled to 30+ labelled rows)"
    ) in res.stdout
    assert "batches under " in res.stdout
    assert "show dataset drift by chance" in res.stdout
    assert "scored with ks/chisquare (small_batches = 'pvalue')" in res.stdout


def test_status_shows_signals_and_what_each_run_did(tmp_path: Path) -> None:
    loop = make_loop(config(tmp_path))
    try:
        for i in range(3):
            loop.period(i)
        # Two finished runs: one the gate refused, one deployed (as the DAG's deploy step
        # records them in the registry).
        registry = ModelRegistry(tmp_path / "registry")
        for run_id, record in (
            (
                "r-refused",
                {"deployed": False, "reason": "challenger mae 3.1 is not better than 2.9"},
            ),
            ("r-deployed", {"deployed": True, "version": "2", "reason": "better"}),
        ):
            conf = {"model": "m", "reason_kind": "performance_degraded"}
            loop.store.add_run(run_id, "m", "retrain_m", conf, "success")
            registry.record_run("m", run_id, record)
    finally:
        loop.store.close()
    res = watcher("status", "--config", str(tmp_path / "watcher.toml"))
    assert res.returncode == 0, res.stderr
    rows = {
        ln.split()[0]: ln
        for ln in res.stdout.splitlines()
        if ln.split()[:1] in (["r-refused"], ["r-deployed"])
    }
    assert "refused by the gate: challenger mae 3.1 is not better than 2.9" in rows["r-refused"]
    assert "deployed v2" in rows["r-deployed"]
    assert "performance_degraded" in rows["r-deployed"]
    signals = [
        ln.split()
        for ln in res.stdout.splitlines()
        if ln.split()[:1] in (["drift"], ["performance"])
    ]
    assert [s[:2] for s in signals] == [["drift", "yes"], ["performance", "yes"]]
    assert "loss " in res.stdout  # the performance reading's sentence, with its numbers

    # --json says the same for scripts: each run's outcome, version or gate reason, signal.
    done = watcher("status", "--json", "--config", str(tmp_path / "watcher.toml"))
    assert done.returncode == 0, done.stderr
    runs = {r["run_id"]: r for r in json.loads(done.stdout)["models"]["m"]["runs"]}
    assert runs["r-refused"]["outcome"] == "refused"
    assert runs["r-refused"]["reason"] == "challenger mae 3.1 is not better than 2.9"
    assert (runs["r-deployed"]["outcome"], runs["r-deployed"]["version"]) == ("deployed", "2")
    assert runs["r-deployed"]["reason_kind"] == "performance_degraded"


def test_demo_on_own_data_says_what_the_table_lacks(tmp_path: Path) -> None:
    path = config(tmp_path)
    table = tmp_path / "mine.csv"
    pd.DataFrame({"a": [1.0, 2.0], "y": [3.0, 4.0]}).to_csv(table, index=False)
    res = watcher(
        "demo", "--config", str(path), "--data", str(table), "--workdir", str(tmp_path / "d")
    )
    assert res.returncode == 2
    assert "cannot be replayed for model m: missing columns.timestamp" in res.stdout + res.stderr
    assert not (tmp_path / "d").exists()  # refused before starting anything


def test_replay_says_when_wall_clock_guardrails_would_hold_every_trigger(tmp_path: Path) -> None:
    from watcher.cli import _replay_guardrails

    settings = load_config(config(tmp_path, cooldown_seconds=21600.0))
    note = _replay_guardrails(settings, "m", 0.0, "7D", 45)
    assert note is not None
    assert "cooldown_seconds = 0 and daily_cap = 100" in note
    (tmp_path / "b").mkdir()
    relaxed = load_config(config(tmp_path / "b", cooldown_seconds=0.0, daily_cap=100))
    assert _replay_guardrails(relaxed, "m", 0.0, "7D", 45) is None
