"""The owning process of a run: ``runs.pid``.

A run records the process id of the command that started (or last resumed) it, next to
``runs.host`` (there since 0001, now also refreshed on resume). A ``running`` run whose host is
this machine and whose process is gone reads as ``interrupted`` at once (``kill -9``), instead of
after the heartbeat timeout; runs from before this revision (no pid) keep the heartbeat rule.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column: SQLite adds it in place (no table copy), PostgreSQL without a rewrite.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("pid")
