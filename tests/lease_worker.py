"""A stand-in replica for tests/integration/test_state_leases.py, run as a real process:
holds leases on models with a heartbeat and "scores" each model's batches in order, every
result written in a fenced transaction (refused once the lease moved on).

    python lease_worker.py TARGET OWNER MODELS BATCHES LEASE_SECONDS SCORE_SECONDS

TARGET is a SQLite path or a postgresql:// URL. Prints one line per event, flushed.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from watcher.state import LeaseLost, StateStore


def main() -> None:
    target, owner = sys.argv[1], sys.argv[2]
    n_models, n_batches = int(sys.argv[3]), int(sys.argv[4])
    lease, score = float(sys.argv[5]), float(sys.argv[6])
    store = StateStore(target if target.startswith("postgresql") else Path(target))
    models = [f"m{i}" for i in range(n_models)]
    batches = [f"b{j:03d}" for j in range(n_batches)]
    tokens: dict[str, int] = {}
    held: dict[str, int] = {}
    lock = threading.Lock()

    def heartbeat() -> None:
        while True:
            renewed = store.renew(owner, lease)
            with lock:
                held.clear()
                held.update(renewed)
            time.sleep(lease / 4)

    threading.Thread(target=heartbeat, daemon=True).start()
    say(f"started {owner}")
    while True:
        with lock:
            tokens = {m: t for m, t in tokens.items() if held.get(m) == t}
        for m in models:
            if m not in tokens and (token := store.acquire(m, owner, lease)) is not None:
                tokens[m] = token
                with lock:
                    held[m] = token
                say(f"acquired {m} token {token}")
        left = 0
        for m in sorted(tokens):
            todo = [b for b in batches if b not in store.processed_ids(m)]
            left += len(todo)
            if not todo:
                continue
            bid = todo[0]
            store.claim_batch(m, bid, f"/in/{m}/{bid}")
            say(f"scoring {m} {bid}")
            time.sleep(score)
            try:
                with store.transaction() as conn:
                    store.fence(conn, m, owner, tokens[m])
                    store.finish_batch(
                        conn,
                        model=m,
                        batch_id=bid,
                        status="scored",
                        rows=1,
                        reference_version="1",
                        result={"owner": owner},
                    )
                    store.record_decision(
                        conn, model=m, batch_id=bid, outcome="no_action", reason=owner
                    )
                say(f"scored {m} {bid}")
            except LeaseLost as exc:
                say(f"refused {m} {bid}: {exc.message}")
                tokens.pop(m)
        if all(len(store.processed_ids(m)) == n_batches for m in models):
            say("all done")
            store.release(owner)
            store.close()
            return
        if not left:
            time.sleep(lease / 5)


def say(line: str) -> None:
    sys.stdout.write(f"{time.time():.3f} {line}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
