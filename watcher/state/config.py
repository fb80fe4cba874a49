"""`[state]`: where the state lives. SQLite in `daemon.state_dir` (the default, nothing to
configure) or a PostgreSQL database, with its password from the environment
(`WATCHER_STATE__PASSWORD`) or a `password_file` like every other secret."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from sqlalchemy.engine import URL, make_url

from watcher.errors import ConfigError


class StateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backend: Literal["sqlite", "postgres"] = "sqlite"
    # postgresql://user@host:5432/dbname; the password goes in `password`/`password_file`.
    dsn: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    connect_timeout_seconds: float = Field(10.0, gt=0)
    # Upgrade an older state database when the daemon (or a command) opens it; false: refuse
    # to start until `watcher migrate` ran (for operators who back up first).
    auto_migrate: bool = True
    # Batch results (the per-column JSON), decisions and finished outbox rows older than
    # this are pruned; the ledger row of each batch stays (a batch is never scored twice),
    # and so do trigger decisions (cooldowns and rate limits read them). None keeps all.
    retention_days: float | None = Field(None, ge=1)
    retention_interval_seconds: float = Field(3600.0, gt=0)
    # Replicas (PostgreSQL only): each model is owned by one `watcher run` through a lease
    # the owner renews every `heartbeat_seconds`; a replica that dies or hangs loses its
    # models `lease_seconds` after its last heartbeat and another one takes them over.
    lease_seconds: float = Field(30.0, ge=1)
    heartbeat_seconds: float = Field(10.0, gt=0)
    # How long an outbox action (mail, trigger, webhook post) stays claimed by the replica
    # delivering it; after that a replica that died mid-delivery has it taken over.
    claim_seconds: float = Field(120.0, ge=1)

    @model_validator(mode="after")
    def _check(self) -> StateConfig:
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"state.heartbeat_seconds ({self.heartbeat_seconds:g}) must be at most half of "
                f"state.lease_seconds ({self.lease_seconds:g}): one late heartbeat would "
                "otherwise lose every model"
            )
        if self.password_file is not None:
            try:
                text = self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"cannot read state.password from {self.password_file}: {exc.strerror}"
                ) from exc
            self.password = SecretStr(text)
        if self.backend == "postgres":
            if not self.dsn:
                raise ValueError(
                    'state.backend = "postgres" needs state.dsn, '
                    "e.g. postgresql://watcher@db.example:5432/watcher"
                )
            _pg_url(self.dsn)
        elif self.dsn is not None:
            raise ValueError('state.dsn is only read with state.backend = "postgres"')
        return self


def _pg_url(dsn: str) -> URL:
    try:
        url = make_url(dsn)
    except Exception as exc:
        raise ValueError(f"state.dsn is not a database URL: {exc}") from exc
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"state.dsn must be a postgresql:// URL, not {url.get_backend_name()}://")
    if url.password is not None:
        raise ValueError(
            "state.dsn holds a password: put it in state.password_file or the "
            "WATCHER_STATE__PASSWORD environment variable instead"
        )
    return url


@dataclass(frozen=True)
class StateTarget:
    """A resolved state database: a SQLite file or a PostgreSQL URL with its password."""

    dialect: Literal["sqlite", "postgresql"]
    path: Path | None = None
    url: URL | None = None

    @classmethod
    def sqlite(cls, path: Path) -> StateTarget:
        return cls("sqlite", path=path)

    @classmethod
    def postgres(cls, dsn: str, password: str | None = None) -> StateTarget:
        if not dsn.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ConfigError(
                "a PostgreSQL state DSN must start with postgresql://",
                hint="write it as postgresql://user@host:5432/dbname",
            )
        url = make_url(dsn).set(drivername="postgresql+psycopg")
        if password is not None:
            url = url.set(password=password)
        return cls("postgresql", url=url)

    @property
    def sqlalchemy_url(self) -> str:
        if self.path is not None:
            return f"sqlite:///{self.path}"
        assert self.url is not None
        return self.url.render_as_string(hide_password=False)

    @property
    def conninfo(self) -> str:
        """What psycopg connects with."""
        assert self.url is not None
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    @property
    def where(self) -> str:
        """The database as it may appear in logs and errors (no password)."""
        if self.path is not None:
            return str(self.path)
        assert self.url is not None
        return self.url.set(drivername="postgresql").render_as_string(hide_password=True)


def state_target(state: StateConfig, state_dir: Path) -> StateTarget:
    if state.backend == "postgres":
        assert state.dsn is not None
        password = None if state.password is None else state.password.get_secret_value()
        return StateTarget.postgres(state.dsn, password)
    return StateTarget.sqlite(state_dir / "state.db")
