"""The schema, as SQLAlchemy Core tables. Changes go through a migration in ``migrations/``.

What is kept about a person (README, "What the server keeps"): the phone
number, the creation date, the last-seen *day*, devices with hashed
credentials, public keys, group membership (with join times, and ended
memberships for 90 days, for reports), and a connection log of IP
addresses pruned after the retention period. Queued messages are ciphertext
and are deleted on acknowledgement or expiry.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("phone", String(20), nullable=False, unique=True),
    Column("identity_key", LargeBinary(64), nullable=False),
    Column("created_day", String(10), nullable=False),
    Column("last_seen_day", String(10), nullable=False),
    Column("next_device_id", Integer, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("account_id", String(36), primary_key=True),
    Column("device_id", Integer, primary_key=True),
    Column("credential_hash", LargeBinary(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

signed_prekeys = Table(
    "signed_prekeys",
    metadata,
    Column("account_id", String(36), primary_key=True),
    Column("device_id", Integer, primary_key=True),
    Column("key_id", BigInteger, nullable=False),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)

kem_prekeys = Table(
    "kem_prekeys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(36), nullable=False),
    Column("device_id", Integer, nullable=False),
    Column("key_id", BigInteger, nullable=False),
    Column("public_key", LargeBinary(1184), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
    Column("last_resort", Boolean, nullable=False),
    Index("ix_kem_prekeys_owner", "account_id", "device_id", "last_resort"),
)

one_time_prekeys = Table(
    "one_time_prekeys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(36), nullable=False),
    Column("device_id", Integer, nullable=False),
    Column("key_id", BigInteger, nullable=False),
    Column("public_key", LargeBinary(32), nullable=False),
    Index("ix_one_time_prekeys_owner", "account_id", "device_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("guid", String(36), nullable=False, unique=True),
    Column("account_id", String(36), nullable=False),
    Column("device_id", Integer, nullable=False),
    Column("sender_account", String(36), nullable=False),
    Column("sender_device", Integer, nullable=False),
    Column("group_id", String(32), nullable=True),
    Column("envelope", LargeBinary, nullable=False),
    Column("franking_tag", LargeBinary(32), nullable=False),
    Column("server_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_messages_queue", "account_id", "device_id", "id"),
    Index("ix_messages_expiry", "expires_ms"),
    # Ids must only grow, even after the newest row is deleted: delivery
    # sessions use them to order and de-duplicate (SQLite reuses rowids otherwise).
    sqlite_autoincrement=True,
)

# Idempotency for re-sends. The key is HMAC(server secret, sender, device,
# client message id): it names no recipient, so it is no record of who wrote
# to whom, and it is pruned after a day.
sent_keys = Table(
    "sent_keys",
    metadata,
    Column("key", LargeBinary(32), primary_key=True),
    Column("server_ms", BigInteger, nullable=False),
    Index("ix_sent_keys_time", "server_ms"),
)

groups = Table(
    "groups",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_ms", BigInteger, nullable=False),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", String(32), primary_key=True),
    Column("account_id", String(36), primary_key=True),
    Column("admin", Boolean, nullable=False),
    # When this membership began (migration 0005; 0 for members from before it).
    Column("joined_ms", BigInteger, nullable=False, server_default="0"),
    Index("ix_group_members_account", "account_id"),
)

# Memberships that ended (removed or left), kept for ``MEMBERSHIP_RETENTION_MS``
# after they ended, so a former member can still report what it received while
# a member (migration 0005). One row per ended span: a member can rejoin.
group_departures = Table(
    "group_departures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("group_id", String(32), nullable=False),
    Column("account_id", String(36), nullable=False),
    Column("joined_ms", BigInteger, nullable=False),
    Column("left_ms", BigInteger, nullable=False),
    Index("ix_group_departures_member", "group_id", "account_id"),
    Index("ix_group_departures_left", "left_ms"),
)

# A group's signed changes, sealed under the members' master key (migration 0007):
# opaque to the server, which keeps them in version order for new devices and
# members catching up, and can neither make nor reorder one.
group_changes = Table(
    "group_changes",
    metadata,
    Column("group_id", String(32), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("blob", LargeBinary, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

attachments = Table(
    "attachments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_attachments_expiry", "expires_ms"),
)

registration_codes = Table(
    "registration_codes",
    metadata,
    Column("phone", String(20), primary_key=True),
    Column("code_hash", LargeBinary(32), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
)

provisioning = Table(
    "provisioning",
    metadata,
    Column("lookup_hash", LargeBinary(32), primary_key=True),
    Column("account_id", String(36), nullable=False),
    Column("blob", LargeBinary, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

connection_log = Table(
    "connection_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(36), nullable=False),
    Column("ip", String(45), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_connection_log_account", "account_id", "at_ms"),
    Index("ix_connection_log_time", "at_ms"),
)

server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", LargeBinary(64), nullable=False),
)

# -- moderation (migration 0002) ------------------------------------------------------

# Only accounts under a moderation action have a row here.
account_status = Table(
    "account_status",
    metadata,
    Column("account_id", String(36), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("until_ms", BigInteger, nullable=True),
)

staff = Table(
    "staff",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("credential_hash", LargeBinary(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # When the credential was revoked (migration 0009): it then authenticates nothing.
    Column("revoked_ms", BigInteger, nullable=True),
)

# Staff console sessions (migration 0009): the cookie's token is stored only as a
# keyed hash, so a copy of the database opens no session.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", LargeBinary(32), primary_key=True),
    Column("staff_id", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_console_sessions_staff", "staff_id"),
    Index("ix_console_sessions_expiry", "expires_ms"),
)


reports = Table(
    "reports",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("reporter", String(36), nullable=False),
    Column("category", String(16), nullable=False),
    Column("comment", String(1000), nullable=False),
    Column("sender_account", String(36), nullable=False),
    Column("conversation", String(300), nullable=False),
    Column("group_id", String(32), nullable=True),
    Column("content", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),
    Column("action", String(16), nullable=True),
    Column("note", String(1000), nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("resolved_ms", BigInteger, nullable=True),
    # SHA-256 of the reported message's server tag (migration 0005; NULL before):
    # one report per reporter and message.
    Column("report_key", LargeBinary(32), nullable=True),
    Index("ix_reports_status", "status", "created_ms"),
    Index("ix_reports_reporter_key", "reporter", "report_key", unique=True),
    Index("ix_reports_reporter_time", "reporter", "created_ms"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(140), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(140), nullable=False),
    Column("details", LargeBinary, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    sqlite_autoincrement=True,
)

notices = Table(
    "notices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(36), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_notices_account", "account_id", "id"),
    sqlite_autoincrement=True,
)

# -- transparency and lawful requests (migration 0003) ---------------------------------

translog_entries = Table(
    "translog_entries",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)

# Leaves taken out of the key directory (a deleted account), by index hash and the
# epoch that removed them, so other nodes follow epochs without rebuilding the tree.
kt_removals = Table(
    "kt_removals",
    metadata,
    Column("idx", LargeBinary(32), primary_key=True),
    Column("epoch", BigInteger, primary_key=True),
)

# Singleton work (key-directory epochs, maintenance, notices) runs on one node at
# a time: the holder of the named lease. ``token`` grows at every change of hands
# and fences the holder's writes (storage/leases.py).
leases = Table(
    "leases",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(32), nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

authorities = Table(
    "authorities",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("jurisdiction", String(2), nullable=False),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
    Column("created_ms", BigInteger, nullable=False),
)

legal_requests = Table(
    "legal_requests",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("order_id", String(128), nullable=False, index=True),
    Column("authority_id", String(32), nullable=False),
    Column("order", LargeBinary, nullable=False),
    Column("target_account", String(36), nullable=True),
    Column("status", String(16), nullable=False),
    Column("granted", String(200), nullable=False),
    Column("refused", LargeBinary, nullable=False),
    Column("approvals", String(200), nullable=False),
    Column("reason", String(1000), nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("notice_sent", Boolean, nullable=False),
    # Each check run at submission, passed/failed/not run (JSON; migration 0009).
    Column("checks", LargeBinary, nullable=True),
)

policies = Table(
    "policies",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("text", LargeBinary, nullable=False),
    Column("sha256", LargeBinary(32), nullable=False),
    Column("log_index", Integer, nullable=False),
    Column("published_ms", BigInteger, nullable=False),
)

# -- key transparency (migrations 0004, 0006) -------------------------------------------
# Every version of every account's directory entry, as published (the owner's history
# proof is read from here), and the device list each owner last signed.
kt_versions = Table(
    "kt_versions",
    metadata,
    Column("account_id", String(36), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("identity_key", LargeBinary(64), nullable=False),
    Column("devices", String(800), nullable=False),
    Column("device_list", LargeBinary, nullable=False),
    Column("prev", LargeBinary(32), nullable=False),
    Column("value_hash", LargeBinary(32), nullable=False),
)

kt_device_lists = Table(
    "kt_device_lists",
    metadata,
    Column("account_id", String(36), primary_key=True),
    Column("counter", BigInteger, nullable=False),
    Column("device_list", LargeBinary, nullable=False),
)

__all__ = ["UniqueConstraint", "metadata"]
