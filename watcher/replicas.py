"""Replicas: several `watcher run` on one PostgreSQL state share the models.

Each model is owned by one replica through a lease (`watcher.state.leases`). A heartbeat
thread, every `[state] heartbeat_seconds`:

- announces this replica (the `replicas` table) and learns how many are alive;
- renews the leases it holds; the ones it could not renew are lost (it hung, or its
  database connection did, for longer than `lease_seconds`) and it stops scoring them;
- takes free models (never owned, released, or expired) up to its fair share,
  ceil(models / live replicas), and any model it found free on its previous beat as well
  (nobody else is taking it: better one replica over its share than a model unwatched);
- when another replica is below its share and no model is free, hands its excess over
  (idle models only: a model being scored is never released under its batch).

Every write made for a model runs `fence` first in its transaction: it is refused
(`LeaseLost`, counted in `watcher_writes_fenced_total`) unless this replica still holds
the model's lease with the token it took it with. A replica that was frozen (SIGSTOP, a
long GC, a VM migration) and wakes after another took its models over cannot write for
them: a batch is scored by exactly one replica.

The run tracker and retention run on one replica at a time, and only it pages about an
unreachable Airflow: the one holding the lease of the pseudo-model `DUTIES`. Outbox
deliveries are shared: each action is claimed by one replica (`LeaseStore.claim_due`).

Ownership is judged locally too: a lease is taken as held only until `lease_seconds`
after the start of the beat that renewed it, so a replica that cannot reach the database
stops scoring before another replica can take its models over.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable

from watcher.metrics import Metrics
from watcher.periodic import PeriodicWorker
from watcher.state import DB_ERRORS, LeaseLost, StateConn, StateStore
from watcher.state.config import StateConfig

log = logging.getLogger(__name__)

# The lease of the fleet-wide duties: not a model name (model names are identifiers).
DUTIES = "~duties"


def replica_name() -> str:
    """host:pid:random: unique per process, so a restarted replica never inherits the
    tokens of its former self (which may still be alive, frozen)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Replicas:
    """This process's share of the models, kept by a heartbeat thread."""

    def __init__(
        self,
        store: StateStore,
        models: Iterable[str],
        cfg: StateConfig,
        metrics: Metrics,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.models = sorted(models)
        self.lease_seconds = cfg.lease_seconds
        self.heartbeat_seconds = cfg.heartbeat_seconds
        self.owner = owner or replica_name()
        # Models being scored now (the daemon's scheduler keeps it): never handed over.
        self.busy: set[str] = set()
        self._tokens: dict[str, int] = {}
        self._valid_until = 0.0  # monotonic: the held leases are trusted until then
        self._seen_free: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: str | None = None
        m = self.metrics = metrics
        self.owned, self.model_owned, self.unowned = m.models_owned, m.model_owned, m.unowned
        self.live, self.duties, self.fenced = m.replicas_live, m.replica_duties, m.writes_fenced
        self.changes = m.lease_changes
        for change in ("acquired", "lost", "released"):
            self.changes.labels(change)
        self.unowned.set(len(self.models))
        store.fencer = self.fence
        store.claim_owner = self.owner
        store.claim_seconds = cfg.claim_seconds

    # ---- what the daemon asks -----------------------------------------------------------

    def owns(self, model: str) -> bool:
        with self._lock:
            return model in self._tokens and time.monotonic() < self._valid_until

    def owned_models(self) -> list[str]:
        with self._lock:
            if time.monotonic() >= self._valid_until:
                return []
            return [m for m in self.models if m in self._tokens]

    def has_duties(self) -> bool:
        return self.owns(DUTIES)

    def fence(self, conn: StateConn, model: str) -> None:
        """Inside a model's transaction: refuse it unless this replica still owns `model`."""
        with self._lock:
            token = self._tokens.get(model)
            valid = time.monotonic() < self._valid_until
        try:
            if token is None or not valid:
                raise LeaseLost(
                    f"{self.owner} does not own model {model} (any more): the write was refused",
                    hint="another replica owns the model; this one stops scoring it",
                )
            StateStore.fence(conn, model, self.owner, token)
        except LeaseLost as exc:
            self.fenced.inc()
            self._drop([model], "lost")
            log.warning("%s", exc.message, extra={"model": model})
            raise

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """One beat now (the first round has models to score), then the heartbeat thread."""
        log.info(
            "replica %s: leases of %gs renewed every %gs",
            self.owner,
            self.lease_seconds,
            self.heartbeat_seconds,
        )
        self.beat()
        self._thread = threading.Thread(target=self._run, name="replica-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and give every lease up at once: the others take over now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_seconds + 5)
        with self._lock:
            self._tokens.clear()
            self._valid_until = 0.0
        try:
            self.store.release(self.owner)
            self.store.drop_replica(self.owner)
        except DB_ERRORS as exc:
            log.warning("could not release the leases (they expire by themselves): %s", exc)
        self.owned.set(0)
        self._export_owned()
        self.duties.set(0)

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            self.beat()

    # ---- the heartbeat ------------------------------------------------------------------

    def beat(self) -> None:
        """Renew, count, rebalance. A database error is logged once and retried next beat
        (the leases run out meanwhile, and `owns` turns false with them)."""
        started = time.monotonic()
        try:
            self._beat(started)
        except DB_ERRORS as exc:
            text = f"{type(exc).__name__}: {exc}".strip()
            if self._failing != text:
                self._failing = text
                log.error("replica heartbeat failed: %s; retrying every beat", text)
            return
        except Exception:
            log.exception("replica heartbeat failed; retrying next beat")
            return
        if self._failing is not None:
            self._failing = None
            log.info("replica heartbeat works again")

    def _beat(self, started: float) -> None:
        store, owner = self.store, self.owner
        n_replicas = store.beat_replica(owner, self.lease_seconds)
        held = store.renew(owner, self.lease_seconds)
        with self._lock:
            lost = [m for m, t in self._tokens.items() if held.get(m) != t]
            # Leases renewed but not known here (a beat whose answer was lost) are ours too.
            self._tokens = dict(held)
            self._valid_until = started + self.lease_seconds
        for model in lost:
            self.changes.labels("lost").inc()
            if model != DUTIES:
                self.metrics.forget_model(model)
                log.warning("lost the lease on %s: another replica scores it now", model)
        live = store.live_leases()
        share = math.ceil(len(self.models) / n_replicas)
        mine = [m for m in self.models if m in held]
        free = self._spread([m for m in self.models if m not in live])
        take = free[: max(0, share - len(mine))]
        take += [m for m in free if m in self._seen_free and m not in take]
        self._seen_free = set(free) - set(take)
        if DUTIES not in live:
            take.append(DUTIES)
        for model in take:
            token = store.acquire(model, owner, self.lease_seconds)
            if token is None:
                self._seen_free.discard(model)  # another replica was faster
                continue
            with self._lock:
                self._tokens[model] = token
            self.changes.labels("acquired").inc()
            if model != DUTIES:
                mine.append(model)
        if len(mine) > share and not free:
            self._hand_over(mine, share, live, n_replicas)
        with self._lock:
            owned = len([m for m in self.models if m in self._tokens])
            duty = DUTIES in self._tokens
        self.owned.set(owned)
        self._export_owned()
        self.duties.set(1 if duty else 0)
        self.live.set(n_replicas)
        self.unowned.set(len([m for m in self.models if m not in store.live_leases()]))

    def _hand_over(self, mine: list[str], share: int, live: dict[str, str], n: int) -> None:
        """Release the excess over `share` when some live replica holds fewer (a replica
        joined): it takes them on its next beat."""
        counts: dict[str, int] = {}
        for model, who in live.items():
            if model != DUTIES:
                counts[who] = counts.get(who, 0) + 1
        # Replicas holding no model are not in `live`: n - len(counts) of them.
        below = sum(max(0, share - c) for w, c in counts.items() if w != self.owner)
        below += max(0, n - len(counts | {self.owner: 0})) * share
        excess = min(len(mine) - share, below)
        idle = [m for m in sorted(mine, reverse=True) if m not in self.busy][:excess]
        if not idle:
            return
        self._drop(idle, "released")
        self.store.release(self.owner, idle)
        log.info("handed %d model(s) over to other replicas: %s", len(idle), ", ".join(idle))

    @staticmethod
    def _spread(models: list[str]) -> list[str]:
        """Replicas starting together try the free models in different orders, so their
        first beats do not all contend for the same rows."""
        shuffled = list(models)
        secrets.SystemRandom().shuffle(shuffled)
        return shuffled

    def _export_owned(self) -> None:
        with self._lock:
            mine = set(self._tokens)
        for model in self.models:
            self.model_owned.labels(model).set(1 if model in mine else 0)

    def _drop(self, models: list[str], change: str) -> None:
        with self._lock:
            gone = [m for m in models if self._tokens.pop(m, None) is not None]
        self._export_owned()
        for model in gone:
            self.changes.labels(change).inc()
            if model != DUTIES:
                self.metrics.forget_model(model)
            if change == "lost" and model != DUTIES:
                log.warning("lost the lease on %s: another replica scores it now", model)


# Workers that act for the whole fleet and must run on one replica at a time.
FLEET_DUTIES = frozenset({"airflow-run-tracker", "state-retention"})


class OnDutyOnly:
    """A worker that runs only while this replica holds the duties lease (the others
    skip their rounds); the outbox dispatchers are not wrapped: they claim per action."""

    def __init__(self, worker: PeriodicWorker, replicas: Replicas) -> None:
        self.worker = worker
        self.replicas = replicas
        self.name = worker.name
        self.interval_seconds = worker.interval_seconds

    async def run_once(self) -> None:
        if self.replicas.has_duties():
            await self.worker.run_once()

    async def close(self) -> None:
        await self.worker.close()


def on_duty_only(workers: list[PeriodicWorker], replicas: Replicas) -> list[PeriodicWorker]:
    """The fleet's duties wrapped; the Airflow health probe runs everywhere (each replica
    exports whether it reaches Airflow) but only the replica on duty pages about it."""
    for worker in workers:
        if worker.name == "airflow-health":
            worker.pages = replicas.has_duties  # type: ignore[attr-defined]
    return [OnDutyOnly(w, replicas) if w.name in FLEET_DUTIES else w for w in workers]


def replicas_for(
    store: StateStore,
    models: Iterable[str],
    cfg: StateConfig,
    metrics: Metrics,
    busy: set[str],
) -> Replicas | None:
    """On PostgreSQL, replicas share the models; on SQLite one daemon owns them all (None).
    `busy` is the scheduler's: a model being scored is never handed over."""
    if store.target.path is not None:
        return None
    replicas = Replicas(store, models, cfg, metrics)
    replicas.busy = busy
    return replicas
