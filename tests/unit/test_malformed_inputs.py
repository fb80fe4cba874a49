"""Bad input never stops the daemon: each malformed batch is quarantined with a clear
reason, or scored as documented, and counted in a metric.

One real daemon (in-process, real files, real SQLite) processes every case below in one go;
each case is then its own test.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from harness import run_daemon
from prometheus_client import CollectorRegistry
from support import drop, frame, write_config

from watcher.config import load_config
from watcher.state import StateStore


@dataclass(frozen=True)
class Case:
    name: str  # file name
    outcome: str  # scored | rejected
    check: str | None  # rejection check, or a violation that must be counted
    reason_has: str = ""


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


def make_cases(incoming: Path) -> list[Case]:
    good = frame(200, seed=2)
    cases: list[Case] = []

    def add(case: Case, df: pd.DataFrame | None = None, raw: bytes | None = None) -> None:
        if raw is not None:
            _write_bytes(incoming / case.name, raw)
        else:
            assert df is not None
            drop(incoming, case.name, df)
        cases.append(case)

    add(Case("01-empty-file.csv", "rejected", "empty_file", "empty file"), raw=b"")
    add(Case("02-zero-rows.csv", "rejected", "empty_batch", "no rows"), good.head(0))
    add(Case("03-one-row.csv", "rejected", "too_few_rows", "1 row"), good.head(1))
    add(
        Case("04-corrupt.parquet", "rejected", "unreadable", "not a readable Parquet"),
        raw=b"PAR1 this is not really parquet \x00\x01\x02",
    )
    semicolon = good.to_csv(index=False, sep=";").encode()
    add(Case("05-semicolon.csv", "scored", None), raw=semicolon)
    add(Case("06-missing-column.csv", "rejected", "missing_columns", "'b'"), good.drop(columns="b"))
    add(Case("07-extra-column.csv", "scored", "extra_columns"), good.assign(surprise=1))
    add(
        Case("08-type-change.csv", "rejected", "type_change", "holds text"),
        good.assign(a=["high"] * len(good)),
    )
    add(
        Case("09-all-nan.csv", "rejected", "all_missing", "no values at all"), good.assign(b=np.nan)
    )
    inf = good.copy()
    inf.loc[:9, "a"] = np.inf
    add(Case("10-inf-values.parquet", "scored", "non_finite"), inf)
    mixed = good.astype({"a": object})
    mixed.loc[::7, "a"] = "n/a?"
    add(Case("11-mixed-types.csv", "rejected", "type_change", "mix of numbers and text"), mixed)
    flood = good.assign(c=[f"new-{i % 40}" for i in range(len(good))])
    add(Case("12-unseen-categories.parquet", "scored", "unseen_categories"), flood)
    dup = good.to_csv(index=False).replace("a,b,", "a,a,", 1).encode()
    add(
        Case("13-duplicate-columns.csv", "rejected", "duplicate_columns", "duplicate column"),
        raw=dup,
    )
    add(Case("14-non-ascii-names.csv", "scored", None), good)  # 'température', 'wind speed'
    add(
        Case("15-latin1.csv", "rejected", "unreadable", "not UTF-8"),
        raw=good.head(50).assign(c="é").to_csv(index=False).encode("latin-1"),
    )
    add(
        Case("16-tab-separated.csv", "scored", None),
        raw=good.to_csv(index=False, sep="\t").encode(),
    )
    return cases


@pytest.fixture(scope="module")
def processed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[Case], CollectorRegistry]:
    tmp = tmp_path_factory.mktemp("malformed")
    settings = load_config(write_config(tmp))
    incoming = tmp / "incoming"
    cases = make_cases(incoming)
    # Noise a producer leaves around that must never be read.
    (incoming / "upload.csv.part").write_text("a,b\n1,2\n")
    (incoming / ".hidden.csv").write_text("a,b\n1,2\n")
    (incoming / "notes.json").write_text("{}")
    registry = CollectorRegistry()

    async def run() -> None:
        store = StateStore(settings.daemon.state_dir / "state.db")
        try:
            async with run_daemon(settings, registry) as daemon:
                # `until` fails at once should the daemon die on bad input.
                await daemon.until(
                    lambda: len(store.processed_ids("m")) >= len(cases), 60, "every case"
                )
        finally:
            store.close()

    asyncio.run(run())
    return tmp, cases, registry


@pytest.mark.parametrize("index", range(16))
def test_each_malformed_input(
    processed: tuple[Path, list[Case], CollectorRegistry], index: int
) -> None:
    tmp, cases, registry = processed
    case = cases[index]
    store = StateStore(tmp / "state" / "state.db")
    try:
        status = store.batch_status("m", case.name)
        reason = store.batch_reason("m", case.name)
    finally:
        store.close()
    assert status == case.outcome, f"{case.name}: {status} ({reason})"
    if case.outcome == "rejected":
        assert reason is not None
        assert reason.startswith(f"{case.check}:"), reason
        assert case.reason_has in reason, reason
        reason_file = tmp / "incoming" / "quarantine" / f"{case.name}.reason.txt"
        assert (tmp / "incoming" / "quarantine" / case.name).exists()
        assert case.reason_has in reason_file.read_text(encoding="utf-8")
        assert (
            registry.get_sample_value(
                "watcher_batches_rejected_total", {"model": "m", "reason": case.check}
            )
            or 0
        ) >= 1
    else:
        assert (tmp / "incoming" / "processed" / case.name).exists()
        if case.check:
            assert (
                registry.get_sample_value(
                    "watcher_data_quality_violations_total", {"model": "m", "check": case.check}
                )
                or 0
            ) >= 1, case.check


def test_totals_and_noise(processed: tuple[Path, list[Case], CollectorRegistry]) -> None:
    tmp, cases, registry = processed
    rejected = sum(c.outcome == "rejected" for c in cases)
    scored = len(cases) - rejected
    assert (
        registry.get_sample_value("watcher_batches_total", {"model": "m", "outcome": "rejected"})
        == rejected
    )
    assert (
        registry.get_sample_value("watcher_batches_total", {"model": "m", "outcome": "scored"})
        == scored
    )
    # Temporary, hidden and foreign files were left alone.
    for name in ("upload.csv.part", ".hidden.csv", "notes.json"):
        assert (tmp / "incoming" / name).exists()


def test_unseen_category_flood_drifts(
    processed: tuple[Path, list[Case], CollectorRegistry],
) -> None:
    tmp, _, _ = processed
    store = StateStore(tmp / "state" / "state.db")
    try:
        rec = next(
            b for b in store.recent_batches("m", 50) if b.batch_id == "12-unseen-categories.parquet"
        )
    finally:
        store.close()
    assert rec.result is not None
    assert rec.result["drift"]["columns"]["c"]["drifted"] is True
