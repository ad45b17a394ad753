"""policy: moderate chat completions; models: how many completions the moderation replaced

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28 13:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("moderate_chat", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    for table in ("fine_tuned_models", "base_models"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("flagged_completions", sa.Integer(), nullable=False, server_default="0")
            )


def downgrade() -> None:
    for table in ("fine_tuned_models", "base_models"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("flagged_completions")
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.drop_column("moderate_chat")
