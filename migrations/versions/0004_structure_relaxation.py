"""structures.relaxed_cif and structures.relaxation (a job with "relax": true keeps each
structure as generated and as relaxed by CHGNet), jobs.phase (sampling, then relaxing)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("structures") as batch_op:
        batch_op.add_column(sa.Column("relaxed_cif", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("relaxation", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("phase", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("phase")
    with op.batch_alter_table("structures") as batch_op:
        batch_op.drop_column("relaxation")
        batch_op.drop_column("relaxed_cif")
