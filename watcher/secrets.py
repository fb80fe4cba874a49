"""The one scrubber: secret values out of every text watcher writes down.

Servers echo what they were sent (FastAPI's 422 `detail` repeats the request body, a
password included), so a secret can reach an exception message without watcher ever
formatting it. Everything that leaves the process as text passes through one `Scrubber`
built from the configuration: the log handler (`ScrubFilter`), error texts stored in the
outbox (`StateStore.scrub`), what `watcher status` prints, the SMTP client's error texts
and every value shown in a mail (`watcher.alerts.render`, which also hides URL passwords
and the values of keys that name a secret).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watcher.config import Settings

REDACTED = "********"
# Keys whose values are never shown, whatever a caller put in a payload.
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api_?key|credential", re.IGNORECASE)
# user:password@ in URLs and DSNs.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.IGNORECASE)


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every password the configuration holds."""
    found = [settings.smtp.password, settings.airflow.password, settings.state.password]
    found += [getattr(m.source, "password", None) for m in settings.models.values()]
    return tuple(s.get_secret_value() for s in found if s is not None and s.get_secret_value())


class Scrubber:
    """Replaces each secret, and the escaped forms an echo may carry, with ********; with
    `urls`, the password of any ``scheme://user:password@`` too (mails show URLs and DSNs
    from payloads, whose passwords watcher may not know)."""

    def __init__(self, secrets: Iterable[str], *, urls: bool = False) -> None:
        self.urls = urls
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            # As written, as Python's repr and as JSON escape it (a dict or list in a message).
            forms |= {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
        # Longest first: a secret that contains another one is replaced whole.
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        if self.urls:
            text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)
        return text

    @staticmethod
    def is_secret_key(key: str) -> bool:
        """Does a payload key name a secret (password, token, api key...)?"""
        return bool(_SECRET_KEY.search(key))

    def __bool__(self) -> bool:
        return bool(self._forms)


class ScrubFilter(logging.Filter):
    """A handler filter: the formatted message and traceback of every record, scrubbed."""

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self.scrub = scrub
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        return True
