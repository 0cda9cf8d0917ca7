"""Results with intervals, Grad-CAM statistics per scan, stored embeddings.

* ``results``: named JSON payloads of a run (metric intervals, reliability bins, ROC curves,
  an experiment's summary table), one row per ``(run_id, name)``.
* ``cam_stats``: one row per scan and CAM method of a ``gradcam`` run, with the heat map's path
  relative to that run's output folder.
* ``embeddings``: 2-D coordinates of a run's encoder features (UMAP or t-SNE), one row per scan.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("payload", sa.JSON(), nullable=False),
    )
    op.create_table(
        "cam_stats",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("checkpoint", sa.Text(), nullable=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("split", sa.String(16), nullable=True),
        sa.Column("scan", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(255), nullable=True),
        sa.Column("true_label", sa.String(255), nullable=True),
        sa.Column("target_label", sa.String(255), nullable=False),
        sa.Column("pred_label", sa.String(255), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("intensity", sa.Float(), nullable=False),
        sa.Column("area_pct", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("in_brain", sa.Float(), nullable=True),
        sa.Column("raw_max", sa.Float(), nullable=False),
        sa.Column("raw_mean", sa.Float(), nullable=False),
        sa.Column("deletion_drop", sa.Float(), nullable=True),
        sa.Column("random_drop", sa.Float(), nullable=True),
        sa.Column("road", sa.Float(), nullable=True),
        sa.Column("pointing_hit", sa.Boolean(), nullable=True),
        sa.Column("lesion_energy", sa.Float(), nullable=True),
        sa.Column("heatmap_path", sa.Text(), nullable=True),
    )
    op.create_index("ix_cam_stats_run_id", "cam_stats", ["run_id"])
    op.create_index("ix_cam_stats_model_scan", "cam_stats", ["model_run_id", "scan"])
    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("scan", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(255), nullable=True),
        sa.Column("label", sa.String(255), nullable=True),
        sa.Column("split", sa.String(16), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
    )
    op.create_index("ix_embeddings_run_method", "embeddings", ["run_id", "method"])
    # The dashboard filters predictions by run and split; at a million rows that needs an index.
    op.create_index("ix_predictions_run_split", "predictions", ["run_id", "split"])


def downgrade() -> None:
    op.drop_index("ix_predictions_run_split", "predictions")
    for table in ("embeddings", "cam_stats", "results"):
        op.drop_table(table)
