"""staff console: sessions, staff revocation, the checks an order passed

Console sessions (``console_sessions``), keyed by a keyed hash of the session
token, never the token itself; when a staff credential was revoked
(``staff.revoked_ms``; a revoked credential authenticates nothing); and the
checks a lawful request ran at submission, each passed, failed or not run
(``legal_requests.checks``, JSON; NULL for requests from before).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("staff_id", sa.String(length=32), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_console_sessions_staff", ["staff_id"], unique=False)
        batch_op.create_index("ix_console_sessions_expiry", ["expires_ms"], unique=False)
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_ms", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("legal_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("checks", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("legal_requests", schema=None) as batch_op:
        batch_op.drop_column("checks")
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.drop_column("revoked_ms")
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_console_sessions_expiry")
        batch_op.drop_index("ix_console_sessions_staff")
    op.drop_table("console_sessions")
