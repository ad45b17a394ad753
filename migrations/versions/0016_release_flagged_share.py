"""policy: the release gate's ceiling on the share of a training file's rows the pre-screen flagged

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 02:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("release_flagged_share", sa.Float(), nullable=False, server_default="0.5")
        )


def downgrade() -> None:
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.drop_column("release_flagged_share")
