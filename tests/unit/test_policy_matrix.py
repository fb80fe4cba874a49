"""benchmarks/policy_matrix.py: policies simulated over a constructed error matrix."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "policy_matrix.py"


@pytest.fixture(scope="module")
def pm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("policy_matrix", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["policy_matrix"] = module
    spec.loader.exec_module(module)
    return module


def _matrix(pm: ModuleType, n: int = 20, skip: int = 4) -> object:
    """A model's loss is 10 on the period after its training and grows by 1 a period."""
    keys = [-1, *range(skip, n - 1)]
    trained = {k: (skip - 1 if k < 0 else k) for k in keys}
    loss = {k: np.array([10.0 + max(0, t - trained[k] - 1) for t in range(n)]) for k in keys}
    return pm.Matrix(
        name="constructed",
        metric="mae",
        skip=skip,
        n=n,
        delay=1,
        rows=np.full(n, 100),
        loss=loss,
        holdout=dict.fromkeys(keys, 10.0),
        ok=dict.fromkeys(keys, True),
        gate={(w, c): True for w in keys for c in keys if c < w},
    )


def test_never_and_schedules(pm: ModuleType) -> None:
    m = _matrix(pm)
    assert pm.simulate(m, pm.never()) == (0, 0, pytest.approx(np.mean(10.0 + np.arange(16))))
    runs, deployed, error = pm.simulate(m, pm.schedule(1))
    assert (runs, deployed, error) == (15, 15, 10.0)  # always served by a fresh model
    runs, _, error2 = pm.simulate(m, pm.schedule(2))
    assert runs == 7
    assert 10.0 < error2 < pm.simulate(m, pm.schedule(4))[2]


def test_the_shipped_performance_signal_fires_on_a_rising_loss(pm: ModuleType) -> None:
    m = _matrix(pm)
    runs, _, error = pm.simulate(m, pm.perf(detector="cusum"))
    assert 0 < runs < 15
    assert error < pm.simulate(m, pm.never())[2]
    # A floor adds scheduled runs: never fewer runs than the signal alone.
    assert pm.simulate(m, pm.perf(3, detector="cusum"))[0] >= runs


def test_the_hindsight_oracle_bounds_every_policy(pm: ModuleType) -> None:
    m = _matrix(pm)
    best = pm.oracle(m, 15)
    assert best[0] == pytest.approx(pm.simulate(m, pm.never())[2])
    assert best[15] == pytest.approx(10.0)  # a fresh model every period
    for k in (1, 2, 3, 4, 6):
        runs, _, error = pm.simulate(m, pm.schedule(k))
        assert best[runs] <= error + 1e-9
    assert all(best[k + 1] <= best[k] for k in range(15))


def test_the_families_simulator_agrees_with_the_matrix_simulator(pm: ModuleType) -> None:
    path = SCRIPT.with_name("policy_families.py")
    spec = importlib.util.spec_from_file_location("policy_families", path)
    assert spec is not None
    assert spec.loader is not None
    pf = importlib.util.module_from_spec(spec)
    sys.modules["policy_families"] = pf
    spec.loader.exec_module(pf)
    m = _matrix(pm)
    for k in (1, 2, 3, 5):
        assert pf.simulate(m, pf.every(k)) == pm.simulate(m, pm.schedule(k))
    # A loss 10 % above the best recent holdout (10) fires from the model's second period.
    runs, _, error = pf.simulate(m, pf.ratio("best5", 0.05, 1))
    assert 0 < runs < 15
    assert error < pm.simulate(m, pm.never())[2]


def test_the_cache_key_changes_with_every_input_and_only_then(
    pm: ModuleType, tmp_path: Path
) -> None:
    data, config, code = tmp_path / "d.csv", tmp_path / "w.toml", tmp_path / "pkg"
    data.write_text("a,b\n1,2\n")
    config.write_text('window = "last_days"\n')
    (code / "sub").mkdir(parents=True)
    (code / "sub" / "m.py").write_text("X = 1\n")
    files = [data, config, code]
    key = pm.cache_key(files, {"override.window": "expanding"})
    assert key == pm.cache_key(files, {"override.window": "expanding"})
    assert key != pm.cache_key(files, {})
    config.write_text('window = "expanding"\n')  # the bug this key fixes: config changed
    changed_config = pm.cache_key(files, {"override.window": "expanding"})
    assert changed_config != key
    data.write_text("a,b\n1,3\n")
    changed_data = pm.cache_key(files, {"override.window": "expanding"})
    (code / "sub" / "m.py").write_text("X = 2\n")
    changed_code = pm.cache_key(files, {"override.window": "expanding"})
    assert len({key, changed_config, changed_data, changed_code}) == 4


def test_the_examples_cache_paths_differ_by_kind_and_override(pm: ModuleType) -> None:
    cache = Path("/nonexistent")
    plain = pm.cache_path(cache, "flights", "matrix", {})
    assert plain.parent == cache
    assert plain != pm.cache_path(cache, "flights", "matrix", {"deploy_all": "1"})
    assert plain != pm.cache_path(cache, "flights", "fast", {})
    assert plain != pm.cache_path(cache, "bikeshare", "matrix", {})
    # The gate does not change the trainings: one trainings file serves both.
    trainings = pm.cache_path(cache, "flights", "trainings", {})
    assert trainings == pm.cache_path(cache, "flights", "trainings", {"deploy_all": "1"})
    assert trainings != pm.cache_path(cache, "flights", "trainings", {"window": "expanding"})


def test_phase_zero_is_the_schedule_and_the_phases_share_the_runs(pm: ModuleType) -> None:
    m = _matrix(pm)  # 15 decisions (after served periods 1..15; none after the last)
    for k in (1, 2, 3, 4, 6):
        assert pm.simulate(m, pm.phased(m, k, 0)) == pm.simulate(m, pm.schedule(k))
        # Every decision point is some phase's retrain: the phases' runs add up to 15.
        assert sum(pm.simulate(m, pm.phased(m, k, j))[0] for j in range(k)) == 15
    # A loss that grows with age: phase 1 of every 4 retrains first, after served period
    # 1, and is no worse than phase 0, which serves version 1 for 4 periods.
    assert pm.simulate(m, pm.phased(m, 4, 1))[2] <= pm.simulate(m, pm.phased(m, 4, 0))[2]


def test_the_performance_signal_reads_the_followed_metric_not_the_primary(
    pm: ModuleType,
) -> None:
    """A roc_auc matrix keeps the loss the daemon's signal follows (accuracy) beside the
    primary one: the signal sees only the former. Here the primary loss rises with age
    and the followed one stays flat: the signal must not fire."""
    m = _matrix(pm)
    rising = pm.simulate(m, pm.perf(detector="cusum"))
    assert rising[0] > 0  # on the primary loss it would fire
    m.followed = {k: np.full(m.n, 10.0) for k in m.loss}
    m.followed_holdout = dict.fromkeys(m.loss, 10.0)
    runs, _, error = pm.simulate(m, pm.perf(detector="cusum"))
    assert runs == 0
    assert error == pytest.approx(pm.simulate(m, pm.never())[2])  # judged on the primary
