"""Baseline schema: runs, params, metrics, confusion, predictions.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

KINDS = "('pretrain', 'finetune', 'evaluate', 'gradcam', 'experiment')"
STATUSES = "('running', 'finished', 'failed', 'interrupted')"


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parent_run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=True),
        sa.Column("task", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("git_sha", sa.String(40), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("device", sa.String(255), nullable=True),
        sa.Column("out_dir", sa.Text(), nullable=True),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(f"kind IN {KINDS}", name="ck_runs_kind"),
        sa.CheckConstraint(f"status IN {STATUSES}", name="ck_runs_status"),
    )
    op.create_index("ix_runs_kind", "runs", ["kind"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_task", "runs", ["task"])
    op.create_index("ix_runs_parent_run_id", "runs", ["parent_run_id"])

    op.create_table(
        "params",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("value", sa.Text(), nullable=True),
    )

    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("is_nan", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_metrics_run_key", "metrics", ["run_id", "key"])

    op.create_table(
        "confusion",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("matrix", sa.JSON(), nullable=False),
        sa.UniqueConstraint("run_id", "split", "level", name="uq_confusion_run_split_level"),
        sa.CheckConstraint("level IN ('slice', 'subject')", name="ck_confusion_level"),
    )
    op.create_index("ix_confusion_run_id", "confusion", ["run_id"])

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("scan", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(255), nullable=True),
        sa.Column("true_label", sa.String(255), nullable=False),
        sa.Column("pred_label", sa.String(255), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probs", sa.JSON(), nullable=False),
    )
    op.create_index("ix_predictions_run_id", "predictions", ["run_id"])


def downgrade() -> None:
    for table in ("predictions", "confusion", "metrics", "params", "runs"):
        op.drop_table(table)
