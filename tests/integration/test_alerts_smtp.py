"""The SMTP transport against a real aiosmtpd server: TLS modes, login, error classes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from email.message import EmailMessage

import pytest
from fixtures_smtp import SmtpServer

from watcher.alerts.smtp import MessageRefused, SmtpSender
from watcher.config import SmtpConfig
from watcher.errors import MailError

RCPT = "oncall@example.org"


def _message() -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = "transport test"
    msg["From"] = "watcher@example.org"
    msg["To"] = RCPT
    msg["Message-ID"] = "<transport-test@example.org>"
    msg.set_content("hello")
    return msg


def _send(cfg: dict[str, object]) -> None:
    asyncio.run(SmtpSender(SmtpConfig.model_validate(cfg)).send(_message(), [RCPT]))


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_verified_with_the_ca_file_and_refused_without(
    smtp_server_factory: Callable[..., SmtpServer], security: str
) -> None:
    server = smtp_server_factory(security=security)

    _send(server.smtp_settings())
    [mail] = server.wait_for(1)
    assert mail.message["Subject"] == "transport test"

    # Without the CA the self-signed certificate is not trusted: no mail, a clear error.
    with pytest.raises(MailError) as err:
        _send(server.smtp_settings(ca_file=None))
    assert not err.value.transient
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    assert "smtp.ca_file" in err.value.hint
    assert len(server.messages) == 1


def test_tls_checks_the_host_name(smtp_server_factory: Callable[..., SmtpServer]) -> None:
    server = smtp_server_factory(security="tls", host="127.0.0.1")
    # The certificate names localhost and 127.0.0.1; 127.0.0.2 reaches the same server
    # on Linux but is not in the certificate.
    server_2 = SmtpServer(host="127.0.0.2", port=server.port, security="tls", certs=server.certs)
    server_2.start()
    try:
        with pytest.raises(MailError) as err:
            _send(server_2.smtp_settings())
        assert not err.value.transient
    finally:
        server_2.stop()


def test_login_with_username_and_password_over_starttls(
    smtp_server_factory: Callable[..., SmtpServer],
) -> None:
    server = smtp_server_factory(security="starttls", users={"alice": "correct horse"})

    _send(server.smtp_settings(username="alice", password="correct horse"))
    [mail] = server.wait_for(1)
    assert mail.login == "alice"

    with pytest.raises(MailError) as err:
        _send(server.smtp_settings(username="alice", password="wrong battery"))
    assert not err.value.transient
    assert not isinstance(err.value, MessageRefused)  # settings, not the message
    assert "refused the login of 'alice'" in str(err.value)
    assert "wrong battery" not in str(err.value)
    assert server.failed_logins >= 1

    # No login at all: the server wants one; that is a settings problem too.
    with pytest.raises(MailError) as err:
        _send(server.smtp_settings())
    assert not err.value.transient
    assert not isinstance(err.value, MessageRefused)
    assert len(server.messages) == 1


def test_plain_smtp_against_a_server_that_requires_starttls(
    smtp_server_factory: Callable[..., SmtpServer],
) -> None:
    server = smtp_server_factory(security="starttls")
    with pytest.raises(MailError) as err:
        _send(server.smtp_settings(security="none"))
    assert not err.value.transient
    assert not isinstance(err.value, MessageRefused)
    assert "530" in str(err.value)


def test_error_classes(smtp_server: SmtpServer) -> None:
    smtp_server.refuse[RCPT] = 550
    with pytest.raises(MessageRefused) as refused:
        _send(smtp_server.smtp_settings())
    assert refused.value.code == 550
    assert RCPT in str(refused.value)

    smtp_server.refuse[RCPT] = 451
    with pytest.raises(MailError) as deferred:
        _send(smtp_server.smtp_settings())
    assert deferred.value.transient

    smtp_server.stop()
    with pytest.raises(MailError) as down:
        _send(smtp_server.smtp_settings())
    assert down.value.transient
    assert "unavailable" in str(down.value)

    smtp_server.refuse.clear()
    smtp_server.start()
    _send(smtp_server.smtp_settings())
    assert len(smtp_server.wait_for(1)) == 1
