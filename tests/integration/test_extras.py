"""The optional extras are optional: with psycopg and evidently made unimportable (a
meta-path hook in a fresh interpreter, standing in for an install without the `sql` and
`reports` extras, which this shared virtualenv cannot be), the daemon scores a directory
batch and mails nothing it cannot; a `sql` source says which extra to install. SQLAlchemy
is not optional: the state's schema versions (Alembic) need it on SQLite too."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from support import frame, write_config

_BLOCK = """
import importlib.abc, sys

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psycopg", "evidently"):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, Missing())
"""


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        cwd=tmp_path,
    )


def test_a_directory_source_daemon_needs_neither_sql_nor_evidently(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    # Two drifted batches open a drift incident, whose mail would attach evidently's report.
    frame(300, seed=7, shift=2.0).to_parquet(tmp_path / "incoming" / "b1.parquet")
    frame(300, seed=8, shift=2.0).to_parquet(tmp_path / "incoming" / "b2.parquet")
    done = _run(
        f"""
        import asyncio
        from pathlib import Path
        from watcher.config import load_config
        from watcher.daemon import Daemon
        from watcher.state import StateStore

        settings = load_config(Path({str(cfg)!r}))

        async def main():
            daemon = Daemon(settings)
            task = asyncio.create_task(daemon.run())
            store = StateStore(settings.daemon.state_dir / "state.db")
            for _ in range(600):
                if len(store.processed_ids("m")) == 2:
                    break
                await asyncio.sleep(0.1)
            print("processed", sorted(store.processed_ids("m")))
            print("status", store.batch_status("m", "b1.parquet"), store.drift_streak("m"))
            pending = store.outbox_items(status="pending")
            kinds = sorted(str(i["payload"].get("alert")) for i in pending)
            print("alerts", kinds)
            store.close()
            daemon.request_stop()
            await asyncio.wait_for(task, 30)

        asyncio.run(main())
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                        ("psycopg", "evidently"))
        print("loaded", loaded)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "processed ['b1.parquet', 'b2.parquet']" in done.stdout
    assert "status scored" in done.stdout
    assert "'drift_persisting'" in done.stdout  # the incident's alert, without a report
    assert "loaded []" in done.stdout


def test_a_sql_source_without_the_extra_says_which_to_install(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    text = cfg.read_text()
    start = text.index("source = {")
    end = text.index("\n", start)
    sql = 'source = { kind = "sql", dsn = "postgresql://u@127.0.0.1:1/db", table = "preds" }'
    cfg.write_text(text[:start] + sql + text[end:])
    done = _run(
        f"""
        import asyncio
        from pathlib import Path
        from watcher.config import load_config
        from watcher.daemon import Daemon
        from watcher.errors import ConfigError

        settings = load_config(Path({str(cfg)!r}))
        try:
            asyncio.run(Daemon(settings).run())
        except ConfigError as exc:
            print("ConfigError:", exc)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ConfigError: model 'm' reads a sql source" in done.stdout
    assert "pip install 'watcher-drift[sql]'" in done.stdout
