"""Replicas: each `watcher run` on a PostgreSQL state announces itself with an expiring row,
so every replica knows how many share the models and takes its fair share of them.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

REAL = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("owner", sa.Text, primary_key=True),
        # Renewed by the replica's heartbeat with its leases: gone with them when it dies.
        sa.Column("expires_at", REAL, nullable=False),
        sa.Column("started_at", REAL, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("replicas")
