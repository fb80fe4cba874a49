"""`watcher migrate`: upgrade the state database to this watcher's schema by hand (the
daemon does it at start unless `[state] auto_migrate = false`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from watcher.config import load_config
from watcher.errors import WatcherError
from watcher.state.config import state_target
from watcher.state.db import DB_ERRORS, connect_postgres, connect_sqlite
from watcher.state.migrate import check_known, current_revision, revisions, upgrade

out = Console()
err = Console(stderr=True, soft_wrap=True)


def migrate(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="WATCHER_CONFIG", help="TOML config file."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Only report; exit 1 when an upgrade is due."),
    ] = False,
) -> None:
    """Upgrade the state database's schema to this watcher's (back it up first)."""
    try:
        settings = load_config(config)
        target = state_target(settings.state, settings.daemon.state_dir)
        head, _ = revisions()
        if target.path is not None:
            conn = connect_sqlite(target.path)
        else:
            conn = connect_postgres(
                target.conninfo, connect_timeout=settings.state.connect_timeout_seconds
            )
        try:
            revision = current_revision(conn)
        finally:
            conn.close()
        check_known(revision, target.where)
        if check:
            due = revision != head
            out.print(
                f"state database {target.where}: revision {revision or 'none'}, this watcher "
                f"needs {head}" + ("; run `watcher migrate`" if due else " (up to date)"),
                highlight=False,
            )
            raise typer.Exit(1 if due else 0)
        before, after = upgrade(target.sqlalchemy_url, target.where)
    except WatcherError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    except DB_ERRORS as exc:
        err.print(f"[red]error:[/red] cannot open the state database: {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if before == after:
        out.print(f"state database {target.where}: already at revision {after}", highlight=False)
    else:
        out.print(
            f"state database {target.where}: upgraded from revision {before or 'none'} to {after}",
            highlight=False,
        )
