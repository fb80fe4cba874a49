"""Scored batches as snapshots in a real Evidently UI workspace: a local folder, and
`evidently ui` served on a free port; an unreachable workspace loses no batch.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import run_daemon
from prometheus_client import CollectorRegistry
from support import drop, frame, wait_for, write_config

from watcher.alerts.compose import compose
from watcher.config import Settings, load_config
from watcher.dev.localservices import free_port
from watcher.state import OutboxItem, StateStore

BATCHES = {"calm.parquet": 0.0, "drifted.parquet": 1.5}


def _settings(tmp_path: Path, evidently: str) -> Settings:
    cfg = write_config(
        tmp_path,
        extra_top=f"\n[evidently]\n{evidently}\n",
        model_extra="[models.m.policy]\nconsecutive = 1\n",
    )
    return load_config(cfg)


def _run_daemon(settings: Settings, tmp_path: Path, snapshots: int) -> CollectorRegistry:
    """Score BATCHES, then wait until `snapshots` snapshot attempts ended (added or failed)."""
    for i, (name, shift) in enumerate(BATCHES.items()):
        drop(tmp_path / "incoming", name, frame(300, seed=20 + i, shift=shift))
    registry = CollectorRegistry()

    def attempts() -> float:
        return sum(
            registry.get_sample_value(
                "watcher_evidently_snapshots_total", {"model": "m", "outcome": outcome}
            )
            or 0
            for outcome in ("added", "failed")
        )

    async def run() -> None:
        async with run_daemon(settings, registry) as daemon:
            await daemon.until(lambda: attempts() >= snapshots, 120, "snapshot attempts")

    asyncio.run(run())
    store = StateStore(settings.daemon.state_dir / "state.db")
    try:
        for name in BATCHES:  # scored and committed whatever happened to the snapshot
            assert store.batch_status("m", name) == "scored"
    finally:
        store.close()
    return registry


def _outcome(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "watcher_evidently_snapshots_total", {"model": "m", "outcome": outcome}
    )
    return value or 0.0


def _snapshots(workspace: Any, project: str) -> list[Any]:
    (found,) = workspace.search_project(project)
    return [workspace.get_run(found.id, sid) for sid in workspace.list_runs(found.id)]


def test_local_workspace_gets_a_snapshot_per_scored_batch(tmp_path: Path) -> None:
    from evidently.ui.workspace import Workspace

    folder = tmp_path / "evidently-ws"
    settings = _settings(tmp_path, f'workspace = "{folder}"\nproject = "bikes"')
    registry = _run_daemon(settings, tmp_path, snapshots=2)
    assert _outcome(registry, "added") == 2
    assert _outcome(registry, "failed") == 0
    snapshots = _snapshots(Workspace(str(folder)), "bikes")
    assert sorted(s.name for s in snapshots) == ["m calm.parquet", "m drifted.parquet"]
    tags = {s.name: set(s.tags) for s in snapshots}
    assert {"m", "batch:drifted.parquet", "drift"} <= tags["m drifted.parquet"]
    assert "no drift" in tags["m calm.parquet"]


def test_only_drifted_batches_when_configured(tmp_path: Path) -> None:
    from evidently.ui.workspace import Workspace

    folder = tmp_path / "evidently-ws"
    settings = _settings(tmp_path, f'workspace = "{folder}"\nsnapshots = "drifted"')
    registry = _run_daemon(settings, tmp_path, snapshots=1)
    assert _outcome(registry, "added") == 1
    (snapshot,) = _snapshots(Workspace(str(folder)), "watcher")
    assert snapshot.name == "m drifted.parquet"


@pytest.fixture(scope="module")
def evidently_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`evidently ui` on a free port, serving a workspace folder of its own."""
    folder = tmp_path_factory.mktemp("evidently-ui")
    port = free_port()
    log = (folder / "ui.log").open("wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "evidently"),  # the console script pip installed
            "ui",
            "--workspace",
            str(folder / "ws"),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"evidently ui exited: {(folder / 'ui.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        wait_for(up, 90, 0.5, "evidently ui to answer")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_served_evidently_ui_gets_the_snapshots_and_the_mail_links_it(
    tmp_path: Path, evidently_ui: str
) -> None:
    from evidently.ui.workspace import RemoteWorkspace

    settings = _settings(tmp_path, f'workspace = "{evidently_ui}"\nproject = "served"')
    registry = _run_daemon(settings, tmp_path, snapshots=2)
    assert _outcome(registry, "added") == 2
    (project,) = RemoteWorkspace(evidently_ui).search_project("served")
    # What the UI lists for the project (its client has no snapshot listing yet).
    api = f"{evidently_ui}/api/projects/{project.id}/snapshots"
    with urllib.request.urlopen(api, timeout=10) as resp:
        listed = json.loads(resp.read())
    assert sorted(s["name"] for s in listed) == ["m calm.parquet", "m drifted.parquet"]
    # The drift alert of the drifted batch links the project's page in that UI.
    store = StateStore(settings.daemon.state_dir / "state.db")
    try:
        alerts = [
            i["payload"]
            for i in store.outbox_items("m")
            if i["payload"].get("alert") == "drift_persisting"
        ]
    finally:
        store.close()
    assert alerts, "the drifted batch should have raised a drift alert"
    link = alerts[0]["evidently_url"]
    assert link in (f"{evidently_ui}/projects/{project.id}", evidently_ui)
    # ... and the mail built from that alert carries the link.
    item = OutboxItem(1, "alert", "k", "m", alerts[0], 0, 0.0)
    mail = compose(item, settings, ["oncall@example.org"])
    text = mail.get_body(("plain",))
    assert text is not None
    assert link in text.get_content()


def test_unreachable_workspace_loses_no_batch(tmp_path: Path) -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"
    settings = _settings(tmp_path, f'workspace = "{nothing_there}"')
    registry = _run_daemon(settings, tmp_path, snapshots=2)
    assert _outcome(registry, "failed") == 2
    assert _outcome(registry, "added") == 0
    assert (
        registry.get_sample_value("watcher_batches_total", {"model": "m", "outcome": "scored"}) == 2
    )
