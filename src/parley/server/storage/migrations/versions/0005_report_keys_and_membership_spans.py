"""report keys and membership spans

One report per reporter and message (``reports.report_key``, the SHA-256 of
the reported message's server tag; NULL for reports made before), an index to
count a reporter's reports of the last hour from the table, when each current
membership began, and the spans of ended memberships (kept 90 days), so a
member removed from a group can still report what it received while a member.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_key", sa.LargeBinary(length=32), nullable=True))
        batch_op.create_index("ix_reports_reporter_key", ["reporter", "report_key"], unique=True)
        batch_op.create_index("ix_reports_reporter_time", ["reporter", "created_ms"], unique=False)
    with op.batch_alter_table("group_members", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("joined_ms", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "group_departures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("group_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("joined_ms", sa.BigInteger(), nullable=False),
        sa.Column("left_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("group_departures", schema=None) as batch_op:
        batch_op.create_index(
            "ix_group_departures_member", ["group_id", "account_id"], unique=False
        )
        batch_op.create_index("ix_group_departures_left", ["left_ms"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("group_departures", schema=None) as batch_op:
        batch_op.drop_index("ix_group_departures_left")
        batch_op.drop_index("ix_group_departures_member")
    op.drop_table("group_departures")
    with op.batch_alter_table("group_members", schema=None) as batch_op:
        batch_op.drop_column("joined_ms")
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index("ix_reports_reporter_time")
        batch_op.drop_index("ix_reports_reporter_key")
        batch_op.drop_column("report_key")
