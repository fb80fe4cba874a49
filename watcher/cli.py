"""The `watcher` command line.

Size: one thin function per command on one Typer app, each calling the module that does
the work (the daemon, `watcher.state`, the registry, `watcher.backtest`, `watcher.dev`);
kept in one file so the whole command table, its options and their help read in one place.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from watcher import DISTRIBUTION, __version__
from watcher.config import Settings, load_config
from watcher.errors import WatcherError
from watcher.state.commands import migrate

app = typer.Typer(
    help="watcher keeps ML models healthy in production: drift, metrics, alerts, retraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PIPED_WIDTH = 220


def _piped_width() -> int | None:
    """Piped into a file, a pager or CI's log, rich would wrap at 80 columns and cut
    every cell of a wide table (the backtest's has thirteen) to "…". A terminal keeps its
    own width, and COLUMNS, when set, wins."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None
    return PIPED_WIDTH


out = Console(width=_piped_width())
# Errors are read by people and grep alike: never wrap them mid-sentence.
err = Console(stderr=True, soft_wrap=True)

app.command()(migrate)  # `watcher migrate`, in the state package

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"watcher {__version__} ({DISTRIBUTION})\n")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """watcher keeps ML models healthy in production: drift, metrics, alerts, retraining."""


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="WATCHER_CONFIG", help="TOML config file."),
]


def _load(config: Path | None) -> Settings:
    try:
        return load_config(config)
    except WatcherError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from exc


@app.command()
def run(config: ConfigOpt = None) -> None:
    """Run the daemon until SIGTERM or Ctrl-C (SIGUSR1 prints every thread's stack)."""
    from watcher.process_signals import enable_stack_dumps, exit_on_stop_while_starting

    enable_stack_dumps()
    with exit_on_stop_while_starting():  # until the daemon's event loop takes them over
        from watcher.daemon import Daemon
        from watcher.logs import setup_logging
        from watcher.secrets import secret_values

        settings = _load(config)
        setup_logging(
            settings.daemon.log_format, settings.daemon.log_level, secrets=secret_values(settings)
        )
        try:
            code = asyncio.run(Daemon(settings).run())
        except WatcherError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from exc
    raise typer.Exit(code)


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="TOML config file.")]) -> None:
    """Validate a config file (and WATCHER_* overrides). Exit 0 valid, 2 invalid."""
    from watcher.config import check_runtime

    settings = _load(config)
    try:
        check_runtime(settings)
    except WatcherError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from exc
    out.print(f"[green]ok[/green]: {config} is valid")
    for name, model in settings.models.items():
        src = model.source
        where = src.path if src.kind == "directory" else src.table
        out.print(
            f"  model [bold]{name}[/bold]: {src.kind} source {where}, "
            f"{len(model.columns.numeric)} numeric + {len(model.columns.categorical)} "
            f"categorical features, DAG {settings.dag_id(name)}"
        )
        out.print(f"    retrain when: {_policy_summary(model)}", highlight=False)
        out.print(f"    drift: {_noise_summary(name, model, settings)}", highlight=False)


def _policy_summary(model: Any) -> str:
    """The policy in one sentence: each trigger with its parameters, then the guardrails."""
    from watcher.signals import performance_metric

    p = model.policy
    parts = []
    for signal in p.triggers:
        if signal == "drift":
            weighted = ", importance-weighted" if p.drift.importance_weighted else ""
            parts.append(f"drift in {p.consecutive} consecutive batches{weighted}")
        elif signal == "performance":
            perf = p.performance
            metric = performance_metric(model)
            note = ""
            if metric != model.retrain.primary_metric:
                note = (
                    " (roc_auc needs probabilities: followed as accuracy; set columns.score "
                    "to the positive class's probability to follow roc_auc)"
                )
            elif model.columns.score:
                note = f" (from the probabilities in column {model.columns.score!r})"
            how = (
                f"retrain cost {perf.threshold:g} periods' excess loss"
                if perf.detector == "cost"
                else f"tolerance {perf.tolerance:.0%}, threshold {perf.threshold:g}"
            )
            parts.append(
                f"performance: {metric} loss vs the {perf.baseline} level, {perf.detector} "
                f"({how}, periods pooled to {perf.min_rows}+ labelled rows){note}"
            )
        else:
            ages = [f"{p.max_age_batches} batches"] if p.max_age_batches else []
            ages += [f"{p.max_age_seconds:g} s"] if p.max_age_seconds else []
            parts.append(f"max_age: older than {' or '.join(ages)}")
    guards = [f"cooldown {p.cooldown_seconds:g} s", f"at most {p.daily_cap} a day"]
    if p.min_age_batches or p.min_age_seconds:
        guards.append(f"not before {p.min_age_batches} batches / {p.min_age_seconds:g} s")
    if p.dry_run:
        guards.append("dry run")
    return "; ".join(parts) + " | " + ", ".join(guards)


def _noise_summary(name: str, model: Any, settings: Settings) -> str:
    """Where dataset drift starts to mean something against the reference in use."""
    from watcher.reference import load_reference

    try:
        ref = load_reference(name, model, settings)
    except (WatcherError, OSError, ValueError) as exc:
        return f"reference not checked ({exc})"
    noise = ref.noise
    if noise is None or not noise.rows:
        tests = "/".join(noise.tests) if noise else "-"
        return f"reference {ref.version} ({ref.n_rows} rows, {tests}): any batch size works"
    alarms = ", ".join(f"{n} rows {a:.0%}" for n, a in noise.false_alarm.items())
    remedy = (
        "scored with ks/chisquare (small_batches = 'pvalue')"
        if model.drift.small_batches == "pvalue"
        else "scored as configured, with a warning (small_batches = 'warn')"
    )
    return (
        f"reference {ref.version} ({ref.n_rows} rows, {'/'.join(noise.tests)}): batches "
        f"under {noise.rows} rows show dataset drift by chance (no-change batches drifted: "
        f"{alarms}); such batches are {remedy}"
    )


@app.command()
def score(
    reference: Annotated[Path, typer.Argument(help="Reference data (Parquet or CSV).")],
    current: Annotated[Path, typer.Argument(help="Current data (Parquet or CSV).")],
    config: ConfigOpt = None,
    model: Annotated[
        str | None, typer.Option(help="Model in the config to take columns from.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Score CURRENT against REFERENCE once. Exit 0 no dataset drift, 1 drift, 2 error."""
    from watcher.drift import engine
    from watcher.fileio import read_table

    try:
        ref_df, cur_df = read_table(reference), read_table(current)
        options: dict[str, Any] = {}
        if config is not None:
            settings = _load(config)
            name = model or (next(iter(settings.models)) if len(settings.models) == 1 else None)
            if name is None or name not in settings.models:
                err.print(f"error: pass --model, one of {sorted(settings.models)}")
                raise typer.Exit(2)
            mcfg = settings.models[name]
            specs, prediction = engine.specs_from_config(mcfg)
            options = engine.options_from_config(mcfg.drift)
        else:
            specs, prediction = engine.infer_columns(ref_df), None
        missing = sorted(
            {s.name for s in specs} - set(cur_df.columns)
            | {s.name for s in specs} - set(ref_df.columns)
        )
        if missing:
            err.print(f"error: column(s) {missing} missing from the reference or current data")
            raise typer.Exit(2)
        prepared = engine.prepare_reference(ref_df, specs, version="cli", prediction=prediction)
        result = engine.score(prepared, cur_df, **options)
    except (OSError, ValueError, WatcherError) as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if as_json:
        sys.stdout.write(json.dumps(result.to_json_dict(), indent=2) + "\n")
    else:
        table = Table(title=f"{current.name} vs {reference.name}")
        for col in ("column", "stattest", "score", "threshold", "drifted"):
            table.add_column(col, justify="right" if col in ("score", "threshold") else "left")
        for name, c in result.columns.items():
            table.add_row(
                name,
                c.stattest,
                f"{c.score:.4g}",
                f"{c.threshold:.4g}",
                "[red]yes[/red]" if c.drifted else "no",
            )
        out.print(table)
        for name, (_test, why) in result.failures.items():
            out.print(f"[yellow]not scored[/yellow]: {name}: {why}", highlight=False)
        verdict = (
            "[red]DATASET DRIFT[/red]"
            if result.dataset_drift
            else "[green]no dataset drift[/green]"
        )
        out.print(
            f"{verdict}: {result.n_drifted}/{result.n_columns} columns drifted "
            f"(share {result.drift_share:.2f}, threshold {options.get('drift_share', 0.5)})"
        )
    raise typer.Exit(1 if result.dataset_drift else 0)


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = time.time() - ts
    return (
        f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"
    )


@app.command()
def status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Per model: last batches, drift streak, signals, pending actions, last runs, decision."""
    from watcher.registry_backend import open_registry
    from watcher.secrets import Scrubber, secret_values
    from watcher.views import describe_outcome, run_outcome, status_document

    settings = _load(config)
    # Errors stored before the store scrubbed them may still hold an echoed secret.
    scrub = Scrubber(secret_values(settings))
    store = _open_state(settings)
    registry = open_registry(settings.registry)
    if as_json:
        try:
            document = status_document(settings, store, registry=registry)
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
        finally:
            store.close()
        return
    try:
        for name in settings.models:
            out.rule(
                f"[bold]{name}[/bold]  reference {store.reference_version(name) or '-'}"
                f"  drift streak {store.drift_streak(name)}"
            )
            batches = Table("batch", "status", "rows", "drift share", "drift", "when", box=None)
            for b in store.recent_batches(name, 5):
                batches.add_row(
                    b.batch_id,
                    b.status,
                    str(b.rows or "-"),
                    "-" if b.drift_share is None else f"{b.drift_share:.2f}",
                    "yes" if b.dataset_drift else ("-" if b.status != "scored" else "no"),
                    _ago(b.finished_at),
                )
            out.print(batches)
            last = next((b for b in store.recent_batches(name, 5) if b.result), None)
            if last is not None and last.result and last.result.get("small_batch"):
                out.print(f"small batch: {last.result['small_batch']['note']}", highlight=False)
            for d in store.decisions(name, 1):
                out.print(f"last decision: [bold]{d.outcome}[/bold] ({_ago(d.at)}): {d.reason}")
            _print_signals(store, name, settings.models[name].policy.triggers)
            pending = store.outbox_items(name, status="pending")
            out.print(
                f"pending actions: {len(pending)}"
                + "".join(
                    f"\n  {p['kind']} {p['key']} (attempts {p['attempts']}"
                    f"{', last error: ' + scrub(p['last_error']) if p['last_error'] else ''})"
                    for p in pending
                )
            )
            runs = Table("run", "state", "outcome", "why", "triggered", "ended", box=None)
            for r in store.runs(name, limit=5):
                runs.add_row(
                    r.run_id,
                    r.state,
                    describe_outcome(run_outcome(registry, name, r.run_id, r.state)),
                    str(r.conf.get("reason_kind") or ("manual" if r.conf.get("manual") else "-")),
                    _ago(r.triggered_at),
                    _ago(r.ended_at),
                )
            if runs.row_count:
                out.print(runs)
    finally:
        store.close()


def _print_signals(store: Any, model: str, triggers: Sequence[str]) -> None:
    """Each signal's value at the latest decision, against its threshold."""
    last = store.last_decision_with_readings(model)
    if last is None:
        return
    table = Table("signal", "triggers", "value", "threshold", "fires", "reading", box=None)
    for r in last.readings:
        table.add_row(
            r["signal"],
            "yes" if r["signal"] in triggers else "no",
            f"{r['value']:.3g}",
            f"{r['threshold']:.3g}",
            "[red]yes[/red]" if r["fired"] else "no",
            r["reason"],
        )
    out.print(f"signals at the decision {_ago(last.at)}:")
    out.print(table)


@app.command()
def trigger(
    model: Annotated[str, typer.Argument(help="Model whose retraining DAG to trigger.")],
    reason: Annotated[str, typer.Option(help="Why; recorded and sent to the DAG.")] = "manual",
    config: ConfigOpt = None,
) -> None:
    """Trigger a retrain by hand, through the same outbox as automatic triggers."""
    from watcher.policy import run_id_for
    from watcher.retrain.request import RetrainRequest
    from watcher.state import Action

    settings = _load(config)
    if model not in settings.models:
        err.print(f"error: unknown model {model!r}; configured: {sorted(settings.models)}")
        raise typer.Exit(2)
    store = _open_state(settings)
    # Microseconds and a random tail: two triggers in the same second are two runs.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:6]
    run_id = run_id_for(model, f"manual-{stamp}")
    conf = RetrainRequest(model, reason=reason, manual=True).to_conf()
    try:
        with store.transaction() as conn:
            store.record_decision(
                conn, model=model, batch_id=None, outcome="manual", reason=reason, run_id=run_id
            )
            store.enqueue(
                conn,
                Action(
                    "trigger",
                    run_id,
                    model,
                    {
                        "dag_id": settings.dag_id(model),
                        "run_id": run_id,
                        "conf": conf,
                        "note": f"watcher (manual): {reason}",
                    },
                ),
            )
            store.reset_streak(conn, model)
    finally:
        store.close()
    out.print(f"queued {run_id} for {settings.dag_id(model)}; the running daemon delivers it")


@app.command("bootstrap")
def bootstrap_model(
    model: Annotated[str, typer.Argument(help="Model to give a first version.")],
    data: Annotated[
        Path | None,
        typer.Option(help="Training table (CSV/Parquet); default: the bundled Bikeshare data."),
    ] = None,
    weeks: Annotated[int | None, typer.Option(help="Train on the first N weeks only.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Train version 1 with the retraining steps and put it in production (once)."""
    from watcher.retrain import bootstrap as boot

    settings = _load(config)
    try:
        if data is None:
            frame = boot.load_example_data(settings, model)
            weeks = weeks or boot.EXAMPLE_WEEKS
        else:
            frame = boot.read_dataset(data, "table")
        with _progress() as progress:
            progress.add_task(f"training version 1 of {model}", total=None)
            info = boot.bootstrap(settings, model, frame, weeks=weeks)
    except WatcherError as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in info.metrics.items())
    out.print(f"{model} version {info.version} is in production ({metrics})")
    history = boot.history_path(settings.models[model])
    if history is not None and history.is_file():
        out.print(
            f"its training rows are kept in {history}: retraining windows read them like "
            "scored batches",
            highlight=False,
        )


@app.command()
def models(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every registered version of each model; the production one is marked."""
    from watcher.registry_backend import open_registry

    settings = _load(config)
    registry = open_registry(settings.registry)
    if as_json:
        from watcher.views import models_document

        try:
            sys.stdout.write(json.dumps(models_document(settings, registry), indent=2) + "\n")
        except WatcherError as exc:
            err.print(f"error: {exc}", highlight=False)
            raise typer.Exit(2) from exc
        return
    names = sorted(set(settings.models) | set(registry.models()))
    table = Table("model", "version", "", "created", "run", "metrics", "features", "rows")
    try:
        for name in names:
            production = registry.production_version(name)
            versions = registry.list_versions(name)
            if not versions:
                table.add_row(name, "-", "", "", "", "no version yet", "", "")
            for v in versions:
                table.add_row(
                    name,
                    v.version,
                    "[bold green]production[/]" if v.version == production else "",
                    v.created_at.strftime("%Y-%m-%d %H:%M"),
                    v.run_id or "",
                    ", ".join(f"{k} {m:.4g}" for k, m in v.metrics.items()),
                    str(len(v.features)),
                    str(v.training_rows),
                )
    except WatcherError as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    out.print(table)


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Model whose production version to switch.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Version to switch to; default: the previous one.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Switch production back, atomically; the daemon reloads the reference on its next loop."""
    from watcher.registry_backend import open_registry

    registry = open_registry(_load(config).registry)
    try:
        before = registry.production_version(model)
        after = registry.rollback(model, to)
    except WatcherError as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    out.print(f"{model}: production switched from version {before} to version {after}")


@app.command("migrate-registry")
def migrate_registry(
    source: Annotated[
        Path, typer.Option("--from", help="The file registry folder to copy versions from.")
    ],
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Only this model (repeatable).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Copy a file registry's versions into the configured MLflow registry (rerunnable)."""
    from watcher.registry import ModelRegistry
    from watcher.registry_backend import open_registry
    from watcher.registry_migrate import migrate

    settings = _load(config)
    if settings.registry.backend != "mlflow":
        err.print('error: the configured registry is not MLflow: set [registry] backend = "mlflow"')
        raise typer.Exit(2)
    if not source.is_dir():
        err.print(f"error: {source} is not a registry folder")
        raise typer.Exit(2)
    try:
        copied = migrate(ModelRegistry(source), open_registry(settings.registry), model)
    except WatcherError as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    for c in copied:
        verb = "already copied as" if c.skipped else "copied as"
        out.print(f"{c.model} version {c.source_version} {verb} version {c.target_version}")
    if not copied:
        out.print(f"no versions in {source}")


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bikeshare" / "watcher.toml"


@app.command()
def demo(
    config: Annotated[Path, typer.Option("--config", "-c", help="Example config.")] = EXAMPLE,
    workdir: Annotated[Path, typer.Option(help="Where everything of the demo is kept.")] = Path(
        "demo-run"
    ),
    weeks: Annotated[int | None, typer.Option(help="Replay only this many weeks.")] = None,
    speed: Annotated[
        float, typer.Option(help="Weeks replayed per minute (0: as fast as possible).")
    ] = 8.0,
    wait_for_retrain: Annotated[
        bool,
        typer.Option(
            "--wait-for-retrain",
            help="Hold the replay while a retrain runs, so each one serves the next week.",
        ),
    ] = False,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the services up until Ctrl-C.")
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Your own labelled table (CSV/Parquet) to replay with --config's first model; "
            "default: the bundled Bikeshare 2011."
        ),
    ] = None,
    skip: Annotated[
        int, typer.Option(help="Periods version 1 is trained on before the replay starts.")
    ] = 8,
    every: Annotated[str, typer.Option(help="Period length (pandas offset: 7D, 1D, 30D).")] = "7D",
    port_base: Annotated[
        int | None,
        typer.Option(
            help="Listen on this port and the 5 above it (metrics, Airflow, SMTP, Prometheus, "
            "Airflow's log servers); 0: any free ports. Default: 9108, 18080, 1025, 9090."
        ),
    ] = None,
) -> None:
    """The whole loop on real data: Airflow, SMTP, the daemon and a period-by-period replay.

    With --data and --config it runs on your data and config: version 1 is trained on the
    first --skip periods, the rest is replayed as production traffic, labels one period late.
    """
    from watcher.dev.demo import run_demo
    from watcher.logs import setup_logging
    from watcher.retrain.bootstrap import bootstrap_example, load_example_data

    setup_logging("text", "WARNING")
    loader, boot, title = load_example_data, bootstrap_example, ""
    if data is not None:
        try:
            loader, boot = _own_data(data, _load(config), skip, every)
        except (WatcherError, OSError, ValueError) as exc:
            err.print(f"error: {exc}", highlight=False)
            raise typer.Exit(2) from exc
        title = f"watcher demo: {data.name} replayed every {every}"
    try:
        result = run_demo(
            config,
            workdir.resolve(),
            loader,
            boot,
            weeks=weeks,
            speed=speed,
            wait_for_retrain=wait_for_retrain,
            keep_running=keep_running,
            console=out,
            skip=skip,
            every=every,
            title=title,
            port_base=port_base,
        )
    except WatcherError as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        err.print("interrupted: every service was stopped")
        raise typer.Exit(130) from None
    deployed = [
        r for r in result.results if r.version_after and r.version_after != r.served_version
    ]
    raise typer.Exit(0 if result.results else 1) if deployed or weeks else typer.Exit(0)


def _own_data(data: Path, settings: Settings, skip: int, every: str) -> tuple[Any, Any]:
    """The demo's data loader and bootstrap for a user's table and config."""
    import pandas as pd

    from watcher.fileio import read_table
    from watcher.retrain.bootstrap import bootstrap

    if not settings.models:
        raise WatcherError("the config has no models", hint="add a [models.NAME] table")
    model = next(iter(settings.models))
    cols = settings.models[model].columns
    frame = read_table(data)
    missing = [
        f"columns.{role} ({col!r})"
        for role, col in (("timestamp", cols.timestamp), ("target", cols.target))
        if not col or col not in frame
    ]
    if missing or not cols.prediction:
        raise WatcherError(
            f"{data} cannot be replayed for model {model}: "
            + (f"missing {', '.join(missing)}" if missing else "columns.prediction is not set"),
            hint="the replay needs a timestamp and the target in the data, and "
            "columns.prediction/id names in the config",
        )
    if cols.id and cols.id not in frame:
        frame[cols.id] = range(len(frame))  # label files need a key; any unique one does
    ts = pd.to_datetime(frame[cols.timestamp])
    until = ts.min().normalize() + skip * pd.Timedelta(every)

    def loader(_: Settings, __: str) -> pd.DataFrame:
        return frame

    def boot(s: Settings, m: str) -> str:
        return bootstrap(s, m, frame, until=until.to_pydatetime()).version

    return loader, boot


def _replay_guardrails(
    settings: Settings, model: str, speed: float, every: str, periods: int
) -> str | None:
    """A replay compresses days into seconds: say when the wall-clock guardrails would
    suppress triggers (a cooldown longer than a replayed period, a cap below the number
    of periods replayed)."""
    import pandas as pd

    from watcher.dev.replay import period_seconds

    policy = settings.models[model].policy
    # At speed 0 a period lasts as long as the daemon takes to score it: counted as ~1 s.
    period = period_seconds(speed) or 1.0
    real = pd.Timedelta(every).total_seconds()
    if policy.cooldown_seconds <= period and policy.daily_cap >= periods:
        return None
    return (
        f"note: cooldown_seconds = {policy.cooldown_seconds:g} and daily_cap = "
        f"{policy.daily_cap} are wall-clock guardrails, and one {every} period ({real:g} s of "
        f"data) passes in about {period:g} s here ({periods} periods): triggers after the "
        "first will be suppressed. For a replay set [models.X.policy] cooldown_seconds = 0 "
        "and daily_cap = 100 (as `watcher demo` does)"
    )


@app.command()
def replay(
    data: Annotated[Path, typer.Argument(help="Labelled data (Parquet or CSV) to replay.")],
    config: ConfigOpt = None,
    model: Annotated[str | None, typer.Option(help="Model to replay for.")] = None,
    skip: Annotated[int, typer.Option(help="Periods to skip (the training period).")] = 8,
    weeks: Annotated[int | None, typer.Option(help="Replay only this many periods.")] = None,
    every: Annotated[str, typer.Option(help="Period length (pandas offset, e.g. 7D, 1D).")] = "7D",
    speed: Annotated[
        float, typer.Option(help="Periods replayed per minute (0: as fast as possible).")
    ] = 0.0,
    wait_for_retrain: Annotated[
        bool, typer.Option("--wait-for-retrain", help="Hold the replay while a retrain runs.")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the daemon after each period.")] = True,
) -> None:
    """Feed a labelled data set to a running daemon period by period, as production would."""
    from watcher.dev.replay import PeriodResult, Replay, period_seconds
    from watcher.fileio import read_table

    settings = _load(config)
    name = model or next(iter(settings.models), None)
    if name is None:
        err.print("error: the config has no models")
        raise typer.Exit(2)

    if name not in settings.models:
        err.print(f"error: unknown model {name!r}; configured: {sorted(settings.models)}")
        raise typer.Exit(2)
    measure = "error_rate" if settings.models[name].retrain.task == "classification" else "mae"
    progress = _progress()
    task = progress.add_task("replaying", total=weeks)

    def show(p: PeriodResult) -> None:
        share = "-" if p.drift_share is None else f"{p.drift_share:.2f}"
        why = f" ({p.reason})" if p.decision == "triggered" else ""
        progress.console.print(
            f"{p.start:%Y-%m-%d} rows={p.rows} served=v{p.served_version} "
            f"drift_share={share} decision={p.decision or p.status}{why} {measure}={p.mae:.3g}",
            highlight=False,
        )
        progress.advance(task)

    try:
        replayer = Replay(settings, name, read_table(data))
        n = replayer.count(every, skip)
        note = _replay_guardrails(settings, name, speed, every, min(n, weeks or n))
        if note:
            err.print(note, highlight=False, markup=False)
        try:
            with progress:
                replayer.run(
                    skip=skip,
                    limit=weeks,
                    every=every,
                    wait=wait,
                    period_seconds=period_seconds(speed),
                    wait_for_retrain=wait_for_retrain,
                    on_period=show,
                )
        finally:
            replayer.close()
    except (WatcherError, OSError) as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc


@app.command()
def backtest(
    data: Annotated[
        Path | None,
        typer.Argument(help="Labelled history (Parquet or CSV); default: the bundled Bikeshare."),
    ] = None,
    config: ConfigOpt = None,
    model: Annotated[str | None, typer.Option(help="Model to backtest.")] = None,
    every: Annotated[str, typer.Option(help="Period length (pandas offset, e.g. 7D).")] = "7D",
    skip: Annotated[int, typer.Option(help="Periods that train version 1.")] = 8,
    label_delay: Annotated[int, typer.Option(help="Periods until labels arrive.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed (default: retrain.seed).")] = None,
    limit: Annotated[int | None, typer.Option(help="Replay only this many periods.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of error against runs.")] = None,
    jobs: Annotated[int | None, typer.Option(help="Processes (default: the cores).")] = None,
) -> None:
    """Replay labelled history and compare retraining policies: never, schedules, the
    configured policy and each signal alone (runs, deployments, error)."""
    import os

    from rich.progress import Progress

    from watcher import backtest as bt
    from watcher import backtest_report as report
    from watcher.fileio import read_table
    from watcher.retrain.bootstrap import load_example_data

    settings = _load(config)
    name = model or next(iter(settings.models), None)
    if name is None:
        err.print("error: the config has no models")
        raise typer.Exit(2)
    try:
        frame = load_example_data(settings, name) if data is None else read_table(data)
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("training", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            result = bt.run_backtest(
                settings,
                name,
                frame,
                every=every,
                skip=skip,
                label_delay=label_delay,
                seed=seed,
                jobs=jobs or os.cpu_count() or 1,
                limit=limit,
                progress=progress,
            )
    except (WatcherError, OSError) as exc:
        err.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    h = result.history
    title = (
        f"{name}: {h.n_periods - h.skip} periods of {every} after {h.skip} for version 1, "
        f"labels {h.label_delay} period(s) late"
    )
    dist = report.distances(result.results)  # two bootstraps: once for every view
    out.print(report.table(result.results, title, dist))
    out.print(
        f"{result.trainings} training runs shared by {len(result.results)} policies "
        f"in {result.seconds:.0f}s"
    )
    for r in result.results:
        if r.kind == "policy" and r.runs == 0:
            out.print(f"[yellow]{r.name} never fired[/yellow]: its error is never retraining's")
    if json_out is not None:
        seed_used = seed if seed is not None else settings.models[name].retrain.seed
        doc = report.to_dict(
            result.results, periods=h.n_periods - h.skip, seed=seed_used, dist=dist
        )
        report.write_json(json_out, doc)
    if plot is not None:
        report.plot(result.results, plot, title=title, starts=h.starts, dist=dist)


def _open_state(settings: Settings) -> Any:
    """The state database, or exit 2 saying why it cannot be opened."""
    from watcher.state import open_state

    try:
        return open_state(settings)
    except WatcherError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc


def _progress() -> Any:
    """A rich progress display: live in a terminal, nothing extra when piped or logged."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f} done"),
        TimeElapsedColumn(),
        console=out,
        transient=True,
        disable=not out.is_terminal,
    )


def main() -> None:  # pragma: no cover - console entry point
    app()
