"""Helpers shared by tests: small real data sets, configs, waiting without sleeping blind."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

T = TypeVar("T")

NUMERIC = ["a", "b", "température", "wind speed"]
CATEGORICAL = ["c"]


def wait_for(
    check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def frame(
    n: int, seed: int, shift: float = 0.0, cats: tuple[str, ...] = ("x", "y", "z")
) -> pd.DataFrame:
    """A batch like the reference; `shift` moves every numeric feature by that many sds."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "a": rng.normal(shift, 1.0, n),
            "b": rng.normal(10 + 3 * shift, 3.0, n),
            "température": rng.uniform(0, 1, n) + shift * 0.3,
            "wind speed": rng.gamma(2.0, 1.0 + shift, n),
            "c": rng.choice(list(cats), n),
            "p": rng.normal(5 + shift, 1.0, n),
        }
    )
    return df


def model_toml(incoming: Path, reference: Path, *, extra: str = "", name: str = "m") -> str:
    numeric = ", ".join(f'"{c}"' for c in NUMERIC)
    return f"""
[models.{name}]
reference = "{reference}"
source = {{ kind = "directory", path = "{incoming}", settle_seconds = 0 }}
columns = {{ numeric = [{numeric}], categorical = ["c"], prediction = "p" }}
{extra}
"""


def write_config(
    tmp: Path,
    *,
    metrics_port: int = 0,
    extra_top: str = "",
    model_extra: str = "",
    poll: float = 0.1,
) -> Path:
    incoming = tmp / "incoming"
    incoming.mkdir(exist_ok=True)
    reference = tmp / "reference.parquet"
    if not reference.exists():
        frame(600, seed=1).to_parquet(reference)
    cfg = tmp / "watcher.toml"
    cfg.write_text(
        f"""
[daemon]
state_dir = "{tmp / "state"}"
poll_interval_seconds = {poll}

[metrics]
port = {metrics_port}
detail = "feature"

[registry]
path = "{tmp / "registry"}"
{extra_top}
"""
        + model_toml(incoming, reference, extra=model_extra)
    )
    return cfg


def drop(incoming: Path, name: str, df: pd.DataFrame) -> Path:
    """Write the way a good producer does: to a temporary name, then an atomic rename."""
    final = incoming / name
    tmp = incoming / f".{name}.tmp"
    if name.endswith(".parquet"):
        df.to_parquet(tmp)
    else:
        df.to_csv(tmp, index=False)
    tmp.rename(final)
    return final
