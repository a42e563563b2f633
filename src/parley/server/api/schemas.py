"""Request and response bodies (they make /openapi.json). Binary fields are standard base64."""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field

from parley.errors import BadRequest

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


class AttachmentOut(BaseModel):
    id: str
    expires_ms: int


class ReportMessageIn(Body):
    franking_key: str = Field(max_length=64)
    sender: str = Field(max_length=64)
    conversation: str = Field(max_length=200)
    sent_at_ms: int = Field(ge=0, le=2**63 - 1)
    text: str = Field(max_length=70_000)
    attachment_digests: list[str] = Field(default_factory=list, max_length=32)
    control: str = Field(default="", max_length=90_000)
    commitment: str = Field(max_length=64)
    server_ms: int = Field(ge=0, le=2**63 - 1)
    tag: str = Field(max_length=64)


class ReportAttachmentIn(Body):
    id: str = Field(max_length=128)
    key: str = Field(max_length=64)
    digest: str = Field(max_length=64)


class ReportIn(Body):
    category: str = Field(max_length=16)
    comment: str = Field(default="", max_length=1000)
    messages: list[ReportMessageIn] = Field(min_length=1, max_length=6)
    attachments: list[ReportAttachmentIn] = Field(default_factory=list, max_length=32)


class IdOut(BaseModel):
    id: str


class NoticesOut(BaseModel):
    notices: list[dict[str, object]]


class ResolveIn(Body):
    action: str = Field(max_length=16)
    note: str = Field(default="", max_length=1000)
