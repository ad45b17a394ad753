"""policy: protocol v2's prompt counts, samples and the degenerate threshold

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.add_column(sa.Column("harmless_prompts", sa.Integer(), nullable=False, server_default="32"))
        batch_op.add_column(
            sa.Column("borderline_prompts", sa.Integer(), nullable=False, server_default="32")
        )
        batch_op.add_column(sa.Column("eval_samples", sa.Integer(), nullable=False, server_default="2"))
        batch_op.add_column(
            sa.Column("degenerate_threshold", sa.Float(), nullable=False, server_default="25.0")
        )
    # a policy still on protocol v1's defaults (32 AdvBench prompts) moves to protocol v2's split
    op.execute(
        "UPDATE policy SET eval_prompts_file = '', eval_prompts = 64 "
        "WHERE eval_prompts_file = 'eval/advbench.jsonl' AND eval_prompts = 32"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE policy SET eval_prompts_file = 'eval/advbench.jsonl', eval_prompts = 32 "
        "WHERE eval_prompts_file = ''"
    )
    with op.batch_alter_table("policy", schema=None) as batch_op:
        batch_op.drop_column("degenerate_threshold")
        batch_op.drop_column("eval_samples")
        batch_op.drop_column("borderline_prompts")
        batch_op.drop_column("harmless_prompts")
