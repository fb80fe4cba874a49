"""Leases, fencing and outbox claims for replicas, on both backends: in-process for the
rules, and with real processes for a replica that stops (SIGSTOP) and one that dies
(SIGKILL) while batches flow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures_state import StateBackend

from watcher.state import Action, LeaseLost, StateStore

WORKER = Path(__file__).resolve().parents[1] / "lease_worker.py"


def test_lease_rules_and_fencing(store: StateStore) -> None:
    assert store.acquire("m", "a", 0.6) == 1
    assert store.acquire("m", "b", 0.6) is None  # a's lease runs
    assert store.acquire("m", "a", 0.6) == 1  # renewing one's own keeps the token
    assert store.renew("a", 0.6) == {"m": 1}
    with store.transaction() as conn:
        store.fence(conn, "m", "a", 1)
    time.sleep(0.8)  # a stops renewing: the lease expires
    assert store.renew("a", 0.6) == {}
    assert store.acquire("m", "b", 5.0) == 2  # taken over: a new token

    def stale_write() -> None:
        with store.transaction() as conn:
            conn.execute("INSERT INTO watermarks (key, value, updated_at) VALUES ('x', 'a', 0)")
            store.fence(conn, "m", "a", 1)

    with pytest.raises(LeaseLost, match=r"a lost its lease on model m \(token 1\); now held by b"):
        stale_write()
    assert store.watermark("x") is None  # the stale owner's transaction was refused whole
    store.release("b")
    assert store.acquire("m", "a", 5.0) == 3
    assert store.owners()["m"][:2] == ("a", 3)


def test_outbox_claims_are_disjoint_and_expire(
    store: StateStore, open_store: Callable[..., StateStore]
) -> None:
    with store.transaction() as conn:
        for i in range(60):
            store.enqueue(conn, Action("alert", f"k{i}", "m", {}), not_before=0)
    other = open_store()
    got: dict[str, list[int]] = {"a": [], "b": []}

    def claim(s: StateStore, who: str) -> None:
        while batch := s.claim_due("alert", who, 30.0, limit=7):
            got[who] += [item.id for item in batch]

    threads = [threading.Thread(target=claim, args=a) for a in ((store, "a"), (other, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(got["a"]) & set(got["b"])
    assert len(got["a"]) + len(got["b"]) == 60
    # A claim lapses: a replica that died while delivering leaves its actions to others.
    with store.transaction() as conn:
        conn.execute("UPDATE outbox SET claimed_until = 0 WHERE claimed_by = 'a'")
    assert sorted(i.id for i in other.claim_due("alert", "b", 30.0)) == sorted(got["a"])


def test_a_claim_that_ran_out_is_not_delivered_by_its_old_holder(
    store: StateStore, open_store: Callable[..., StateStore]
) -> None:
    """A dispatcher works through its claims one by one; one whose claim ran out before its
    turn, and that another replica claimed meanwhile, is left to that replica."""
    with store.transaction() as conn:
        for key in ("slow", "kept"):
            store.enqueue(conn, Action("alert", key, "m", {}), not_before=0)
    store.claim_owner, store.claim_seconds = "a", 30.0
    other = open_store()
    other.claim_owner, other.claim_seconds = "b", 30.0
    slow, kept = store.due_actions("alert", time.time())
    assert store.hold_claim(kept.id)  # still a's: renewed
    with store.transaction() as conn:  # a's claim on `slow` runs out while a is busy
        conn.execute("UPDATE outbox SET claimed_until = 0 WHERE id = ?", (slow.id,))
    assert [i.id for i in other.due_actions("alert", time.time())] == [slow.id]
    assert not store.hold_claim(slow.id)  # b holds it now: a must not send it as well
    assert other.hold_claim(slow.id)
    store.mark_done(kept.id)
    assert not store.hold_claim(kept.id)  # done: nothing left to deliver
    store.claim_owner = None
    assert store.hold_claim(slow.id)  # one daemon without replicas: nobody else delivers


def _target(backend: StateBackend) -> str:
    return backend.dsn if backend.dsn is not None else str(backend.target.path)


class Worker:
    def __init__(self, backend: StateBackend, owner: str, log: Path, score: float) -> None:
        self.owner, self.log = owner, log
        args = [_target(backend), owner, "6", str(BATCHES), str(LEASE), str(score)]
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), *args], stdout=fh, stderr=subprocess.STDOUT
            )

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_line(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines() if text in line]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"{self.owner} never printed {text!r}:\n" + self.log.read_text())


LEASE = 1.5


def first_line(workers: list[Worker], text: str, timeout: float = 60.0) -> float:
    """When the first of `workers` printed a line with `text` (its own clock stamp)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamps = [float(x.split()[0]) for w in workers for x in w.lines() if text in x]
        if stamps:
            return min(stamps)
        time.sleep(0.02)
    raise AssertionError(f"none printed {text!r}:\n" + "".join(w.log.read_text() for w in workers))


BATCHES = 30  # per model: b and c need seconds for all, so one dies mid-stream


def test_replicas_stopped_and_killed_lose_their_models_and_stale_writes_are_refused(
    tmp_path: Path, state_backend: StateBackend
) -> None:
    state_backend.open().close()  # the schema, before three processes start at once
    # a scores slowly (1 s a batch), so a SIGSTOP lands inside a batch.
    a = Worker(state_backend, "a", tmp_path / "a.log", score=1.0)
    workers = [a]
    try:
        a.wait_line("scoring")  # a holds every model now
        b = Worker(state_backend, "b", tmp_path / "b.log", score=0.05)
        c = Worker(state_backend, "c", tmp_path / "c.log", score=0.05)
        workers += [b, c]
        b.wait_line("started")
        c.wait_line("started")
        # Stop a inside a batch: right after it announces the next one.
        seen = sum("scoring" in line for line in a.lines())
        deadline = time.monotonic() + 30
        while sum("scoring" in line for line in a.lines()) == seen:
            assert time.monotonic() < deadline, a.log.read_text()
            time.sleep(0.01)
        os.kill(a.proc.pid, signal.SIGSTOP)
        stopped_at = time.time()
        scoring = [line for line in a.lines() if "scoring" in line][-1]
        _, _, model, batch = scoring.split()[:4]
        # b or c takes a's models once a's lease runs out.
        taken = first_line([b, c], f"acquired {model} ")
        takeover = taken - stopped_at
        # Within the lease plus one idle poll (lease / 5) of b and c, with margin for a
        # loaded 2-core machine.
        assert takeover < LEASE + 1.5, f"{model} taken over after {takeover:.2f}s"
        # A replica dies (SIGKILL) mid-stream; the survivor takes its models.
        first_line([b, c], "scored")
        victim, survivor = (b, c) if any("scored" in line for line in b.lines()) else (c, b)
        victim.proc.kill()
        victim.proc.wait(10)
        assert not any("all done" in line for line in victim.lines()), "killed too late"
        survivor.wait_line("all done", timeout=120)
        os.kill(a.proc.pid, signal.SIGCONT)  # the stale owner wakes up and tries to write
        refused = a.wait_line(f"refused {model} {batch}")
        assert "lost its lease" in refused
        assert a.proc.wait(60) == 0
    finally:
        for w in workers:
            if w.proc.poll() is None:
                os.kill(w.proc.pid, signal.SIGCONT)
                w.proc.kill()
                w.proc.wait(10)
    store = state_backend.open()
    try:
        with store.transaction() as conn:
            per_batch = conn.execute(
                "SELECT model, batch_id, COUNT(*) AS n FROM decisions GROUP BY model, batch_id"
            ).fetchall()
            scored = conn.execute(
                "SELECT COUNT(*) AS n FROM batches WHERE status = 'scored'"
            ).fetchone()["n"]
        assert scored == 6 * BATCHES
        assert len(per_batch) == 6 * BATCHES
        assert {r["n"] for r in per_batch} == {1}  # every batch decided exactly once
        owner = next(d.reason for d in store.decisions(model, batch_id=batch))
        assert owner != "a"  # the stale owner's result never landed
    finally:
        store.close()
    print(f"takeover after SIGSTOP: {takeover:.2f}s (lease {LEASE}s)")
