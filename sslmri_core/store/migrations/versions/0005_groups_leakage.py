"""Content groups and the leakage demonstration.

* ``split_assignments.content_hash`` and ``split_assignments.group_key``: each image's file-content
  hash and the group it was split by (its subject, else its exact/near-duplicate component), so an
  SSL pool or a training split can be compared with another folder *by content*, not by path.
* ``predictions.group_key``: the test image's group, the unit a bootstrap resamples where there are no
  subject ids (copies of one image count once).
* ``runs.kind`` admits ``leakage`` (``cli.py leakage``: the subject-vs-image split demonstration).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD_KINDS = "('pretrain', 'finetune', 'evaluate', 'gradcam', 'experiment')"
NEW_KINDS = "('pretrain', 'finetune', 'evaluate', 'gradcam', 'experiment', 'leakage')"


def upgrade() -> None:
    with op.batch_alter_table("split_assignments") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("group_key", sa.Text(), nullable=True))
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("group_key", sa.Text(), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("ck_runs_kind", type_="check")
        batch.create_check_constraint("ck_runs_kind", f"kind IN {NEW_KINDS}")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("ck_runs_kind", type_="check")
        batch.create_check_constraint("ck_runs_kind", f"kind IN {OLD_KINDS}")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("group_key")
    with op.batch_alter_table("split_assignments") as batch:
        batch.drop_column("group_key")
        batch.drop_column("content_hash")
