"""The state of watcher 0.1 (one SQLite file, before schema versions were kept).

A fresh database gets every table; a state file written by watcher 0.1 (no
`alembic_version` table yet) keeps its tables and rows and gains the columns that later 0.1
builds added in place (outbox.sending_at, decisions.signal and decisions.readings).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# A row id: INTEGER PRIMARY KEY AUTOINCREMENT on SQLite, BIGSERIAL on PostgreSQL.
ID = sa.Integer().with_variant(sa.BigInteger(), "postgresql")
# Unix times and scores: REAL on SQLite, double precision (not float4) on PostgreSQL.
REAL = sa.Float(precision=53)


def _tables() -> list[tuple[str, list[Any], dict[str, Any]]]:
    auto: dict[str, Any] = {"sqlite_autoincrement": True}
    return [
        (
            "batches",
            [
                sa.Column("seq", ID, primary_key=True, autoincrement=True),
                sa.Column("model", sa.Text, nullable=False),
                sa.Column("batch_id", sa.Text, nullable=False),
                sa.Column("uri", sa.Text, nullable=False),
                sa.Column("status", sa.Text, nullable=False),
                sa.Column("claimed_at", REAL, nullable=False),
                sa.Column("finished_at", REAL),
                sa.Column("rows", sa.Integer),
                sa.Column("reference_version", sa.Text),
                sa.Column("dataset_drift", sa.Integer),
                sa.Column("drift_share", REAL),
                sa.Column("result", sa.Text),
                sa.Column("reason", sa.Text),
                sa.UniqueConstraint("model", "batch_id"),
            ],
            auto,
        ),
        (
            "model_state",
            [
                sa.Column("model", sa.Text, primary_key=True),
                sa.Column("reference_version", sa.Text),
                sa.Column("streak_reset_seq", sa.BigInteger, nullable=False, server_default="0"),
                sa.Column("updated_at", REAL, nullable=False),
            ],
            {},
        ),
        (
            "decisions",
            [
                sa.Column("id", ID, primary_key=True, autoincrement=True),
                sa.Column("model", sa.Text, nullable=False),
                sa.Column("batch_id", sa.Text),
                sa.Column("at", REAL, nullable=False),
                sa.Column("outcome", sa.Text, nullable=False),
                sa.Column("reason", sa.Text, nullable=False),
                sa.Column("run_id", sa.Text),
                sa.Column("signal", sa.Text),
                sa.Column("readings", sa.Text),
            ],
            auto,
        ),
        (
            "outbox",
            [
                sa.Column("id", ID, primary_key=True, autoincrement=True),
                sa.Column("kind", sa.Text, nullable=False),
                sa.Column("key", sa.Text, nullable=False, unique=True),
                sa.Column("model", sa.Text),
                sa.Column("payload", sa.Text, nullable=False),
                sa.Column("status", sa.Text, nullable=False, server_default="pending"),
                sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
                sa.Column("created_at", REAL, nullable=False),
                sa.Column("next_attempt_at", REAL, nullable=False),
                sa.Column("done_at", REAL),
                sa.Column("last_error", sa.Text),
                sa.Column("sending_at", REAL),
            ],
            auto,
        ),
        (
            "runs",
            [
                sa.Column("run_id", sa.Text, primary_key=True),
                sa.Column("model", sa.Text, nullable=False),
                sa.Column("dag_id", sa.Text, nullable=False),
                sa.Column("state", sa.Text, nullable=False),
                sa.Column("conf", sa.Text, nullable=False),
                sa.Column("triggered_at", REAL, nullable=False),
                sa.Column("updated_at", REAL, nullable=False),
                sa.Column("ended_at", REAL),
                sa.Column("handled", sa.Integer, nullable=False, server_default="0"),
            ],
            {},
        ),
        (
            "incidents",
            [
                sa.Column("key", sa.Text, primary_key=True),
                sa.Column("kind", sa.Text, nullable=False),
                sa.Column("model", sa.Text),
                sa.Column("opened_at", REAL, nullable=False),
                sa.Column("last_notified_at", REAL),
                sa.Column("resolved_at", REAL),
                sa.Column("details", sa.Text, nullable=False, server_default="{}"),
            ],
            {},
        ),
        (
            "label_periods",
            [
                sa.Column("id", ID, primary_key=True, autoincrement=True),
                sa.Column("model", sa.Text, nullable=False),
                sa.Column("period", sa.Text, nullable=False),
                sa.Column("version", sa.Text, nullable=False),
                sa.Column("metric", sa.Text, nullable=False),
                sa.Column("value", REAL, nullable=False),
                sa.Column("loss", REAL, nullable=False),
                sa.Column("rows", sa.Integer, nullable=False),
                sa.Column("at", REAL, nullable=False),
                sa.UniqueConstraint("model", "period", "version"),
            ],
            auto,
        ),
        (
            "watermarks",
            [
                sa.Column("key", sa.Text, primary_key=True),
                sa.Column("value", sa.Text, nullable=False),
                sa.Column("updated_at", REAL, nullable=False),
            ],
            {},
        ),
    ]


_INDEXES = [
    ("decisions_model_at", "decisions", ["model", "at"]),
    ("outbox_due", "outbox", ["status", "next_attempt_at"]),
    ("label_periods_model", "label_periods", ["model", "version", "id"]),
]

# Columns a 0.1 state file may lack: added in place by later 0.1 builds.
_LATE_COLUMNS: list[tuple[str, sa.Column[Any]]] = [
    ("outbox", sa.Column("sending_at", REAL)),
    ("decisions", sa.Column("signal", sa.Text)),
    ("decisions", sa.Column("readings", sa.Text)),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for name, items, kwargs in _tables():
        if name not in existing:
            op.create_table(name, *items, **kwargs)
    for table, column in _LATE_COLUMNS:
        have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
        if column.name not in have:
            op.add_column(table, column)
    for index, table, columns in _INDEXES:
        have = {str(i["name"]) for i in sa.inspect(op.get_bind()).get_indexes(table)}
        if index not in have:
            op.create_index(index, table, columns)


def downgrade() -> None:
    for name, _, _ in reversed(_tables()):
        op.drop_table(name)
