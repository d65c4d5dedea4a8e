"""jobs.client: who asked, for the per-caller limits and the fair queue: the API key's digest
when keys are on, else the caller's address ("ip:<host>"). Earlier jobs take their owner.
jobs.worker_losses and checkpoints.validation_attempts: a job or a validation that keeps
killing its worker is given up after max_worker_losses instead of redelivered forever.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("client", sa.String(80), nullable=True))
        batch_op.add_column(sa.Column("worker_losses", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.add_column(sa.Column("validation_attempts", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE jobs SET client = owner")


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.drop_column("validation_attempts")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("worker_losses")
        batch_op.drop_column("client")
