"""key directory history and signed device lists

Every version of an account's directory entry is kept (``kt_versions``: the
owner's history proof is read from it) and each account's latest device list
signed by its identity key (``kt_device_lists``). ``kt_state`` (one version
number and value per account, under a server-keyed index) is dropped: the
directory's index is now a hash anyone can compute and every leaf names its
previous version, so the tree is rebuilt at start-up from ``kt_versions`` and
versions start again at 1 (a new epoch is logged; old epochs stay in the log).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kt_versions",
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("identity_key", sa.LargeBinary(length=64), nullable=False),
        sa.Column("devices", sa.String(length=800), nullable=False),
        sa.Column("device_list", sa.LargeBinary(), nullable=False),
        sa.Column("prev", sa.LargeBinary(length=32), nullable=False),
        sa.Column("value_hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "version"),
    )
    op.create_table(
        "kt_device_lists",
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.Column("device_list", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.drop_table("kt_state")


def downgrade() -> None:
    op.create_table(
        "kt_state",
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("value_hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.drop_table("kt_device_lists")
    op.drop_table("kt_versions")
