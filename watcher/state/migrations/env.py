"""Alembic's environment for the state database: always run from `watcher.state.migrate`
with an open SQLAlchemy connection (never from the `alembic` command line)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=None,
    # SQLite changes a table by copying it ("batch mode"); PostgreSQL alters in place.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
