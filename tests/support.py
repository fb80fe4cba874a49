"""Helpers shared by tests: small real data sets, configs, waiting without sleeping blind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


class DaemonProcess:
    """`watcher run` as a subprocess in a process group of its own, output to `log`."""

    def __init__(self, cfg: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run", "--config", str(cfg)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL for the whole group: no shutdown code runs, like a power cut."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
