"""Hand one message to the SMTP server, and say whether a failure is worth retrying.

One connection per message: alerts are rare, and a fresh connection per mail means a
server restart between two mails never leaves a dead connection behind.

Failures become `watcher.errors.MailError`:

- ``transient=True``: connection refused/lost, timeouts, 4xx answers. Retry later.
- `MessageRefused` (``transient=False``): the server answered 5xx to *this* message
  (every recipient refused, content refused). Sending it again cannot help; it becomes a
  dead letter.
- other ``transient=False``: the configuration is wrong (login refused, certificate not
  trusted, STARTTLS or login required, sender refused). No mail can go out until an
  operator fixes it.

Error texts are the server's and aiosmtplib's; they never contain the password (it is
sent base64-encoded in AUTH and never echoed), and `redact` scrubs them anyway.
"""

from __future__ import annotations

import logging
import ssl
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from watcher.config import SmtpConfig
from watcher.errors import MailError
from watcher.secrets import Scrubber

log = logging.getLogger(__name__)


class MessageRefused(MailError):
    """The server refused this message for good (5xx); it will be parked as a dead letter."""

    def __init__(self, message: str, *, code: int | None = None, hint: str = "") -> None:
        super().__init__(message, transient=False, hint=hint)
        self.code = code


def tls_context(config: SmtpConfig) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name.

    With `ca_file` only that CA (e.g. a company CA or a self-signed test CA) is trusted;
    otherwise the system's trust store is.
    """
    ctx = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class SmtpSender:
    """Sends messages with the settings of `[smtp]`."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        # Its password out of error texts (logs and stored errors scrub again, with all).
        self._redact = Scrubber([config.password.get_secret_value() if config.password else ""])
        self._tls = tls_context(config) if config.security != "none" else None

    def _options(self) -> dict[str, Any]:
        cfg = self.config
        password = cfg.password.get_secret_value() if cfg.password is not None else None
        return {
            "hostname": cfg.host,
            "port": cfg.port,
            "username": cfg.username,
            "password": password if cfg.username else None,
            "timeout": cfg.timeout_seconds,
            "use_tls": cfg.security == "tls",
            # False, not None: None would upgrade opportunistically, and "none" means none.
            "start_tls": cfg.security == "starttls",
            "validate_certs": cfg.security != "none",
            "tls_context": self._tls,
        }

    async def send(self, message: EmailMessage, recipients: list[str]) -> None:
        """Deliver `message` to `recipients` (the envelope; headers are the message's).

        Raises MailError (see the module docstring for what each kind means). Recipients
        refused while others were accepted are logged and not retried: the message exists
        with its Message-ID now, and sending it again would duplicate it for the others.
        """
        try:
            errors, _ = await aiosmtplib.send(
                message, sender=self.config.sender, recipients=recipients, **self._options()
            )
        except Exception as exc:
            raise self._error(exc) from None
        if errors:
            refused = ", ".join(
                f"{rcpt} ({resp.code} {resp.message})" for rcpt, resp in errors.items()
            )
            log.warning(
                "SMTP server refused some recipients of %s; the others got it: %s",
                message["Message-ID"],
                self._redact(refused),
            )

    async def probe(self) -> None:
        """Connect, secure, log in and say NOOP: is mail possible right now?

        Raises MailError like `send`. Lets `watcher_smtp_up` tell the truth while no alert
        is due, so a broken mail path is found before an alert needs it.
        """
        try:
            async with aiosmtplib.SMTP(**self._options()) as client:
                await client.noop()
        except Exception as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> MailError:
        cfg = self.config
        if isinstance(exc, aiosmtplib.SMTPException):
            return self._classify(exc)
        if isinstance(exc, ssl.SSLError):
            return self._tls_error(exc)
        if isinstance(exc, OSError):
            return MailError(
                f"cannot reach SMTP server {cfg.host}:{cfg.port}: {self._redact(str(exc))}",
                transient=True,
                hint="check that the server runs and smtp.host/port are right",
            )
        raise exc  # anything else is a bug: let it crash loudly

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _tls_error(self, exc: BaseException) -> MailError:
        return MailError(
            f"TLS with SMTP server {self._where()} failed: {self._redact(str(exc))}",
            transient=False,
            hint="the server's certificate is not trusted: set smtp.ca_file to the CA that "
            "signed it, or check smtp.host matches the certificate",
        )

    def _classify(self, exc: aiosmtplib.SMTPException) -> MailError:
        where = self._where()
        text = self._redact(str(exc))
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
            return self._tls_error(cause or exc)
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            return MailError(
                f"SMTP server {where} refused the login of {self.config.username!r}: "
                f"{exc.code} {self._redact(exc.message)}",
                transient=exc.code < 500,
                hint="check smtp.username and the password (smtp.password or smtp.password_file)",
            )
        if isinstance(exc, aiosmtplib.SMTPNotSupported):
            return MailError(
                f"SMTP server {where} does not support what smtp.security needs: {text}",
                transient=False,
                hint="set smtp.security to what the server offers (none, starttls or tls)",
            )
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(
                f"{r.recipient}: {r.code} {self._redact(r.message)}" for r in exc.recipients
            )
            if all(code >= 500 for code in codes):
                return MessageRefused(
                    f"SMTP server {where} refused every recipient: {detail}",
                    code=codes[0] if codes else None,
                    hint="fix smtp.recipients or the model's recipients",
                )
            return MailError(f"SMTP server {where} deferred recipients: {detail}", transient=True)
        if isinstance(exc, aiosmtplib.SMTPDataError) and exc.code >= 500:
            return MessageRefused(
                f"SMTP server {where} refused the message: {exc.code} {self._redact(exc.message)}",
                code=exc.code,
                hint="check the server's size and content limits",
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            # A refused sender is a settings problem, not the message's: every mail has
            # the same sender. So are 530 "authentication/STARTTLS required" answers.
            hint = {
                530: "the server wants STARTTLS or a login: set smtp.security/username",
            }.get(exc.code, "check smtp.sender and the server's policy for it")
            return MailError(
                f"SMTP server {where} answered {exc.code} {self._redact(exc.message)}",
                transient=exc.code < 500,
                hint="" if exc.code < 500 else hint,
            )
        # Disconnects, timeouts and failed connects: the server is down or overloaded.
        return MailError(
            f"SMTP server {where} unavailable: {text}",
            transient=True,
            hint="check that the server runs and smtp.host/port are right",
        )
