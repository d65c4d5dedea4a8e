"""checkpoints.chosen_by_admin (an admin's activation survives restarts and deploys) and
checkpoints.validation_sent_at (an upload the broker never got is sent again)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 11:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.add_column(
            sa.Column("chosen_by_admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("validation_sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.drop_column("validation_sent_at")
        batch_op.drop_column("chosen_by_admin")
