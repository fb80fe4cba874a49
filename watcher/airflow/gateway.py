"""The one way watcher talks to the Airflow REST API (v2, Airflow 3).

`apache-airflow-client` is synchronous (urllib3), so every call runs in a worker thread.
Login is a JWT from ``POST {url}/auth/token``; the server never refreshes it, so a 401/403
makes the gateway log in again once and repeat the call. Transient failures (connection
errors, timeouts, 5xx, 429) are retried with stamina, bounded by attempts and time; every
other status is final and becomes a permanent `AirflowError` carrying the server's message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import stamina
import urllib3
from airflow_client.client import (
    ApiClient,
    ApiException,
    Configuration,
    DAGApi,
    DAGPatchBody,
    DagRunApi,
    MonitorApi,
    TriggerDAGRunPostBody,
)

from watcher import __version__
from watcher.config import AirflowConfig
from watcher.errors import AirflowError, AirflowLoginError
from watcher.state import backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

_HINTS = {
    400: "the DAG refused the conf; compare it with the DAG's params",
    401: "check airflow.username and airflow.password",
    403: "the Airflow user needs permission to read and trigger this DAG",
    404: "check the model's retrain.dag_id and that the DAG file is deployed and parsed",
    409: "a run with this id exists already",
    422: "Airflow did not understand the request; is it Airflow 3.x?",
}
_TRANSIENT_HINT = "Airflow is down or overloaded; watcher tries again later"


def is_transient_status(status: int | None) -> bool:
    """True for answers that may succeed when asked again: 408, 429 and every 5xx.

    ``None`` (no HTTP answer at all: refused connection, timeout, reset) and ``0`` (the
    client's code for a TLS failure) are transient too: the server may come back.
    """
    if status is None or status == 0:
        return True
    return status in (408, 429) or 500 <= status <= 599


def server_message(exc: ApiException) -> str:
    """The server's own explanation (FastAPI's ``detail``), else the HTTP reason."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            detail = json.loads(body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):  # 422: pydantic validation errors
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', d)}"
                if isinstance(d, dict)
                else str(d)
                for d in detail
            )
        if isinstance(detail, dict):
            return str(detail.get("message") or detail.get("reason") or json.dumps(detail))
        if detail is None and not body.lstrip().startswith("<"):
            return body[:500]
    return str(exc.reason or "no reason given")


def to_airflow_error(exc: BaseException, what: str) -> AirflowError:
    """Classify a failure of the client: HTTP status -> transient or permanent."""
    if isinstance(exc, AirflowError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status) if exc.status is not None else None
        transient = is_transient_status(status)
        return AirflowError(
            f"{what}: HTTP {status}: {server_message(exc)}",
            status=status,
            transient=transient,
            hint=_TRANSIENT_HINT if transient else _HINTS.get(status or 0, ""),
        )
    # urllib3 errors (refused, reset, timeouts) and socket errors: no answer at all.
    return AirflowError(
        f"{what}: {type(exc).__name__}: {exc}", status=None, transient=True, hint=_TRANSIENT_HINT
    )


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, AirflowError) and exc.transient


@dataclass(frozen=True)
class DagInfo:
    dag_id: str
    is_paused: bool


@dataclass(frozen=True)
class Triggered:
    run_id: str
    state: str
    duplicate: bool  # Airflow answered 409: the run existed already


class AirflowGateway:
    """Authenticated, retrying access to one Airflow api-server. Safe to share between tasks.

    A refused login is remembered: until `login_backoff` has passed (doubling per refusal up
    to `login_backoff_max`: `watcher.state.backoff`, not jittered), every call fails at
    once with the same `AirflowLoginError` instead of asking the server again, so no
    worker can spin on a wrong password.
    """

    def __init__(
        self,
        config: AirflowConfig,
        *,
        login_backoff: float = 30.0,
        login_backoff_max: float = 900.0,
    ) -> None:
        self.config = config
        self._timeout = float(config.request_timeout_seconds)
        # retries=False: urllib3 would otherwise retry connection errors 3 times on its own,
        # unbounded by our time budget. stamina does the retrying.
        self._conf = Configuration(host=config.url, retries=False)
        self._client = ApiClient(self._conf)
        self._client.user_agent = f"watcher/{__version__}"
        self._dag_runs = DagRunApi(self._client)
        self._dags = DAGApi(self._client)
        # Health needs no auth; a separate client never sends a stale token there.
        self._anon = ApiClient(Configuration(host=config.url, retries=False))
        self._monitor = MonitorApi(self._anon)
        self._http = urllib3.PoolManager(retries=False)
        self._lock = threading.Lock()
        self._login_backoff = login_backoff
        self._login_backoff_max = login_backoff_max
        self._login_refusals = 0
        self._login_blocked_until = 0.0
        self._refusal = ""
        self.login_error: AirflowLoginError | None = None
        self.login_attempts = 0  # requests to /auth/token, for tests and logs

    @property
    def logged_in(self) -> bool:
        return self._conf.access_token is not None and self.login_error is None

    def login_retry_in(self) -> float:
        """Seconds until a refused login may be tried again (0 when not refused)."""
        if self.login_error is None:
            return 0.0
        return max(0.0, self._login_blocked_until - time.monotonic())

    # ---- login ----------------------------------------------------------------------------

    def _login(self) -> None:
        """Get a new token (called with the lock held, from a worker thread)."""
        if self.login_error is not None and time.monotonic() < self._login_blocked_until:
            # A fresh error each time: re-raising one object would grow its traceback forever.
            raise self._login_refused(self.login_error.status, self._refusal)
        password = self.config.password
        if password is None:
            self._refuse(None, "airflow.password is not set")
        self.login_attempts += 1
        url = f"{self.config.url}/auth/token"
        try:
            resp = self._http.request(
                "POST",
                url,
                json={
                    "username": self.config.username,
                    "password": password.get_secret_value(),
                },
                timeout=self._timeout,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise to_airflow_error(exc, f"logging in at {url}") from exc
        if is_transient_status(resp.status):
            raise AirflowError(
                f"logging in at {url}: HTTP {resp.status}",
                status=resp.status,
                transient=True,
                hint=_TRANSIENT_HINT,
            )
        token = None
        detail = ""
        try:
            body = json.loads(resp.data or b"{}")
            token = body.get("access_token") if resp.status in (200, 201) else None
            detail = str(body.get("detail") or "")
        except (ValueError, AttributeError):
            detail = "the answer is not JSON; is airflow.url the api-server?"
        if not token:
            self._refuse(resp.status, detail or f"HTTP {resp.status} without a token")
        self._conf.access_token = token
        if self.login_error is not None:
            log.info("logged in to Airflow at %s again", self.config.url)
        self.login_error = None
        self._login_refusals = 0

    def _refuse(self, status: int | None, detail: str) -> NoReturn:
        self._login_refusals += 1
        wait = backoff(
            self._login_refusals, self._login_backoff, self._login_backoff_max, jitter=False
        )
        self._login_blocked_until = time.monotonic() + wait
        self._conf.access_token = None
        self._refusal = detail
        self.login_error = self._login_refused(status, detail)
        log.error("%s", self.login_error)
        raise self.login_error

    def _login_refused(self, status: int | None, detail: str) -> AirflowLoginError:
        wait = max(0.0, self._login_blocked_until - time.monotonic())
        return AirflowLoginError(
            f"Airflow at {self.config.url} refused the login of user "
            f"{self.config.username!r}: {detail}",
            status=status,
            transient=False,
            hint=(
                "fix airflow.username and airflow.password (or WATCHER_AIRFLOW__PASSWORD); "
                "pending triggers wait in the outbox; "
                f"next login attempt in {wait:.0f}s"
            ),
        )

    def _authorized(self, call: Callable[[], T]) -> T:
        with self._lock:
            if self._conf.access_token is None:
                self._login()
        try:
            return call()
        except ApiException as exc:
            if exc.status not in (401, 403):
                raise
            log.info("Airflow answered %s; logging in again", exc.status)
        with self._lock:
            self._login()
        return call()

    # ---- calls ----------------------------------------------------------------------------

    def _sync(self, what: str, call: Callable[[], T], *, auth: bool) -> T:
        try:
            return self._authorized(call) if auth else call()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise to_airflow_error(exc, what) from exc

    async def _call(self, what: str, call: Callable[[], T], *, auth: bool = True) -> T:
        """Run one request in a thread; retry transient failures within the configured bounds."""
        async for attempt in stamina.retry_context(
            on=_is_transient,
            attempts=self.config.retry_attempts,
            timeout=self.config.retry_timeout_seconds,
            wait_initial=0.5,
            wait_max=10.0,
        ):
            with attempt:
                return await asyncio.to_thread(self._sync, what, call, auth=auth)
        raise AssertionError("stamina ends with a result or an exception")  # pragma: no cover

    async def get_dag(self, dag_id: str) -> DagInfo:
        dag = await self._call(
            f"reading DAG {dag_id}",
            lambda: self._dags.get_dag(dag_id, _request_timeout=self._timeout),
        )
        return DagInfo(dag_id=dag.dag_id, is_paused=bool(dag.is_paused))

    async def unpause(self, dag_id: str) -> None:
        await self._call(
            f"unpausing DAG {dag_id}",
            lambda: self._dags.patch_dag(
                dag_id,
                DAGPatchBody(is_paused=False),
                update_mask=["is_paused"],
                _request_timeout=self._timeout,
            ),
        )

    async def trigger(
        self, dag_id: str, run_id: str, conf: dict[str, Any], note: str | None
    ) -> Triggered:
        """Create the run; a 409 (the run exists) is success, reported as a duplicate."""
        body = TriggerDAGRunPostBody(dag_run_id=run_id, conf=conf, note=note, logical_date=None)
        try:
            run = await self._call(
                f"triggering {dag_id} run {run_id}",
                lambda: self._dag_runs.trigger_dag_run(
                    dag_id, body, _request_timeout=self._timeout
                ),
            )
        except AirflowError as exc:
            if exc.status != 409:
                raise
            return Triggered(run_id, await self.run_state(dag_id, run_id), duplicate=True)
        return Triggered(run_id, str(run.state.value), duplicate=False)

    async def run_state(self, dag_id: str, run_id: str) -> str:
        run = await self._call(
            f"reading {dag_id} run {run_id}",
            lambda: self._dag_runs.get_dag_run(dag_id, run_id, _request_timeout=self._timeout),
        )
        return str(run.state.value)

    async def health(self) -> dict[str, str | None]:
        """Each component's status from /api/v2/monitor/health (no auth, one attempt)."""
        info = await asyncio.to_thread(
            self._sync,
            "reading Airflow health",
            lambda: self._monitor.get_health(_request_timeout=self._timeout),
            auth=False,
        )
        components: dict[str, str | None] = {}
        for name in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
            part = getattr(info, name, None)
            if part is not None:
                components[name] = part.status
        return components

    def close(self) -> None:
        for pool in (
            self._client.rest_client.pool_manager,
            self._anon.rest_client.pool_manager,
            self._http,
        ):
            pool.clear()
