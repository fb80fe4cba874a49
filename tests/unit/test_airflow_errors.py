"""Error classification of the Airflow gateway, without Airflow.

Real Airflow cannot be made to answer 429 or 503 on demand, so the gateway's handling of
each status is checked against a small stand-in HTTP server on a real socket. Everything
that real Airflow can show (409, paused DAGs, wrong passwords, outages) is tested against
real Airflow in test_airflow_trigger.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stamina
from airflow_client.client import ApiException

from watcher.airflow import AirflowGateway, is_transient_status, to_airflow_error
from watcher.config import AirflowConfig
from watcher.errors import AirflowError, AirflowLoginError


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (None, True),  # no answer: refused, reset, timed out
        (0, True),  # the client's code for a TLS failure
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (422, False),
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_status_classification(status: int | None, transient: bool) -> None:
    assert is_transient_status(status) is transient


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, {"detail": "The Dag with dag_id: `nope` was not found"}, "`nope` was not found"),
        (
            422,
            {"detail": [{"loc": ["body", "colour"], "msg": "Extra inputs are not permitted"}]},
            "body.colour: Extra inputs are not permitted",
        ),
        (400, {"detail": "Invalid input for param x"}, "Invalid input for param x"),
        (409, {"detail": {"reason": "Unique constraint violation"}}, "Unique constraint"),
    ],
)
def test_server_message_is_kept(status: int, body: dict[str, Any], message: str) -> None:
    err = to_airflow_error(
        ApiException(status=status, reason="x", body=json.dumps(body)), "triggering d run r"
    )
    assert err.status == status
    assert not err.transient
    assert message in str(err)
    assert str(err).startswith("triggering d run r: HTTP")
    assert err.hint  # says what to do


def test_no_answer_is_transient() -> None:
    err = to_airflow_error(ConnectionRefusedError(111, "Connection refused"), "reading DAG d")
    assert err.transient
    assert err.status is None
    assert "Connection refused" in str(err)


# ---- the gateway against a stand-in server ---------------------------------------------------


@dataclass
class StandIn:
    """Answers each (method, path) with a scripted status and JSON body; counts requests."""

    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    hits: Counter[tuple[str, str]] = field(default_factory=Counter)
    delay: float = 0.0
    url: str = ""


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            key = (self.command, self.path.split("?", 1)[0])
            state.hits[key] += 1
            time.sleep(state.delay)
            status, body = state.routes.get(key, (404, {"detail": "no such route"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, format: str, *args: object) -> None:
            return

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            return  # clients that time out on purpose hang up on us; that is the point

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    with stamina.set_testing(True, attempts=3):
        yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


TOKEN = ("POST", "/auth/token")
DAG = ("GET", "/api/v2/dags/retrain_x")


def gateway(url: str) -> AirflowGateway:
    return AirflowGateway(
        AirflowConfig(url=url, password="pw", request_timeout_seconds=0.5, retry_attempts=3)
    )


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_status_is_retried_then_raised(stand_in: StandIn, status: int) -> None:
    stand_in.routes[TOKEN] = (201, {"access_token": "t"})
    stand_in.routes[DAG] = (status, {"detail": "busy"})
    gw = gateway(stand_in.url)
    with pytest.raises(AirflowError) as info:
        asyncio.run(gw.get_dag("retrain_x"))
    assert info.value.transient
    assert info.value.status == status
    assert stand_in.hits[DAG] == 3  # every attempt stamina allows, then give up
    gw.close()


@pytest.mark.parametrize("status", [400, 404, 422])
def test_permanent_status_is_not_retried(stand_in: StandIn, status: int) -> None:
    stand_in.routes[TOKEN] = (201, {"access_token": "t"})
    stand_in.routes[DAG] = (status, {"detail": f"refused with {status}"})
    gw = gateway(stand_in.url)
    with pytest.raises(AirflowError) as info:
        asyncio.run(gw.get_dag("retrain_x"))
    assert not info.value.transient
    assert f"refused with {status}" in str(info.value)
    assert stand_in.hits[DAG] == 1
    gw.close()


def test_401_logs_in_again_once_then_is_permanent(stand_in: StandIn) -> None:
    stand_in.routes[TOKEN] = (201, {"access_token": "t"})
    stand_in.routes[DAG] = (401, {"detail": "Token Expired"})
    gw = gateway(stand_in.url)
    with pytest.raises(AirflowError) as info:
        asyncio.run(gw.get_dag("retrain_x"))
    assert info.value.status == 401
    assert not info.value.transient
    assert not isinstance(info.value, AirflowLoginError)  # the login itself worked
    assert stand_in.hits[TOKEN] == 2  # first token, then one new login after the 401
    assert stand_in.hits[DAG] == 2
    gw.close()


def test_refused_login_is_remembered_not_repeated(stand_in: StandIn) -> None:
    stand_in.routes[TOKEN] = (401, {"detail": "Invalid credentials"})
    gw = gateway(stand_in.url)
    for _ in range(3):
        with pytest.raises(AirflowLoginError) as info:
            asyncio.run(gw.get_dag("retrain_x"))
    assert "refused the login of user 'admin': Invalid credentials" in str(info.value)
    assert "airflow.password" in str(info.value)
    assert "next login attempt in 30s" in str(info.value) or "in 29s" in str(info.value)
    assert stand_in.hits[TOKEN] == 1  # later calls wait out the backoff without asking
    assert stand_in.hits[DAG] == 0
    assert not gw.logged_in
    gw.close()


def test_login_backoff_grows_and_recovers(stand_in: StandIn) -> None:
    stand_in.routes[TOKEN] = (401, {"detail": "Invalid credentials"})
    gw = AirflowGateway(
        AirflowConfig(url=stand_in.url, password="pw"), login_backoff=0.2, login_backoff_max=0.3
    )
    with pytest.raises(AirflowLoginError):
        asyncio.run(gw.get_dag("retrain_x"))
    time.sleep(0.25)
    with pytest.raises(AirflowLoginError, match="next login attempt in 0s"):
        asyncio.run(gw.get_dag("retrain_x"))
    assert stand_in.hits[TOKEN] == 2
    # The password is fixed on the server side: the next login after the backoff works.
    stand_in.routes[TOKEN] = (201, {"access_token": "t"})
    stand_in.routes[DAG] = (404, {"detail": "gone"})
    time.sleep(0.35)
    with pytest.raises(AirflowError, match="gone"):
        asyncio.run(gw.get_dag("retrain_x"))
    assert gw.logged_in
    gw.close()


def test_server_error_on_login_is_transient(stand_in: StandIn) -> None:
    stand_in.routes[TOKEN] = (503, {"detail": "starting"})
    gw = gateway(stand_in.url)
    with pytest.raises(AirflowError) as info:
        asyncio.run(gw.get_dag("retrain_x"))
    assert info.value.transient
    assert not isinstance(info.value, AirflowLoginError)
    assert stand_in.hits[TOKEN] == 3
    gw.close()


def test_missing_password_is_a_login_error() -> None:
    gw = AirflowGateway(AirflowConfig(url="http://127.0.0.1:9", password=None))
    with pytest.raises(AirflowLoginError, match=r"airflow\.password is not set"):
        asyncio.run(gw.get_dag("retrain_x"))
    assert gw.login_attempts == 0
    gw.close()


def test_read_timeout_is_transient(stand_in: StandIn) -> None:
    stand_in.routes[TOKEN] = (201, {"access_token": "t"})
    stand_in.delay = 1.0  # longer than the 0.5 s request timeout
    gw = gateway(stand_in.url)
    started = time.monotonic()
    with pytest.raises(AirflowError) as info:
        asyncio.run(gw.get_dag("retrain_x"))
    assert info.value.transient
    assert info.value.status is None
    assert "Timeout" in str(info.value) or "timed out" in str(info.value)
    assert time.monotonic() - started < 10
    gw.close()


def test_refused_connection_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with stamina.set_testing(True, attempts=2):
        gw = gateway(f"http://127.0.0.1:{port}")
        with pytest.raises(AirflowError) as info:
            asyncio.run(gw.get_dag("retrain_x"))
    assert info.value.transient
    assert info.value.status is None
    assert "refused" in str(info.value).lower()
    gw.close()
