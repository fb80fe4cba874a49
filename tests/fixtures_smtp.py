"""A real SMTP server (aiosmtpd) for tests: records what it receives, can go down and up.

Use `smtp_server` for a plain server on a free port, or `smtp_server_factory(...)` for
STARTTLS / implicit TLS (certificates from `smtp_certs`, made with trustme), AUTH, and
refused recipients. `server.smtp_settings()` gives the matching `[smtp]` section.

    def test_x(smtp_server):
        ...  # make watcher send
        mails = smtp_server.wait_for(1)
        assert mails[0].message["Subject"] == ...

`stop()` and `start()` keep the port, so a daemon configured with it sees an outage and
a recovery, exactly like a real mail server restart.
"""

from __future__ import annotations

import email
import email.policy
import gc
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session


@dataclass
class ReceivedMail:
    """One message as the server got it: envelope, raw bytes and who logged in."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None
    received_at: float

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class SmtpCerts:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1."""

    ca: trustme.CA
    ca_file: Path
    server_cert: trustme.LeafCert

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        return ctx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class SmtpServer:
    """A running (or stopped) aiosmtpd server. `messages` fills as mail arrives."""

    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    # "none": plain SMTP; "starttls": offers (and requires) STARTTLS; "tls": implicit TLS.
    security: str = "none"
    certs: SmtpCerts | None = None
    # login -> password; when set, AUTH is required (needs security="starttls").
    users: dict[str, str] = field(default_factory=dict)
    # recipient -> SMTP code to answer RCPT with (550 refused for good, 451 try later).
    refuse: dict[str, int] = field(default_factory=dict)
    messages: list[ReceivedMail] = field(default_factory=list)
    failed_logins: int = 0
    _controller: Controller | None = field(default=None, repr=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> SmtpServer:
        if self._controller is not None:
            return self
        kwargs: dict[str, Any] = {}
        if self.security != "none":
            assert self.certs is not None, "TLS needs certs (the smtp_certs fixture)"
            ctx = self.certs.server_context()
            if self.security == "tls":
                kwargs["ssl_context"] = ctx
            else:
                kwargs |= {"tls_context": ctx, "require_starttls": True}
        if self.users:
            # aiosmtpd counts only STARTTLS as TLS, so it never offers AUTH on an implicit
            # TLS port unless told AUTH needs no TLS (which it warns about, from its thread).
            assert self.security == "starttls", "AUTH in aiosmtpd works with STARTTLS only"
            kwargs |= {
                "authenticator": self._authenticate,
                "auth_required": True,
                "auth_require_tls": True,
            }
        # A new Controller per start: a stopped one has closed its event loop.
        controller = Controller(_Handler(self), hostname=self.host, port=self.port, **kwargs)
        deadline = time.monotonic() + 10
        while True:
            try:
                controller.start()
                break
            except (OSError, RuntimeError):
                # The port of a just-stopped server can take a moment to be free again.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    # ---- what arrived -------------------------------------------------------------------

    def wait_for(self, count: int, timeout: float = 15.0) -> list[ReceivedMail]:
        """Block until at least `count` messages arrived; fail the test after `timeout`."""
        with self._lock:
            ok = self._lock.wait_for(lambda: len(self.messages) >= count, timeout=timeout)
            got = list(self.messages)
        assert ok, f"expected {count} mail(s) within {timeout}s, got {len(got)}"
        return got

    def parsed(self) -> list[EmailMessage]:
        with self._lock:
            return [m.message for m in self.messages]

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def smtp_settings(self, **overrides: Any) -> dict[str, Any]:
        """An `[smtp]` section (as a dict for `Settings(smtp=...)`) that talks to this server."""
        cfg: dict[str, Any] = {
            "enabled": True,
            "host": self.host,
            "port": self.port,
            "security": self.security,
            "sender": "watcher@example.org",
            "recipients": ["oncall@example.org"],
            "timeout_seconds": 5.0,
            "retry_attempts": 2,
            "retry_timeout_seconds": 2.0,
        }
        if self.certs is not None and self.security != "none":
            cfg["ca_file"] = str(self.certs.ca_file)
        return cfg | overrides

    # ---- server side --------------------------------------------------------------------

    def _authenticate(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode()
            if self.users.get(login) == auth_data.password.decode():
                return AuthResult(success=True, auth_data=login)
        self.failed_logins += 1
        return AuthResult(success=False, handled=False)

    def _record(self, mail: ReceivedMail) -> None:
        with self._lock:
            self.messages.append(mail)
            self._lock.notify_all()


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_RCPT(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        code = self.server.refuse.get(address)
        if code is not None:
            return f"{code} {'mailbox unavailable' if code >= 500 else 'try again later'}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        login = session.auth_data if isinstance(session.auth_data, str) else None
        self.server._record(
            ReceivedMail(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                data=data,
                login=login,
                received_at=time.time(),
            )
        )
        return "250 Message accepted for delivery"


@pytest.fixture(scope="session")
def smtp_certs(tmp_path_factory: pytest.TempPathFactory) -> SmtpCerts:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_file = tmp_path_factory.mktemp("smtp-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return SmtpCerts(ca=ca, ca_file=ca_file, server_cert=cert)


@pytest.fixture
def smtp_server_factory(smtp_certs: SmtpCerts) -> Iterator[Callable[..., SmtpServer]]:
    """`make(security="starttls", users={"u": "p"}, refuse={...})` -> a started server."""
    servers: list[SmtpServer] = []

    def make(**kwargs: Any) -> SmtpServer:
        kwargs.setdefault("certs", smtp_certs)
        server = SmtpServer(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
    # A socket left open by a test is reported by the test that opened it, not by a
    # random later one when the garbage collector happens to find it.
    gc.collect()


@pytest.fixture
def smtp_server(smtp_server_factory: Callable[..., SmtpServer]) -> SmtpServer:
    """A plain SMTP server on a free port, stopped after the test."""
    return smtp_server_factory()
