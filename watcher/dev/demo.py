"""`watcher demo`: the whole loop on real data, on this machine, in one command.

Starts, in a project-local work folder: an SMTP sink that saves every mail as a .eml file,
Airflow 3 standalone (SQLite, LocalExecutor) with `retrain_dags/` as its DAGs, the watcher
daemon, and Prometheus when its binary is installed. Then it replays the data week by
week (`watcher.dev.replay`), shows what happens live, prints a summary and stops everything
(also on Ctrl-C), unless asked to keep the services running for a look.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tomllib
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.live import Live
from rich.table import Table

from watcher.config import Settings, dump_toml, load_config
from watcher.dev.localservices import (
    AIRFLOW_PASSWORD,
    AIRFLOW_USER,
    MailSink,
    Service,
    free_port,
    spawn,
    start_airflow,
    start_prometheus,
    wait_for_dag,
)
from watcher.dev.replay import PeriodResult, Replay, monthly_mae, period_seconds
from watcher.registry_backend import open_registry
from watcher.views import describe_outcome, run_outcome

REPO = Path(__file__).resolve().parents[2]  # watcher/dev/demo.py -> the repository


@dataclass
class DemoRun:
    workdir: Path
    config_path: Path
    settings: Settings
    model: str
    mail: MailSink
    services: list[Service] = field(default_factory=list)
    results: list[PeriodResult] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.mail.stop()


def demo_config(example: Path, workdir: Path, ports: dict[str, int]) -> tuple[Path, str]:
    """The example config with every path, port and service pointed into `workdir`."""
    raw = tomllib.loads(example.read_text())
    model = next(iter(raw["models"]))
    m = raw["models"][model]
    base = example.parent.resolve()
    for key in ("reference",):
        if key in m:
            m[key] = str((base / m[key]).resolve())
    retrain = m.setdefault("retrain", {})
    if "base_training_data" in retrain:
        retrain["base_training_data"] = str((base / retrain["base_training_data"]).resolve())
    m["source"] = {
        **m.get("source", {}),
        "kind": "directory",
        "path": str(workdir / "data" / "incoming"),
        "labels_path": str(workdir / "data" / "labels"),
        "settle_seconds": 0,
    }
    # A demo year passes in minutes: no real-time cooldown, a cap per replay not per day.
    m["policy"] = {**m.get("policy", {}), "cooldown_seconds": 0, "daily_cap": 100}
    m["recipients"] = ["oncall@example.com"]
    raw["daemon"] = {
        **raw.get("daemon", {}),
        "state_dir": str(workdir / "state"),
        "poll_interval_seconds": 0.5,
    }
    raw["registry"] = {**raw.get("registry", {}), "path": str(workdir / "registry")}
    raw["metrics"] = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": ports["metrics"],
        "detail": "feature",  # the demo's dashboards show per-feature drift
    }
    raw["airflow"] = {
        "enabled": True,
        "url": f"http://127.0.0.1:{ports['airflow']}",
        "username": AIRFLOW_USER,
        "password": AIRFLOW_PASSWORD,
        "poll_interval_seconds": 2,
    }
    raw["smtp"] = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": ports["smtp"],
        "security": "none",
        "sender": "watcher@localhost",
        "recipients": ["oncall@example.com"],
    }
    raw["alerts"] = {
        **raw.get("alerts", {}),
        "grafana_url": "http://localhost:3000",
        "digest_window_seconds": 0,
    }
    path = workdir / "watcher.toml"
    path.write_text(dump_toml(raw))
    return path, model


# Each service's usual port, tried first when no --port-base is given.
USUAL_PORTS = {"metrics": 9108, "airflow": 18080, "smtp": 1025, "prometheus": 9090}
# Airflow's worker and triggerer log servers listen too (fixed defaults 8793/8794).
LOG_SERVERS = (
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
)


def demo_ports(port_base: int | None) -> dict[str, int]:
    """The port of each service: the usual ones (None), any free ones (0), or `port_base`
    and the five above it (metrics, Airflow, SMTP, Prometheus, Airflow's two log servers),
    each replaced by a free one if taken, so a shared machine's range is kept."""
    names = [*USUAL_PORTS, *LOG_SERVERS]
    if port_base is None:
        return {name: free_port(USUAL_PORTS.get(name)) for name in names}
    return {name: free_port(port_base + i if port_base else None) for i, name in enumerate(names)}


def _row(r: PeriodResult) -> list[str]:
    drift = (
        "-" if r.drift_share is None else f"{r.drift_share:.2f}" + (" ⚠" if r.dataset_drift else "")
    )
    run = "" if not r.run_id else f"{r.run_state or 'pending'}"
    version = r.served_version + (
        f"→{r.version_after}" if r.version_after and r.version_after != r.served_version else ""
    )
    return [
        str(r.index),
        f"{r.start:%m-%d}",
        str(r.rows),
        drift,
        ", ".join(r.top_features) or "-",
        r.decision or r.status,
        run,
        version,
        f"{r.mae:.1f}",
        f"{r.baseline_mae or 0:.1f}",
    ]


def _table(results: list[PeriodResult], title: str = "", error: str = "MAE") -> Table:
    t = Table(title=title or "watcher demo: Bikeshare 2011 replayed week by week", expand=False)
    for col in (
        "period",
        "from",
        "rows",
        "drift share",
        "top drifted",
        "decision",
        "retrain run",
        "model",
        error,
        f"{error} no retrain",
    ):
        t.add_column(
            col, justify="right" if col in ("rows", error, f"{error} no retrain") else "left"
        )
    for r in results[-25:]:
        t.add_row(*_row(r))
    return t


def run_demo(
    example: Path,
    workdir: Path,
    data_loader: Callable[[Settings, str], pd.DataFrame],
    bootstrap: Callable[[Settings, str], str],
    *,
    weeks: int | None = None,
    speed: float = 8.0,
    wait_for_retrain: bool = False,
    keep_running: bool = False,
    console: Console | None = None,
    skip: int = 8,
    every: str = "7D",
    title: str = "",
    port_base: int | None = None,
) -> DemoRun:
    """Run the loop on `data_loader`'s table: `bootstrap` trains version 1 (on the first
    `skip` periods), then the rest is replayed period by period (`every`, a pandas offset)."""
    console = console or Console()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ports = demo_ports(port_base)
    config_path, model = demo_config(example, workdir, ports)
    settings = load_config(config_path)
    given = load_config(example).models[model].policy
    console.print(
        f"policy for the replay: cooldown_seconds 0 (configured: {given.cooldown_seconds:g}), "
        f"daily_cap 100 (configured: {given.daily_cap}): periods pass in seconds here, so "
        "real-time guardrails would suppress every trigger after the first",
        highlight=False,
    )
    demo = DemoRun(workdir, config_path, settings, model, MailSink(workdir / "mail", ports["smtp"]))
    try:
        demo.mail.start()
        console.print(
            f"[bold]1/5[/bold] SMTP sink on 127.0.0.1:{ports['smtp']}, "
            f"mails saved in {demo.mail.folder}"
        )
        version = bootstrap(settings, model)
        console.print(
            f"[bold]2/5[/bold] model {model} version {version} trained on the first weeks, "
            "in production"
        )
        console.print("[bold]3/5[/bold] starting Airflow 3 (standalone, SQLite) …")
        smtp_conn = json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": ports["smtp"],
                "extra": {
                    "disable_ssl": True,
                    "disable_tls": True,
                    "from_email": "airflow@localhost",
                },
            }
        )
        airflow = start_airflow(
            workdir / "airflow",
            ports["airflow"],
            REPO / "retrain_dags",
            {
                "WATCHER_CONFIG": str(config_path),
                "AIRFLOW_CONN_SMTP_DEFAULT": smtp_conn,
                **{name: str(ports[name]) for name in LOG_SERVERS},
            },
        )
        demo.services.append(airflow)
        wait_for_dag(airflow.url, settings.dag_id(model))
        demo.urls["airflow"] = f"{airflow.url} (login {AIRFLOW_USER} / {AIRFLOW_PASSWORD})"
        console.print(f"      Airflow UI {demo.urls['airflow']}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        daemon = spawn(
            "watcher",
            [sys.executable, "-m", "watcher", "run", "--config", str(config_path)],
            workdir / "logs" / "watcher.log",
            env,
            url=f"http://127.0.0.1:{ports['metrics']}/metrics",
        )
        demo.services.append(daemon)
        demo.urls["metrics"] = daemon.url
        console.print(f"[bold]4/5[/bold] watcher daemon running, metrics at {daemon.url}")
        prom = start_prometheus(
            workdir / "prometheus",
            ports["prometheus"],
            f"127.0.0.1:{ports['metrics']}",
            REPO / "dashboards" / "prometheus" / "rules" / "watcher.rules.yml",
        )
        if prom is not None:
            demo.services.append(prom)
            demo.urls["prometheus"] = prom.url
            console.print(f"      Prometheus at {prom.url}")
        console.print("[bold]5/5[/bold] replaying production traffic …")
        replay = Replay(settings, model, data_loader(settings, model))
        error = "error rate" if settings.models[model].retrain.task == "classification" else "MAE"
        with Live(_table([], title, error), console=console, refresh_per_second=4) as live:

            def show(r: PeriodResult) -> None:
                demo.results.append(r)
                live.update(_table(demo.results, title, error))
                if not daemon.alive():
                    raise RuntimeError(f"the watcher daemon exited; see {daemon.log_path}")

            replay.run(
                skip=skip,
                every=every,
                limit=weeks,
                period_seconds=period_seconds(speed),
                wait_for_retrain=wait_for_retrain,
                on_period=show,
            )
        console.print("waiting for the last retrain to end …")
        replay.wait_idle()
        states, signals = replay.run_states(), replay.run_signals()
        replay.close()
        registry = open_registry(settings.registry)
        for r in demo.results:
            if r.run_id in states:
                r.run_state, r.signal = states[r.run_id], signals.get(r.run_id)
                r.outcome = run_outcome(registry, model, r.run_id, r.run_state)["outcome"]
        save_summary(demo, daemon)
        print_summary(demo, console)
        if keep_running:
            console.print("[bold]services keep running[/bold]; press Ctrl-C to stop them")
            with contextlib.suppress(KeyboardInterrupt):
                while all(s.alive() for s in demo.services):
                    daemon.proc.wait(timeout=3600)
    finally:
        demo.stop()
    return demo


def save_summary(demo: DemoRun, daemon: Service) -> None:
    """summary.json and a last scrape of /metrics, for people and for the end-to-end test."""
    with contextlib.suppress(OSError), urllib.request.urlopen(daemon.url, timeout=10) as resp:
        (demo.workdir / "metrics.txt").write_bytes(resp.read())
    summary = {
        "model": demo.model,
        "weeks": [
            {k: (str(v) if isinstance(v, pd.Timestamp) else v) for k, v in vars(r).items()}
            for r in demo.results
        ],
        "mails": [str(p) for p in sorted(demo.mail.folder.glob("*.eml"))],
        "urls": demo.urls,
    }
    (demo.workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def print_summary(demo: DemoRun, console: Console) -> None:
    results = demo.results
    triggered = [r for r in results if r.decision == "triggered"]
    registry = open_registry(demo.settings.registry)
    kept = [v.version for v in registry.list_versions(demo.model)]
    production = registry.production_version(demo.model)
    # Versions are numbered in deployment order and only a deployment registers one; the
    # oldest may have been pruned (registry.keep_versions), so count from the newest.
    deployed = max((int(v) for v in kept), default=1) - 1
    console.rule("[bold]summary")
    outcomes = Counter(r.outcome or "pending" for r in triggered)
    signals = Counter(r.signal or "?" for r in triggered)
    console.print(
        f"periods replayed: {len(results)}; retrains triggered: {len(triggered)} ("
        + ", ".join(f"{n} {kind}" for kind, n in sorted(signals.items()))
        + "): "
        + ", ".join(f"{n} {kind}" for kind, n in sorted(outcomes.items()))
        + f"; new versions deployed: {deployed} "
        f"(production: {production}; kept in the registry: {kept})",
        highlight=False,
    )
    # Why each retrain happened (the signal that fired, with its numbers) and what it did.
    for r in triggered:
        done = run_outcome(registry, demo.model, r.run_id or "", r.run_state or "pending")
        outcome = describe_outcome(done)
        console.print(
            f"  retrain at period {r.index} ({r.start:%Y-%m-%d}) because {r.reason}\n"
            f"    → run {r.run_state or 'pending'}, {outcome}",
            highlight=False,
        )
    error = (
        "error rate" if demo.settings.models[demo.model].retrain.task == "classification" else "MAE"
    )
    table = Table("month", f"{error} with the loop", f"{error} without retraining")
    monthly = monthly_mae(results) if results else pd.DataFrame()
    for month, row in monthly.iterrows():
        table.add_row(
            str(month), f"{row['mae_with_loop']:.1f}", f"{row['mae_without_retraining']:.1f}"
        )
    if results:
        rows = sum(r.rows for r in results)
        loop = sum(r.mae * r.rows for r in results) / rows
        base = sum((r.baseline_mae or 0) * r.rows for r in results) / rows
        table.add_row("all", f"{loop:.1f}", f"{base:.1f}")
    console.print(table)
    mails = sorted(demo.mail.folder.glob("*.eml"))
    console.print(f"mails written: {len(mails)} in {demo.mail.folder}")
    for m in demo.mail.messages[:20]:
        console.print(f"  - {m['Subject']}")
    for name, url in demo.urls.items():
        console.print(f"{name}: {url}")
