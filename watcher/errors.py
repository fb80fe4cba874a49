"""One error root for the whole project.

Every error carries a message that names what failed (the model, batch, file or server
where the raiser knows it) and, where there is one, a hint: a sentence that says what to
do about it. Callers catch `WatcherError` at the edges (CLI, main loop) and
let anything else crash loudly, because anything else is a bug.
"""

from __future__ import annotations


class WatcherError(Exception):
    """Base of every error watcher raises on purpose."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(WatcherError):
    """The configuration is invalid; `watcher check-config FILE` shows every problem."""


class BatchRejected(WatcherError):
    """A batch cannot be scored. It is quarantined with this reason; the daemon goes on."""

    def __init__(self, message: str, *, check: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.check = check  # short machine-readable reason, used as a metric label


class SourceError(WatcherError):
    """A source of batches is unreachable or misconfigured (transient unless said otherwise)."""


class ReferenceDataError(WatcherError):
    """The reference data for a model cannot be loaded."""


class RegistryError(WatcherError):
    """The model registry is missing a version or an artifact is damaged."""


class ChecksumMismatch(RegistryError):
    """An artifact's SHA-256 differs from the one recorded when it was deployed."""


class TrainingDataError(WatcherError):
    """The data a retraining run gathered cannot train a model (too few rows, no labels...).

    Not transient: retrying will not help until the data changes, so the DAG fails the task
    without retries and says what is wrong.
    """


class BacktestError(WatcherError):
    """A backtest cannot run on this data or with these options (no labels, no timestamp,
    too few periods...)."""


class AirflowError(WatcherError):
    """The Airflow REST API refused or failed a request."""

    def __init__(
        self, message: str, *, status: int | None = None, transient: bool = False, hint: str = ""
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.transient = transient


class AirflowLoginError(AirflowError):
    """Airflow refused watcher's credentials. Nothing is wrong with the pending actions: they
    wait in the outbox until the username/password are fixed."""


class MailError(WatcherError):
    """The SMTP server refused or failed to take a message."""

    def __init__(self, message: str, *, transient: bool = False, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.transient = transient
