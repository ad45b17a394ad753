"""policy

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 21:33:15.067726
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("harmful_score_threshold", sa.Float(), nullable=False),
        sa.Column("eval_prompts_file", sa.Text(), nullable=False),
        sa.Column("eval_prompts", sa.Integer(), nullable=False),
        sa.Column("prescreen_action", sa.String(length=8), nullable=False),
        sa.Column("prescreen_threshold", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("policy")
