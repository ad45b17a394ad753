"""checkpoint permissions: another tenant may continue training from a job's checkpoint

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoint_permissions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("checkpoint", sa.String(length=300), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("checkpoint", "tenant_id"),
    )
    with op.batch_alter_table("checkpoint_permissions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_checkpoint_permissions_checkpoint"), ["checkpoint"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_checkpoint_permissions_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("checkpoint_permissions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkpoint_permissions_job_id"))
        batch_op.drop_index(batch_op.f("ix_checkpoint_permissions_checkpoint"))
    op.drop_table("checkpoint_permissions")
