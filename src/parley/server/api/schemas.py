"""Request and response bodies (they make /openapi.json). Binary fields are standard base64."""

from __future__ import annotations

import base64
import binascii
import math

from pydantic import BaseModel, ConfigDict, Field

from parley.errors import BadRequest
from parley.protocol.franking import MAX_PARTY, MAX_SENT_AT_MS
from parley.protocol.wire import MAX_ATTACHMENT_ID, MAX_ATTACHMENTS, MAX_CONTROL, MAX_TEXT
from parley.server.handlers.reports import MAX_COMMENT, MAX_CONTEXT

U32 = 2**32 - 1


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def b64(value: str, name: str, length: int | None = None, max_length: int | None = None) -> bytes:
    """Decode a base64 field, checking its length; ``BadRequest`` otherwise."""
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{name} is not valid base64", "invalid_request") from exc
    if length is not None and len(data) != length:
        raise BadRequest(f"{name} must be {length} bytes", "invalid_request")
    if max_length is not None and len(data) > max_length:
        raise BadRequest(f"{name} is longer than {max_length} bytes", "invalid_request")
    return data


def enc(data: bytes) -> str:
    return base64.b64encode(data).decode()


class CodeRequest(Body):
    phone: str = Field(max_length=32, examples=["+14155550123"])


class SignedPreKeyIn(Body):
    key_id: int = Field(ge=0, le=U32)
    public_key: str = Field(max_length=64)
    signature: str = Field(max_length=128)


class KemPreKeyIn(Body):
    key_id: int = Field(ge=0, le=U32)
    public_key: str = Field(max_length=1600)
    signature: str = Field(max_length=128)
    last_resort: bool = False


class OneTimePreKeyIn(Body):
    key_id: int = Field(ge=0, le=U32)
    public_key: str = Field(max_length=64)


class KeysIn(Body):
    signed_prekey: SignedPreKeyIn | None = None
    kem_last_resort: KemPreKeyIn | None = None
    one_time_prekeys: list[OneTimePreKeyIn] = Field(default_factory=list, max_length=200)
    kem_prekeys: list[KemPreKeyIn] = Field(default_factory=list, max_length=200)


class VerifyRequest(Body):
    phone: str = Field(max_length=32)
    code: str = Field(pattern=r"^[0-9]{6}$")
    identity_key: str = Field(max_length=128, description="base64 of Ed25519 || X25519 public keys")
    keys: KeysIn


class RegisteredOut(BaseModel):
    account_id: str
    device_id: int
    credential: str = Field(description="send as 'Authorization: Bearer <credential>'")


class AccountOut(BaseModel):
    account_id: str
    phone: str
    identity_key: str
    created_day: str
    last_seen_day: str
    devices: list[int]


class ContactOut(BaseModel):
    account_id: str
    identity_key: str
    devices: list[int]


class DevicesOut(BaseModel):
    devices: list[int]


class ProvisionIn(Body):
    lookup: str = Field(max_length=64, description="base64 of a 32-byte key derived from the code")
    blob: str = Field(max_length=90_000, description="base64 of the encrypted provisioning message")


class ProvisionOut(BaseModel):
    expires_ms: int


class LookupIn(Body):
    lookup: str = Field(max_length=64)


class BlobOut(BaseModel):
    blob: str


class LinkIn(Body):
    lookup: str = Field(max_length=64)
    keys: KeysIn


class LinkOut(RegisteredOut):
    blob: str


class KeyStatusOut(BaseModel):
    one_time_prekeys: int
    kem_prekeys: int
    low: bool


class SignedPreKeyOut(BaseModel):
    key_id: int
    public_key: str
    signature: str


class KemPreKeyOut(SignedPreKeyOut):
    last_resort: bool


class OneTimePreKeyOut(BaseModel):
    key_id: int
    public_key: str


class DeviceBundleOut(BaseModel):
    device_id: int
    signed_prekey: SignedPreKeyOut
    kem_prekey: KemPreKeyOut
    one_time_prekey: OneTimePreKeyOut | None


class BundlesOut(BaseModel):
    identity_key: str
    devices: list[DeviceBundleOut]


class DeviceMessageIn(Body):
    device_id: int = Field(ge=1, le=U32)
    envelope: str = Field(max_length=400_000)


class SendDirectIn(Body):
    client_id: str = Field(min_length=1, max_length=64)
    messages: list[DeviceMessageIn] = Field(max_length=16)


class SendGroupIn(Body):
    client_id: str = Field(min_length=1, max_length=64)
    envelope: str = Field(max_length=400_000)


class SentOut(BaseModel):
    server_ms: int
    duplicate: bool


class MessageOut(BaseModel):
    id: str
    sender: str
    sender_device: int
    group: str | None
    server_ms: int
    envelope: str
    franking_tag: str


class MessagesOut(BaseModel):
    messages: list[MessageOut]


class AckIn(Body):
    ids: list[str] = Field(max_length=1000)


class GroupCreateIn(Body):
    members: list[str] = Field(max_length=999)


class GroupMemberIn(Body):
    account_id: str = Field(max_length=36)


class GroupOut(BaseModel):
    group_id: str
    members: list[str]
    admins: list[str]


class GroupsOut(BaseModel):
    groups: list[GroupOut]


class GroupChangeIn(Body):
    change: str = Field(min_length=1, max_length=400_000)


class GroupChangeOut(BaseModel):
    version: int


class SealedChangeOut(BaseModel):
    version: int
    change: str


class GroupChangesOut(BaseModel):
    changes: list[SealedChangeOut]
    next_version: int


class AttachmentOut(BaseModel):
    id: str
    expires_ms: int


# Report bounds come from what a receiver accepts (``franking.check_reportable``),
# so every message a client shows can be reported. Text is bounded here in
# characters; the franking check bounds its UTF-8 bytes to MAX_TEXT.
MAX_REPORT_MESSAGES = 1 + MAX_CONTEXT  # the reported message and at most five before it
MAX_CONTROL_B64 = 4 * math.ceil(MAX_CONTROL / 3)
_B64_32 = 44  # base64 of a 32-byte key, digest, commitment or tag


class ReportMessageIn(Body):
    franking_key: str = Field(max_length=_B64_32)
    sender: str = Field(max_length=MAX_PARTY)
    conversation: str = Field(max_length=MAX_PARTY)
    sent_at_ms: int = Field(ge=0, le=MAX_SENT_AT_MS)
    text: str = Field(max_length=MAX_TEXT)
    attachment_digests: list[str] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)
    control: str = Field(default="", max_length=MAX_CONTROL_B64)
    commitment: str = Field(max_length=_B64_32)
    server_ms: int = Field(ge=0, le=MAX_SENT_AT_MS)
    tag: str = Field(max_length=_B64_32)


class ReportAttachmentIn(Body):
    id: str = Field(max_length=MAX_ATTACHMENT_ID)
    key: str = Field(max_length=_B64_32)
    digest: str = Field(max_length=_B64_32)
    name: str = Field(
        default="",
        max_length=255,
        description="the file name the reporter's client shows (not franked: a claim)",
    )


class ReportIn(Body):
    category: str = Field(max_length=16)
    comment: str = Field(default="", max_length=MAX_COMMENT)
    messages: list[ReportMessageIn] = Field(
        min_length=1,
        max_length=MAX_REPORT_MESSAGES,
        description="in delivery order, oldest first; the reported message is the last",
    )
    attachments: list[ReportAttachmentIn] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)


def _field(name: str, value: int) -> int:
    """A field's name, quotes, colon and comma, two optional spaces, and its value."""
    return len(name) + 6 + value


def _text(max_bytes: int) -> int:
    """A JSON string of at most ``max_bytes`` UTF-8 bytes: JSON spends at most 6
    bytes on one byte (a control character as ``\\u0001``; an escaped character
    outside ASCII costs 6 or 12 for its 2 to 4 bytes)."""
    return 2 + 6 * max_bytes


def _chars(max_chars: int) -> int:
    """A JSON string of at most ``max_chars`` characters (12 bytes for one outside the BMP)."""
    return 2 + 12 * max_chars


def _list(items: int, item: int) -> int:
    return 2 + items * (item + 2)


def _worst_report_body() -> int:
    """The largest ``ReportIn`` body a client may send, from the bounds a receiver
    enforces (``franking.check_reportable``): text of MAX_TEXT bytes, control of
    MAX_CONTROL bytes (base64, never escaped), MAX_ATTACHMENTS digests, sender and
    conversation of MAX_PARTY bytes; six messages, MAX_ATTACHMENTS attachments and
    a comment of MAX_COMMENT characters. ``tests/server/test_report_body_limit.py``
    encodes such a report and checks it fits."""
    number = 20
    message = 2 + sum(
        (
            _field("franking_key", 2 + _B64_32),
            _field("sender", _text(MAX_PARTY)),
            _field("conversation", _text(MAX_PARTY)),
            _field("sent_at_ms", number),
            _field("text", _text(MAX_TEXT)),
            _field("attachment_digests", _list(MAX_ATTACHMENTS, 2 + _B64_32)),
            _field("control", 2 + MAX_CONTROL_B64),
            _field("commitment", 2 + _B64_32),
            _field("server_ms", number),
            _field("tag", 2 + _B64_32),
        )
    )
    attachment = 2 + sum(
        (
            _field("id", _text(MAX_ATTACHMENT_ID)),
            _field("key", 2 + _B64_32),
            _field("digest", 2 + _B64_32),
            _field("name", _chars(255)),
        )
    )
    return 2 + sum(
        (
            _field("category", _chars(16)),
            _field("comment", _chars(MAX_COMMENT)),
            _field("messages", _list(MAX_REPORT_MESSAGES, message)),
            _field("attachments", _list(MAX_ATTACHMENTS, attachment)),
        )
    )


# The body limit of ``POST /v1/reports`` (``app.BodyLimit``).
MAX_REPORT_BODY = _worst_report_body()


class IdOut(BaseModel):
    id: str


class ReportOut(BaseModel):
    id: str
    existing: bool = Field(
        description="true when this reporter had already reported this message: its report"
    )


class NoticesOut(BaseModel):
    notices: list[dict[str, object]]


class ResolveIn(Body):
    action: str = Field(max_length=16)
    note: str = Field(default="", max_length=1000)
    days: int | None = Field(default=None, ge=1, le=365, description="a suspension's length")
