"""The registry of drift tests: every tabular test of evidently 0.7.23, and custom tests.

One entry per test: evidently's name, the column kinds it accepts, whether its score is a
p-value (drift when small) or a distance (drift when large), evidently's default threshold
and drift rule, and how watcher computes it: on the **fast** path (`watcher.drift.stattests`,
reference prepared once, equal to evidently to 1e-6) or by calling **evidently**'s own test
function on the cleaned columns (exact by construction, as slow as evidently).

evidently registers 20 tests; two of them (`perc_text_content_drift`,
`abs_text_content_drift`) score text columns, which watcher does not score, so 18 are here.

A custom test is named `"package.module:function"`: a function taking (reference, current,
column type, threshold) and returning (score, drifted) as evidently's own do, or an
evidently `StatTest` object. It is imported once (`load_custom_test` caches it) when the
configuration is validated, so `watcher check-config` reports a test that cannot be loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import numpy as np
import pandas as pd

from watcher.errors import ConfigError

Kind = Literal["numeric", "categorical"]
# How watcher computes a test: its own fast path, or evidently's function.
Route = Literal["fast", "evidently"]

_NUM: frozenset[Kind] = frozenset({"numeric"})
_CAT: frozenset[Kind] = frozenset({"categorical"})
_BOTH: frozenset[Kind] = frozenset({"numeric", "categorical"})

# evidently's comparison of score and threshold, per test (it differs between tests).
Rule = Literal["<", "<=", ">", ">="]


@dataclass(frozen=True)
class TestInfo:
    """What watcher needs to know about one of evidently's tests."""

    name: str
    display_name: str  # evidently's, as its Report shows an automatically chosen test
    kinds: frozenset[Kind]
    default_threshold: float
    rule: Rule
    path: Route

    @property
    def p_value(self) -> bool:
        return self.rule in ("<", "<=")

    def drifted(self, score: float, threshold: float) -> bool:
        """The drift decision evidently takes for this test."""
        if self.rule == "<":
            return score < threshold
        if self.rule == "<=":
            return score <= threshold
        if self.rule == ">":
            return score > threshold
        return score >= threshold


TESTS: dict[str, TestInfo] = {
    t.name: t
    for t in (
        # the fast path: watcher.drift.stattests, from a reference prepared once
        TestInfo("ks", "K-S p_value", _NUM, 0.05, "<=", "fast"),
        TestInfo("chisquare", "chi-square p_value", _CAT, 0.05, "<", "fast"),
        TestInfo("z", "Z-test p_value", _CAT, 0.05, "<", "fast"),
        TestInfo("wasserstein", "Wasserstein distance (normed)", _NUM, 0.1, ">=", "fast"),
        TestInfo("jensenshannon", "Jensen-Shannon distance", _BOTH, 0.1, ">=", "fast"),
        TestInfo("psi", "PSI", _BOTH, 0.1, ">=", "fast"),
        TestInfo("kl_div", "Kullback-Leibler divergence", _BOTH, 0.1, ">=", "fast"),
        TestInfo("hellinger", "Hellinger distance", _BOTH, 0.1, ">=", "fast"),
        TestInfo("ed", "Energy-distance", _NUM, 0.1, ">", "fast"),
        TestInfo("t_test", "t_test", _NUM, 0.05, "<", "fast"),
        # evidently's own function on the cleaned columns: permutation tests that depend on
        # row order and the random state (TVD, empirical_mmd), tests that fail unless both
        # sides have as many values (g_test, fisher_exact: evidently's errors are kept), and
        # tests whose cost is the statistic on both sides together, not the reference side
        TestInfo("g_test", "g_test", _CAT, 0.1, "<", "evidently"),
        TestInfo("anderson", "Anderson-Darling", _NUM, 0.1, "<", "evidently"),
        TestInfo("cramer_von_mises", "Cramer-von Mises", _NUM, 0.1, "<=", "evidently"),
        TestInfo("es", "Epps-Singleton", _NUM, 0.05, "<", "evidently"),
        TestInfo("mannw", "Mann-Whitney U-rank test", _NUM, 0.05, "<", "evidently"),
        TestInfo("empirical_mmd", "empirical_mmd", _NUM, 0.1, "<", "evidently"),
        TestInfo("fisher_exact", "Fisher's Exact test", _CAT, 0.1, "<", "evidently"),
        TestInfo("TVD", "Total-Variation-Distance", _CAT, 0.1, "<", "evidently"),
    )
}

BY_DISPLAY_NAME = {t.display_name: t.name for t in TESTS.values()}


def evidently_column_type(kind: Kind) -> Any:
    """evidently's `ColumnType` for a kind, as its test functions expect it."""
    from evidently.legacy.core import ColumnType

    return ColumnType.Numerical if kind == "numeric" else ColumnType.Categorical


def evidently_stattest(name: str) -> Any:
    """evidently's registered `StatTest` object of a built-in test."""
    from evidently.legacy.calculations.stattests import registry

    kinds = registry._registered_stat_tests[name]  # evidently's own lookup table
    return next(iter(kinds.values()))


# --- custom tests ------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomTest:
    """A user's test, loaded from `"package.module:function"`."""

    name: str  # the spec, as configured: also the `stattest` label in results and metrics
    func: Callable[..., Any]
    # An evidently StatTest object carries its own; a plain function gets evidently's
    # default for one (StatTest.default_threshold, 0.05).
    default_threshold: float
    is_stattest: bool


def is_custom(name: str) -> bool:
    return ":" in name


def _is_evidently_stattest(obj: Any) -> bool:
    registry = sys.modules.get("evidently.legacy.calculations.stattests.registry")
    return registry is not None and isinstance(obj, registry.StatTest)


@cache
def load_custom_test(spec: str) -> CustomTest:
    """Import `"package.module:function"` once; ConfigError saying what is wrong otherwise."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ConfigError(
            f"custom stat test {spec!r} is not of the form 'package.module:function'",
            hint="name the module and the function (or StatTest object) in it, with one ':'",
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any error while importing user code: report it, do not crash
        raise ConfigError(
            f"custom stat test {spec!r}: cannot import module {module_name!r}: "
            f"{type(exc).__name__}: {exc}",
            hint="the module must be importable by the watcher process (check PYTHONPATH)",
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(
                f"custom stat test {spec!r}: module {module_name!r} has no {attr!r}",
                hint="check the function's name after the ':'",
            ) from exc
    if _is_evidently_stattest(obj):
        return CustomTest(spec, obj, float(obj.default_threshold), is_stattest=True)
    if not callable(obj):
        raise ConfigError(
            f"custom stat test {spec!r} is a {type(obj).__name__}, not a function "
            "or an evidently StatTest",
            hint="point at a function (reference, current, column_type, threshold) -> "
            "(score, drifted)",
        )
    try:
        inspect.signature(obj).bind(None, None, None, None)
    except TypeError as exc:
        raise ConfigError(
            f"custom stat test {spec!r} cannot be called with (reference, current, "
            f"column_type, threshold): {exc}",
            hint="give the function those four positional parameters, as evidently's tests",
        ) from exc
    except ValueError:
        pass  # no signature to inspect (a builtin): find out when it is called
    return CustomTest(spec, obj, 0.05, is_stattest=False)


def evidently_installed() -> bool:
    """Whether evidently (the `reports` extra) can be imported, without importing it."""
    try:
        return importlib.util.find_spec("evidently") is not None
    except (ImportError, ValueError):
        return False


def check_name(name: str) -> str:
    """A configured test name: a registered test, or a custom test that loads."""
    if name not in TESTS and not is_custom(name):
        raise ConfigError(
            f"unknown stat test {name!r}",
            hint=f"use one of {sorted(TESTS)}, or 'package.module:function' for your own",
        )
    if (is_custom(name) or TESTS[name].path == "evidently") and not evidently_installed():
        # These run evidently's own function, or are handed evidently's column types.
        raise ConfigError(
            f"stat test {name!r} needs evidently, which is not installed",
            hint="pip install 'watcher-drift[reports]', or pick a test on the fast path",
        )
    if is_custom(name):
        load_custom_test(name)
    return name


def check_kind(test: str | None, kind: Kind, where: str) -> None:
    """Refuse a registered test for a kind evidently does not run it on. A custom test
    declares no kinds: it runs on whatever column it is given, as in evidently."""
    info = TESTS.get(test) if test is not None else None
    if info is not None and kind not in info.kinds:
        allowed = " and ".join(sorted(info.kinds))
        raise ConfigError(
            f"{where}: stat test {test!r} does not apply to {kind} columns "
            f"(evidently runs it on {allowed} columns only)",
            hint=f"pick a test for {kind} columns: "
            + ", ".join(n for n, t in TESTS.items() if kind in t.kinds),
        )


class TestFailed(Exception):
    """A test raised or returned something that is not (score, drifted)."""

    def __init__(self, test: str, message: str) -> None:
        super().__init__(message)
        self.test = test


def run_function(
    test: str,
    ref: pd.Series,
    cur: pd.Series,
    kind: Kind,
    threshold: float | None,
) -> tuple[float, bool, float]:
    """Run evidently's own function of a built-in test, or a custom test, on clean columns.

    Returns (score, drifted, threshold used). Raises TestFailed naming the test for any
    error in it or a result that is not a finite score and a flag.
    """
    column_type = evidently_column_type(kind)
    try:
        if not is_custom(test):
            # SciPy's notes on these tests (Anderson-Darling's capped p-value, a zero
            # division in a permutation) say nothing the score does not, and would be
            # logged once per column and batch.
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                result = evidently_stattest(test)(ref, cur, column_type, threshold)
            return _checked(test, (result.drift_score, result.drifted), result.actual_threshold)
        custom = load_custom_test(test)
        used = custom.default_threshold if threshold is None else threshold
        if custom.is_stattest:
            result = custom.func(ref, cur, column_type, used)
            return _checked(test, (result.drift_score, result.drifted), used)
        return _checked(test, custom.func(ref, cur, column_type, used), used)
    except TestFailed:
        raise
    except Exception as exc:  # the test's own error, whatever it is, fails this column only
        raise TestFailed(test, f"stat test {test!r} raised {type(exc).__name__}: {exc}") from exc


def _checked(test: str, out: Any, threshold: float) -> tuple[float, bool, float]:
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise TestFailed(
            test,
            f"stat test {test!r} returned {type(out).__name__} {out!r:.80}, "
            "not a (score, drifted) pair",
        )
    score, drifted = out
    try:
        value = float(score)
    except (TypeError, ValueError) as exc:
        raise TestFailed(
            test, f"stat test {test!r} returned score {score!r:.80}, not a number"
        ) from exc
    if not math.isfinite(value):
        raise TestFailed(test, f"stat test {test!r} returned score {value}, not a finite number")
    if not isinstance(drifted, bool | np.bool_):
        raise TestFailed(test, f"stat test {test!r} returned drifted={drifted!r:.80}, not a bool")
    return value, bool(drifted), float(threshold)
