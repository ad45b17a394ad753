"""jobs: the fine-tuned model or checkpoint a job continues training

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 09:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("continues", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("continues_path", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("continues_path")
        batch_op.drop_column("continues")
