"""leases and key-directory removals

Named leases with a fencing token, so that singleton work (key-directory
epochs, maintenance, user notices) runs on exactly one node of a cluster;
and the leaves each epoch took out of the key directory (by index hash), so
that other nodes follow epochs without rebuilding the tree.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 19:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=32), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "kt_removals",
        sa.Column("idx", sa.LargeBinary(length=32), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("idx", "epoch"),
    )


def downgrade() -> None:
    op.drop_table("kt_removals")
    op.drop_table("leases")
