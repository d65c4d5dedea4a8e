"""structures.invalid_reason: why a structure failed the validity tests

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 11:22:04.436396
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite rebuilds the table where it cannot ALTER it.
    with op.batch_alter_table("structures") as batch_op:
        batch_op.add_column(sa.Column("invalid_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("structures") as batch_op:
        batch_op.drop_column("invalid_reason")
