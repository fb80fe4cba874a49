"""Custom stat tests (`"package.module:function"` or an evidently StatTest object), per column
and per kind; broken ones give a clear error at `check-config` or a counted scoring failure
while the daemon goes on. The tests themselves are in tests/custom_stattests.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import custom_stattests
import numpy as np
import pandas as pd
import pytest
from evidently.legacy.core import ColumnType
from harness import run_daemon, watcher_cli
from prometheus_client import CollectorRegistry
from support import drop, frame, write_config

from watcher.config import load_config
from watcher.drift import engine
from watcher.drift.engine import ColumnSpec
from watcher.errors import ConfigError
from watcher.state import StateStore

TESTS_DIR = Path(__file__).resolve().parents[1]  # custom_stattests.py, for the subprocesses
SPECS = [ColumnSpec("a", "numeric"), ColumnSpec("b", "numeric"), ColumnSpec("c", "categorical")]


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    ref, cur = frame(700, seed=1), frame(300, seed=2, shift=0.6)
    ref.loc[ref.index[:20], "a"] = np.nan  # cleaned away before any test, as evidently does
    cur.loc[cur.index[:3], "a"] = [np.inf, -np.inf, np.nan]
    return ref, cur


def _clean(s: pd.Series) -> pd.Series:
    return s.replace([np.inf, -np.inf], np.nan).dropna()


def test_custom_tests_per_column_and_per_kind() -> None:
    ref, cur = _frames()
    specs = [ColumnSpec("a", "numeric", "custom_stattests:mean_shift", 0.3), *SPECS[1:]]
    prepared = engine.prepare_reference(ref, specs, version="v1")
    custom_stattests.CALLS.clear()
    result = engine.score(
        prepared,
        cur,
        num_stattest="custom_stattests:median_shift",  # an evidently StatTest object
        cat_stattest="custom_stattests:share_moved",
        cat_threshold=0.02,
    )
    assert not result.failures
    a, b, c = result.columns["a"], result.columns["b"], result.columns["c"]
    # Per column wins over the kind's test; the column's own threshold is passed in.
    assert a.stattest == "custom_stattests:mean_shift"
    expected, flag = custom_stattests.mean_shift(
        _clean(ref["a"]), _clean(cur["a"]), ColumnType.Numerical, 0.3
    )
    assert (a.score, a.drifted, a.threshold) == (pytest.approx(expected, abs=1e-12), flag, 0.3)
    # The StatTest object brings its own default threshold (0.25).
    assert b.stattest == "custom_stattests:median_shift"
    assert b.threshold == 0.25
    direct = custom_stattests.median_shift(ref["b"], cur["b"], ColumnType.Numerical, None)
    assert b.score == pytest.approx(direct.drift_score, abs=1e-12)
    assert b.drifted == direct.drifted
    assert c.stattest == "custom_stattests:share_moved"
    assert c.threshold == 0.02
    assert c.score > 0
    # The functions saw the cleaned columns and evidently's column types.
    assert (680, 297, "num", 0.3) in custom_stattests.CALLS
    assert (700, 300, "cat", 0.02) in custom_stattests.CALLS
    assert a.drifted  # a 0.6 sd shift, against a 0.3 sd threshold


@pytest.mark.parametrize(
    ("test", "message"),
    [
        ("custom_stattests:raises", "raised RuntimeError: this test is broken on purpose"),
        ("custom_stattests:returns_nan", "returned score nan, not a finite number"),
        ("custom_stattests:returns_three", "not a (score, drifted) pair"),
        ("custom_stattests:returns_text_flag", "returned drifted='yes', not a bool"),
    ],
)
def test_a_broken_test_fails_its_column_only(test: str, message: str) -> None:
    ref, cur = _frames()
    specs = [ColumnSpec("a", "numeric", test), *SPECS[1:]]
    result = engine.score(engine.prepare_reference(ref, specs, version="v1"), cur)
    assert set(result.failures) == {"a"}
    failed_test, why = result.failures["a"]
    assert failed_test == test
    assert test in why
    assert message in why
    assert set(result.columns) == {"b", "c"}  # the others are scored
    assert result.n_columns == 2
    # What the state store keeps of the batch says so too.
    assert result.to_json_dict()["failures"] == {"a": {"stattest": test, "error": why}}


def test_evidentlys_own_errors_are_failures_too() -> None:
    # evidently's G-test refuses two sides of different lengths (SciPy's sum check).
    ref, cur = _frames()
    specs = [*SPECS[:2], ColumnSpec("c", "categorical", "g_test")]
    result = engine.score(engine.prepare_reference(ref, specs, version="v1"), cur)
    assert result.failures["c"][0] == "g_test"
    assert "sum of the observed frequencies" in result.failures["c"][1]


def test_every_test_failing_still_scores_the_batch() -> None:
    ref, cur = _frames()
    specs = [ColumnSpec(s.name, s.kind, "custom_stattests:raises") for s in SPECS]
    result = engine.score(engine.prepare_reference(ref, specs, version="v1"), cur)
    assert result.n_columns == 0
    assert not result.dataset_drift
    assert set(result.failures) == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("test", "message"),
    [
        ("no_such_module_for_watcher:fn", "cannot import module 'no_such_module_for_watcher'"),
        ("custom_stattests:nope", "module 'custom_stattests' has no 'nope'"),
        ("custom_stattests:NOT_A_FUNCTION", "is a int, not a function"),
        ("custom_stattests:two_parameters", "cannot be called with (reference, current"),
        ("custom_stattests:", "not of the form 'package.module:function'"),
        ("kolmogorov", "unknown stat test 'kolmogorov'"),
        ("chisquare", "'chisquare' does not apply to numeric columns"),
    ],
)
def test_config_refuses_a_test_that_cannot_run(tmp_path: Path, test: str, message: str) -> None:
    cfg = write_config(tmp_path, model_extra=f'[models.m.drift]\nnum_stattest = "{test}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert message in str(info.value)
    assert "drift.num_stattest" in str(info.value)


def test_check_config_loads_custom_tests(tmp_path: Path) -> None:
    good = write_config(
        tmp_path,
        model_extra='[models.m.drift]\nnum_stattest = "custom_stattests:median_shift"\n'
        "cat_threshold = 0.2\n"
        '[models.m.drift.columns.a]\nstattest = "custom_stattests:mean_shift"\n',
    )
    env = {"PYTHONPATH": str(TESTS_DIR)}
    ok = watcher_cli("check-config", str(good), env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("custom_stattests:mean_shift", "custom_stattests:nope"))
    out = watcher_cli("check-config", str(bad), env=env, timeout=120)
    assert out.returncode == 2
    assert "custom_stattests:nope" in out.stderr
    assert "has no 'nope'" in out.stderr


def test_daemon_counts_a_broken_test_and_goes_on(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, model_extra='[models.m.drift.columns.a]\nstattest = "custom_stattests:raises"\n'
    )
    settings = load_config(cfg)
    for i in range(2):
        drop(tmp_path / "incoming", f"b{i}.parquet", frame(200, seed=10 + i))
    registry = CollectorRegistry()

    def scored() -> bool:
        store = StateStore(settings.daemon.state_dir / "state.db")
        try:
            return all(store.batch_status("m", f"b{i}.parquet") == "scored" for i in (0, 1))
        finally:
            store.close()

    async def run() -> None:
        async with run_daemon(settings, registry) as daemon:
            await daemon.until(scored, 60, "both batches scored")

    asyncio.run(run())
    failures = registry.get_sample_value(
        "watcher_drift_test_failures_total", {"model": "m", "stattest": "custom_stattests:raises"}
    )
    assert failures == 2
    assert (
        registry.get_sample_value("watcher_batches_total", {"model": "m", "outcome": "scored"}) == 2
    )
    # The other features were scored and exported.
    assert registry.get_sample_value("watcher_feature_drifted", {"model": "m", "feature": "b"}) in (
        0,
        1,
    )


def test_without_evidently_a_test_that_needs_it_is_refused_at_load(tmp_path: Path) -> None:
    # evidently made unimportable in a fresh interpreter (test_extras' stand-in for an
    # install without the `reports` extra): fast-path tests load, evidently's do not.
    from test_extras import _BLOCK

    cfg = write_config(tmp_path, model_extra='[models.m.drift]\nnum_stattest = "anderson"\n')
    fast = tmp_path / "fast.toml"
    fast.write_text(cfg.read_text().replace('"anderson"', '"t_test"'))
    script = f"""
from pathlib import Path
from watcher.config import load_config
from watcher.errors import ConfigError
load_config(Path({str(fast)!r}))
try:
    load_config(Path({str(cfg)!r}))
except ConfigError as exc:
    print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", _BLOCK + script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "stat test 'anderson' needs evidently, which is not installed" in out.stdout
    assert "watcher-drift[reports]" in out.stdout
