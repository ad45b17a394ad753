"""defense stacks: the policy's and a tenant's override

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 09:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # null: the policy's stack comes from the settings on its next read; a tenant's means "the policy's"
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.add_column(sa.Column("defenses", sa.JSON(), nullable=True))
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("defenses", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("defenses")
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.drop_column("defenses")
