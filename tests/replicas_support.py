"""Several `watcher run` replicas on one PostgreSQL state, for tests/integration/
test_replicas.py and benchmarks/bench_replicas.py: a config with many directory models,
batches dropped in waves, and the ledger, decisions and outbox counted afterwards."""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import DaemonProcess
from support import NUMERIC, drop, frame

from watcher.config import toml_value
from watcher.state import StateStore

# What `watcher run` says when it exits 2 for its supervisor to start it again.
SUPERVISOR_ASKED = "so that its supervisor starts it again"


@dataclass
class Fleet:
    """N replicas of one config; `start`, `kill` (SIGKILL) and `restart` by index."""

    cfg: Path
    folder: Path
    replicas: list[DaemonProcess | None] = field(default_factory=list)
    started: int = 0
    supervised: int = 0  # replicas started again by `supervise`

    def start(self, i: int) -> DaemonProcess:
        self.started += 1
        proc = DaemonProcess(self.cfg, self.folder / f"replica{i}.{self.started}.log")
        while len(self.replicas) <= i:
            self.replicas.append(None)
        self.replicas[i] = proc
        return proc

    def kill(self, i: int) -> None:
        proc = self.replicas[i]
        if proc is not None:
            proc.kill()

    def supervise(self) -> int:
        """Start again each replica that exited 2 asking its supervisor to (the state
        database failed while it was starting: a PostgreSQL restart at that moment), as
        systemd's Restart=on-failure or Kubernetes would. Any other exit is left for the
        test to see. How many were started again."""
        again = 0
        for i, proc in enumerate(self.replicas):
            if proc is None or proc.alive() or proc.proc.returncode != 2:
                continue
            if SUPERVISOR_ASKED in proc.log.read_text(errors="replace"):
                self.start(i)
                again += 1
        self.supervised += again
        return again

    def stop_all(self) -> list[int]:
        return [p.stop() for p in self.replicas if p is not None and p.alive()]

    def wait_all_up(self, timeout: float = 240.0) -> None:
        """Every live replica finished starting (logged "watching"): a restarted replica
        must rejoin, and stopping one still importing tests nothing of shutdown. Starting
        takes seconds, but a replica started beside a busy Airflow on two cores has taken
        over a minute. One that does not come up is asked for its threads' stacks
        (SIGUSR1, `watcher.process_signals`) and the failure shows them."""
        deadline = time.monotonic() + timeout
        live = [p for p in self.replicas if p is not None and p.alive()]
        while time.monotonic() < deadline:
            late = [p for p in live if "watching" not in p.log.read_text(errors="replace")]
            if not late:
                return
            time.sleep(0.5)
        for proc in late:
            proc.signal(signal.SIGUSR1)
        time.sleep(2)
        raise AssertionError(
            f"not up after {timeout:.0f} s: "
            + "; ".join(f"{p.log.name}: {p.log.read_text(errors='replace')[-3000:]}" for p in late)
        )

    def stop_all_cleanly(self) -> int:
        """Once every replica is up (one that exited asking its supervisor for a restart
        is started again first), SIGTERM each and require exit code 0; how many stopped.
        A failure names each replica that did not, with the end of its log on the first
        line (CI shows only that line)."""
        self.supervise()
        self.wait_all_up()
        live = [p for p in self.replicas if p is not None and p.alive()]
        bad = []
        for proc in live:
            code = proc.stop()
            if code != 0:
                tail = proc.log.read_text(errors="replace").strip().splitlines()[-8:]
                bad.append(f"{proc.log.name} exited with {code}: " + " | ".join(tail))
        assert not bad, "; ".join(bad)
        return len(live)

    def kill_all(self) -> None:
        for proc in self.replicas:
            if proc is not None:
                proc.kill()

    def logs(self) -> str:
        return "".join(
            f"==== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.folder.glob("replica*.log"))
        )

    def log_count(self, pattern: str) -> int:
        return len(self.log_matches(pattern))

    def log_matches(self, pattern: str) -> list[str]:
        """Every match of `pattern` (its first group, if it has one) in every replica's log."""
        return [
            m
            for p in self.folder.glob("replica*.log")
            for m in re.findall(pattern, p.read_text(errors="replace"))
        ]


def fleet_config(
    tmp: Path,
    dsn: str,
    n_models: int,
    *,
    lease_seconds: float = 3.0,
    heartbeat_seconds: float = 0.5,
    workers: int = 2,
    poll: float = 0.2,
    smtp: dict[str, object] | None = None,
    reference_rows: int = 600,
    extra_top: str = "",
    model_extra: str = "",
) -> Path:
    """One config for every replica: `n_models` directory models m00.. with their own
    incoming folder, a shared reference, drift triggers (dry run: no Airflow here)."""
    reference = tmp / "reference.parquet"
    frame(reference_rows, seed=1).to_parquet(reference)
    numeric = ", ".join(f'"{c}"' for c in NUMERIC)
    text = f"""
[daemon]
state_dir = "{tmp / "state"}"
poll_interval_seconds = {poll}
workers = {workers}
shutdown_timeout_seconds = 10

[metrics]
port = 0

[registry]
path = "{tmp / "registry"}"

[state]
backend = "postgres"
dsn = "{dsn}"
lease_seconds = {lease_seconds}
heartbeat_seconds = {heartbeat_seconds}
claim_seconds = 5
"""
    text += extra_top
    if smtp is not None:
        text += "\n[smtp]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in smtp.items())
        # No digests (each alert its own mail, counted by Message-ID); a drift mail whose
        # report's replica was killed waits 3 s for it, not 2 minutes.
        text += "\n[alerts]\ndigest_window_seconds = 0\ndigest_threshold = 100000\n"
        text += "report_wait_seconds = 3\n"
    for i in range(n_models):
        name = model_name(i)
        (tmp / "in" / name).mkdir(parents=True, exist_ok=True)
        text += f"""
[models.{name}]
reference = "{reference}"
source = {{ kind = "directory", path = "{tmp / "in" / name}", settle_seconds = 0 }}
columns = {{ numeric = [{numeric}], categorical = ["c"], prediction = "p" }}
policy = {{ consecutive = 2, resolve_after = 2, dry_run = false }}
{model_extra}
"""
    cfg = tmp / "watcher.toml"
    cfg.write_text(text)
    return cfg


def model_name(i: int) -> str:
    return f"m{i:02d}"


# Per model: clean, drift, drift (the incident opens, a retrain is triggered), clean x3.
SHIFTS = (0.0, 2.0, 2.0, 0.0, 0.0, 0.0)


def drop_wave(tmp: Path, n_models: int, wave: int, rows: int = 300, tag: str = "") -> None:
    """Batch `wave` of every model (b0{tag}.parquet, b1{tag}.parquet, ...)."""
    for i in range(n_models):
        df = frame(rows, seed=1000 * i + wave, shift=SHIFTS[wave % len(SHIFTS)])
        drop(tmp / "in" / model_name(i), f"b{wave}{tag}.parquet", df)


def finished(store: StateStore) -> int:
    """Batches that ended (scored, rejected or failed), all models."""
    rows = store._read("SELECT COUNT(*) AS n FROM batches WHERE status != 'claimed'")
    return int(rows[0]["n"])


def wait_finished(store: StateStore, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    done = finished(store)
    while done < n and time.monotonic() < deadline:
        time.sleep(0.25)
        done = finished(store)
    return done


def per_batch_counts(store: StateStore, table: str) -> dict[tuple[str, str], int]:
    rows = store._read(
        f"SELECT model, batch_id, COUNT(*) AS n FROM {table} WHERE batch_id IS NOT NULL "
        "GROUP BY model, batch_id"
    )
    return {(r["model"], r["batch_id"]): int(r["n"]) for r in rows}
