"""The `watcher` command line."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from watcher import DISTRIBUTION, __version__
from watcher.config import Settings, load_config
from watcher.errors import WatcherError

app = typer.Typer(
    help="watcher keeps ML models healthy in production: drift, metrics, alerts, retraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
# Errors are read by people and grep alike: never wrap them mid-sentence.
err = Console(stderr=True, soft_wrap=True)

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
    """Run the daemon until SIGTERM or Ctrl-C."""
    from watcher.daemon import Daemon
    from watcher.logs import setup_logging

    settings = _load(config)
    setup_logging(settings.daemon.log_format, settings.daemon.log_level)
    try:
        code = asyncio.run(Daemon(settings).run())
    except WatcherError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="TOML config file.")]) -> None:
    """Validate a config file (and WATCHER_* overrides). Exit 0 valid, 2 invalid."""
    settings = _load(config)
    out.print(f"[green]ok[/green]: {config} is valid")
    for name, model in settings.models.items():
        src = model.source
        where = src.path if src.kind == "directory" else src.table
        out.print(
            f"  model [bold]{name}[/bold]: {src.kind} source {where}, "
            f"{len(model.columns.numeric)} numeric + {len(model.columns.categorical)} "
            f"categorical features, DAG {settings.dag_id(name)}"
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
    from watcher.retrain.data import read_table

    try:
        ref_df, cur_df = read_table(reference), read_table(current)
        drift_share, num_test, cat_test = 0.5, None, None
        if config is not None:
            settings = _load(config)
            name = model or (next(iter(settings.models)) if len(settings.models) == 1 else None)
            if name is None or name not in settings.models:
                err.print(f"error: pass --model, one of {sorted(settings.models)}")
                raise typer.Exit(2)
            mcfg = settings.models[name]
            specs, prediction = engine.specs_from_config(mcfg)
            drift_share = mcfg.drift.drift_share
            num_test, cat_test = mcfg.drift.num_stattest, mcfg.drift.cat_stattest
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
        result = engine.score(
            prepared, cur_df, drift_share=drift_share, num_stattest=num_test, cat_stattest=cat_test
        )
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
        verdict = (
            "[red]DATASET DRIFT[/red]"
            if result.dataset_drift
            else "[green]no dataset drift[/green]"
        )
        out.print(
            f"{verdict}: {result.n_drifted}/{result.n_columns} columns drifted "
            f"(share {result.drift_share:.2f}, threshold {drift_share})"
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
    """Per model: last batches, drift streak, pending actions, last runs, last decision."""
    from watcher.state import StateStore

    settings = _load(config)
    store = StateStore(settings.daemon.state_dir / "state.db")
    if as_json:
        from watcher.views import status_document

        try:
            sys.stdout.write(json.dumps(status_document(settings, store), indent=2) + "\n")
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
            for d in store.decisions(name, 1):
                out.print(f"last decision: [bold]{d.outcome}[/bold] ({_ago(d.at)}): {d.reason}")
            pending = store.outbox_items(name, status="pending")
            out.print(
                f"pending actions: {len(pending)}"
                + "".join(
                    f"\n  {p['kind']} {p['key']} (attempts {p['attempts']}"
                    f"{', last error: ' + p['last_error'] if p['last_error'] else ''})"
                    for p in pending
                )
            )
            runs = Table("run", "state", "triggered", "ended", box=None)
            for r in store.runs(name, limit=5):
                runs.add_row(r.run_id, r.state, _ago(r.triggered_at), _ago(r.ended_at))
            if runs.row_count:
                out.print(runs)
    finally:
        store.close()


@app.command()
def trigger(
    model: Annotated[str, typer.Argument(help="Model whose retraining DAG to trigger.")],
    reason: Annotated[str, typer.Option(help="Why; recorded and sent to the DAG.")] = "manual",
    config: ConfigOpt = None,
) -> None:
    """Trigger a retrain by hand, through the same outbox as automatic triggers."""
    from watcher.policy import run_id_for
    from watcher.state import Action, StateStore

    settings = _load(config)
    if model not in settings.models:
        err.print(f"error: unknown model {model!r}; configured: {sorted(settings.models)}")
        raise typer.Exit(2)
    store = StateStore(settings.daemon.state_dir / "state.db")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    run_id = run_id_for(model, f"manual-{stamp}")
    conf: dict[str, Any] = {"model": model, "reason": reason, "manual": True, "batches": []}
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
) -> None:
    """The whole loop on real data: Airflow, SMTP, the daemon and a week-by-week replay."""
    from watcher.demo import run_demo
    from watcher.logs import setup_logging
    from watcher.retrain.bootstrap import bootstrap_example, load_example_data

    setup_logging("text", "WARNING")
    try:
        result = run_demo(
            config,
            workdir.resolve(),
            load_example_data,
            bootstrap_example,
            weeks=weeks,
            speed=speed,
            wait_for_retrain=wait_for_retrain,
            keep_running=keep_running,
            console=out,
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
    from watcher.replay import PeriodResult, Replay
    from watcher.retrain.data import read_table

    settings = _load(config)
    name = model or next(iter(settings.models), None)
    if name is None:
        err.print("error: the config has no models")
        raise typer.Exit(2)

    progress = _progress()
    task = progress.add_task("replaying", total=weeks)

    def show(p: PeriodResult) -> None:
        share = "-" if p.drift_share is None else f"{p.drift_share:.2f}"
        progress.console.print(
            f"{p.start:%Y-%m-%d} rows={p.rows} served=v{p.served_version} "
            f"drift_share={share} decision={p.decision or p.status} mae={p.mae:.2f}"
        )
        progress.advance(task)

    try:
        replayer = Replay(settings, name, read_table(data))
        try:
            with progress:
                replayer.run(
                    skip=skip,
                    limit=weeks,
                    every=every,
                    wait=wait,
                    period_seconds=60.0 / speed if speed > 0 else 0.0,
                    wait_for_retrain=wait_for_retrain,
                    on_period=show,
                )
        finally:
            replayer.close()
    except (WatcherError, OSError) as exc:
        err.print(f"error: {exc}", highlight=False)
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
