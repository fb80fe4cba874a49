"""Indexes for the retention pass: old batch results, decisions and finished outbox rows
are found by their time, not by a scan of the whole table.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("batches_finished_at", "batches", ["finished_at"])
    op.create_index("decisions_at", "decisions", ["at"])
    op.create_index("outbox_done_at", "outbox", ["status", "done_at"])


def downgrade() -> None:
    op.drop_index("outbox_done_at", "outbox")
    op.drop_index("decisions_at", "decisions")
    op.drop_index("batches_finished_at", "batches")
