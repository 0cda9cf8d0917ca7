"""Heartbeats: ``runs.heartbeat_at``, refreshed by a running training process.

A ``running`` run whose heartbeat (or, for runs from before this revision, its start) is older
than the heartbeat timeout reads as ``interrupted``: its process was killed or crashed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column: SQLite adds it in place (no table copy), PostgreSQL without a rewrite.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_at")
