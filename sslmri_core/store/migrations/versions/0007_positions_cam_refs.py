"""Where a slice lies in its series, and the references of the Grad-CAM statistics.

``manifest_rows.position`` orders a subject's slices along the slice axis (DICOM: the position
along the slice normal, else the instance number; NIfTI: the slice index; image files: the slice
number in the name) and ``manifest_rows.series`` names the series it belongs to (a salted hash of a
DICOM ``SeriesInstanceUID``, never the UID itself). ``cam_stats.baseline_drop`` is the deletion drop
of the model-free head-mask map and ``cam_stats.pointing_chance`` the hit rate of a random point
inside the head, so every faithfulness number is stored beside its two references; ``head_area``
and ``lesion_area`` (shares of the image, at the model's input size) are what a map blind to anatomy
scores as in-head and in-lesion energy.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns only: SQLite adds them in place, PostgreSQL without a rewrite; old rows read None.
    with op.batch_alter_table("manifest_rows") as batch:
        batch.add_column(sa.Column("position", sa.Float(), nullable=True))
        batch.add_column(sa.Column("series", sa.String(64), nullable=True))
    with op.batch_alter_table("cam_stats") as batch:
        batch.add_column(sa.Column("baseline_drop", sa.Float(), nullable=True))
        batch.add_column(sa.Column("pointing_chance", sa.Float(), nullable=True))
        batch.add_column(sa.Column("head_area", sa.Float(), nullable=True))
        batch.add_column(sa.Column("lesion_area", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cam_stats") as batch:
        batch.drop_column("lesion_area")
        batch.drop_column("head_area")
        batch.drop_column("pointing_chance")
        batch.drop_column("baseline_drop")
    with op.batch_alter_table("manifest_rows") as batch:
        batch.drop_column("series")
        batch.drop_column("position")
