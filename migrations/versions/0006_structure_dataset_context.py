"""structures.known_as and structures.novel (the dataset structure a designed one matches) and
structures.predicted_e_above_hull (its distance to the hull of the dataset's compounds)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("structures") as batch_op:
        batch_op.add_column(sa.Column("known_as", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("novel", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("predicted_e_above_hull", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("structures") as batch_op:
        batch_op.drop_column("predicted_e_above_hull")
        batch_op.drop_column("novel")
        batch_op.drop_column("known_as")
