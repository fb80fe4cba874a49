"""Replicas: a lease per model (owner, fencing token, expiry) and outbox claims, so several
`watcher run` processes on one database share the models and deliver each action once.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

REAL = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        # Grows by one on every change of owner: a write carries the token it was made
        # under and is refused once the token moved on (fencing).
        sa.Column("token", sa.BigInteger, nullable=False),
        sa.Column("expires_at", REAL, nullable=False),
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.Text))
        batch.add_column(sa.Column("claimed_until", REAL))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
    op.drop_table("leases")
