"""Parley's versioned binary envelopes and payloads.

Every top-level structure starts with ``version (u8) || kind (u8)``. Decoders
are strict: wrong version or kind, a field over its bound, a bad key length
or trailing bytes all raise ``MalformedMessage`` (a ``RemoteProtocolError``).
Property-tested in ``tests/protocol/test_wire_fuzz.py``: any bytes either
decode or raise ``RemoteProtocolError``.

Layouts (big-endian integers, ``var`` = u32 length + bytes):

    RatchetMessage       v k dh(32) pn(u32) n(u32) commitment(32) var(ciphertext)
    PreKeyMessage        v k identity(64) base_key(32) spk_id(u32) has_opk(u8)
                         [opk_id(u32)] kem_id(u32) kem_ct(1088) var(RatchetMessage)
    SenderKeyMessage     v k distribution_id(16) iteration(u32) commitment(32)
                         var(ciphertext) signature(64)
    SenderKeyDistribution v k group_id(var<=64) distribution_id(16) iteration(u32)
                         chain_key(32) signing_key(32)
    Content              v k franking_key(32) sent_at_ms(u64) text(var)
                         n(u8) n*AttachmentPointer control(var)
    PreKeyBundle         v k identity(64) spk_id(u32) spk(32) spk_sig(64) has_opk(u8)
                         [opk_id(u32) opk(32)] kem_id(u32) kem(1184) kem_sig(64)
                         kem_last_resort(u8)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from parley.crypto.primitives import (
    ED25519_LEN,
    MLKEM768_CIPHERTEXT_LEN,
    MLKEM768_PUBLIC_LEN,
    SIGNATURE_LEN,
    X25519_LEN,
)
from parley.errors import MalformedMessage, RemoteProtocolError
from parley.protocol.codec import Reader, Writer

VERSION = 1

KIND_RATCHET = 1
KIND_PREKEY = 2
KIND_SENDER_KEY = 3
KIND_SENDER_KEY_DISTRIBUTION = 4
KIND_CONTENT = 5
KIND_BUNDLE = 6

IDENTITY_LEN = ED25519_LEN + X25519_LEN
COMMITMENT_LEN = 32
DISTRIBUTION_ID_LEN = 16
MAX_CIPHERTEXT = 256 * 1024
MAX_TEXT = 64 * 1024
MAX_CONTROL = 64 * 1024
MAX_ATTACHMENTS = 32
MAX_GROUP_ID = 64
MAX_ATTACHMENT_ID = 128
MAX_CONTENT_TYPE = 128
MAX_FILENAME = 255


def _check_header(version: int, got: int, kind: int) -> None:
    if version != VERSION:
        raise MalformedMessage(f"unsupported version {version}")
    if got != kind:
        raise MalformedMessage(f"expected kind {kind}, got {got}")


def _header(r: Reader, kind: int) -> None:
    _check_header(r.u8(), r.u8(), kind)


def peek_kind(data: bytes) -> int:
    """The kind byte of an envelope, after checking its version."""
    if len(data) < 2:
        raise MalformedMessage("truncated input")
    if data[0] != VERSION:
        raise MalformedMessage(f"unsupported version {data[0]}")
    return data[1]


@dataclass(frozen=True, slots=True)
class IdentityPublic:
    """A user's public identity: Ed25519 signing key and X25519 agreement key."""

    signing: bytes
    dh: bytes

    def to_bytes(self) -> bytes:
        return self.signing + self.dh

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityPublic:
        if len(data) != IDENTITY_LEN:
            raise MalformedMessage("identity key must be 64 bytes")
        return cls(signing=data[:ED25519_LEN], dh=data[ED25519_LEN:])


# -- 1:1 envelopes -------------------------------------------------------------


_RATCHET_PREFIX = struct.Struct(">BB32sII32s")
_SENDER_KEY_PREFIX = struct.Struct(">BB16sI32s")
_U32 = struct.Struct(">I")
_CONTENT_HEAD = struct.Struct(">BB32sQI")


def _var_tail(data: bytes, offset: int, max_len: int, trailing: int) -> bytes:
    """The ``var`` field at ``offset`` when only ``trailing`` fixed bytes follow it."""
    return data[offset + 4 : _var_end(data, offset, max_len, trailing)]


def _var_end(data: bytes, offset: int, max_len: int, trailing: int) -> int:
    """Where ``_var_tail``'s field ends, after checking its bounds."""
    if len(data) < offset + 4:
        raise MalformedMessage("truncated input")
    length: int = _U32.unpack_from(data, offset)[0]
    if length > max_len:
        raise MalformedMessage(f"field length {length} exceeds its bound {max_len}")
    end = offset + 4 + length
    if len(data) != end + trailing:
        raise MalformedMessage(
            "truncated input" if len(data) < end + trailing else "trailing bytes"
        )
    return end


@dataclass(frozen=True, slots=True)
class RatchetMessage:
    dh: bytes
    pn: int
    n: int
    commitment: bytes
    ciphertext: bytes

    def prefix(self) -> bytes:
        """Everything before the ciphertext; authenticated as associated data."""
        if len(self.dh) != X25519_LEN or len(self.commitment) != COMMITMENT_LEN:
            raise ValueError("ratchet key and commitment must be 32 bytes")
        return _RATCHET_PREFIX.pack(
            VERSION, KIND_RATCHET, self.dh, self.pn, self.n, self.commitment
        )

    def to_bytes(self) -> bytes:
        if len(self.ciphertext) > MAX_CIPHERTEXT:
            raise ValueError("ciphertext too large")
        return self.prefix() + _U32.pack(len(self.ciphertext)) + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetMessage:
        data = bytes(data)
        if len(data) < _RATCHET_PREFIX.size:
            raise MalformedMessage("truncated input")
        version, kind, dh, pn, n, commitment = _RATCHET_PREFIX.unpack_from(data)
        _check_header(version, kind, KIND_RATCHET)
        ciphertext = _var_tail(data, _RATCHET_PREFIX.size, MAX_CIPHERTEXT, 0)
        return cls(dh, pn, n, commitment, ciphertext)


@dataclass(frozen=True, slots=True)
class PreKeyMessage:
    """The first messages of a session: PQXDH parameters plus a ratchet message."""

    identity: IdentityPublic
    base_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    kem_prekey_id: int
    kem_ciphertext: bytes
    message: RatchetMessage

    def to_bytes(self) -> bytes:
        w = (
            Writer()
            .u8(VERSION)
            .u8(KIND_PREKEY)
            .fixed(self.identity.to_bytes(), IDENTITY_LEN)
            .fixed(self.base_key, X25519_LEN)
            .u32(self.signed_prekey_id)
        )
        if self.one_time_prekey_id is None:
            w.u8(0)
        else:
            w.u8(1).u32(self.one_time_prekey_id)
        w.u32(self.kem_prekey_id).fixed(self.kem_ciphertext, MLKEM768_CIPHERTEXT_LEN)
        w.var(self.message.to_bytes(), MAX_CIPHERTEXT + 128)
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PreKeyMessage:
        r = Reader(data)
        _header(r, KIND_PREKEY)
        identity = IdentityPublic.from_bytes(r.fixed(IDENTITY_LEN))
        base_key = r.fixed(X25519_LEN)
        spk_id = r.u32()
        opk_id = r.u32() if r.bool() else None
        kem_id = r.u32()
        kem_ct = r.fixed(MLKEM768_CIPHERTEXT_LEN)
        inner = RatchetMessage.from_bytes(r.var(MAX_CIPHERTEXT + 128))
        r.end()
        return cls(identity, base_key, spk_id, opk_id, kem_id, kem_ct, inner)


# -- Groups --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SenderKeyMessage:
    distribution_id: bytes
    iteration: int
    commitment: bytes
    ciphertext: bytes
    signature: bytes

    def prefix(self) -> bytes:
        """Everything before the ciphertext; authenticated as associated data."""
        if len(self.distribution_id) != DISTRIBUTION_ID_LEN or len(self.commitment) != 32:
            raise ValueError("bad distribution id or commitment length")
        return _SENDER_KEY_PREFIX.pack(
            VERSION, KIND_SENDER_KEY, self.distribution_id, self.iteration, self.commitment
        )

    def signed_part(self) -> bytes:
        if len(self.ciphertext) > MAX_CIPHERTEXT:
            raise ValueError("ciphertext too large")
        return self.prefix() + _U32.pack(len(self.ciphertext)) + self.ciphertext

    def to_bytes(self) -> bytes:
        if len(self.signature) != SIGNATURE_LEN:
            raise ValueError("signature must be 64 bytes")
        return self.signed_part() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SenderKeyMessage:
        data = bytes(data)
        if len(data) < _SENDER_KEY_PREFIX.size:
            raise MalformedMessage("truncated input")
        version, kind, distribution_id, iteration, commitment = _SENDER_KEY_PREFIX.unpack_from(data)
        _check_header(version, kind, KIND_SENDER_KEY)
        ciphertext = _var_tail(data, _SENDER_KEY_PREFIX.size, MAX_CIPHERTEXT, SIGNATURE_LEN)
        return cls(distribution_id, iteration, commitment, ciphertext, data[-SIGNATURE_LEN:])


@dataclass(frozen=True, slots=True)
class SenderKeyDistribution:
    """A sender's chain and signing key for one group, sent over pairwise sessions."""

    group_id: bytes
    distribution_id: bytes
    iteration: int
    chain_key: bytes
    signing_key: bytes

    def to_bytes(self) -> bytes:
        return (
            Writer()
            .u8(VERSION)
            .u8(KIND_SENDER_KEY_DISTRIBUTION)
            .var(self.group_id, MAX_GROUP_ID)
            .fixed(self.distribution_id, DISTRIBUTION_ID_LEN)
            .u32(self.iteration)
            .fixed(self.chain_key, 32)
            .fixed(self.signing_key, ED25519_LEN)
            .to_bytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SenderKeyDistribution:
        r = Reader(data)
        _header(r, KIND_SENDER_KEY_DISTRIBUTION)
        msg = cls(
            group_id=r.var(MAX_GROUP_ID),
            distribution_id=r.fixed(DISTRIBUTION_ID_LEN),
            iteration=r.u32(),
            chain_key=r.fixed(32),
            signing_key=r.fixed(ED25519_LEN),
        )
        r.end()
        return msg


# -- Plaintext payload -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttachmentPointer:
    """Where an encrypted attachment lives and how to open it.

    ``digest`` is SHA-256 of the uploaded (encrypted, key-committed) blob; it is
    what franking binds, so a report can name the exact bytes the receiver got.
    """

    id: str
    key: bytes
    digest: bytes
    size: int
    content_type: str
    name: str

    def write(self, w: Writer) -> None:
        w.text(self.id, MAX_ATTACHMENT_ID).fixed(self.key, 32).fixed(self.digest, 32)
        w.u64(self.size).text(self.content_type, MAX_CONTENT_TYPE).text(self.name, MAX_FILENAME)

    @classmethod
    def read(cls, r: Reader) -> AttachmentPointer:
        return cls(
            id=r.text(MAX_ATTACHMENT_ID),
            key=r.fixed(32),
            digest=r.fixed(32),
            size=r.u64(),
            content_type=r.text(MAX_CONTENT_TYPE),
            name=r.text(MAX_FILENAME),
        )


@dataclass(frozen=True, slots=True)
class Content:
    """What a message carries once decrypted.

    ``control`` is an opaque application field (group changes, sync copies,
    sender-key distributions); it is franked like the text, so nothing a
    receiver is shown escapes the commitment.
    """

    franking_key: bytes
    sent_at_ms: int
    text: str = ""
    attachments: tuple[AttachmentPointer, ...] = ()
    control: bytes = b""

    def to_bytes(self) -> bytes:
        if len(self.attachments) > MAX_ATTACHMENTS or len(self.franking_key) != 32:
            raise ValueError("too many attachments or a bad franking key")
        text = self.text.encode("utf-8")
        if len(text) > MAX_TEXT or len(self.control) > MAX_CONTROL:
            raise ValueError("text or control too large")
        parts = [
            _CONTENT_HEAD.pack(
                VERSION, KIND_CONTENT, self.franking_key, self.sent_at_ms, len(text)
            ),
            text,
            bytes((len(self.attachments),)),
        ]
        if self.attachments:
            w = Writer()
            for attachment in self.attachments:
                attachment.write(w)
            parts.append(w.to_bytes())
        parts += [_U32.pack(len(self.control)), self.control]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Content:
        data = bytes(data)
        if len(data) < _CONTENT_HEAD.size:
            raise MalformedMessage("truncated input")
        version, kind, franking_key, sent_at_ms, text_len = _CONTENT_HEAD.unpack_from(data)
        _check_header(version, kind, KIND_CONTENT)
        if text_len > MAX_TEXT:
            raise MalformedMessage("text too long")
        r = Reader(data)
        r.fixed(_CONTENT_HEAD.size)
        try:
            text = r.fixed(text_len).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("invalid UTF-8") from exc
        count = r.u8()
        if count > MAX_ATTACHMENTS:
            raise MalformedMessage("too many attachments")
        attachments = tuple(AttachmentPointer.read(r) for _ in range(count))
        control = r.var(MAX_CONTROL)
        r.end()
        return cls(franking_key, sent_at_ms, text, attachments, control)


# -- Prekey bundles ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What a device publishes so others can start a session with it (PQXDH §3.2)."""

    identity: IdentityPublic
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    kem_prekey_id: int
    kem_prekey: bytes
    kem_prekey_signature: bytes
    kem_last_resort: bool
    one_time_prekey_id: int | None = None
    one_time_prekey: bytes | None = None

    def to_bytes(self) -> bytes:
        w = Writer().u8(VERSION).u8(KIND_BUNDLE).fixed(self.identity.to_bytes(), IDENTITY_LEN)
        w.u32(self.signed_prekey_id).fixed(self.signed_prekey, X25519_LEN)
        w.fixed(self.signed_prekey_signature, SIGNATURE_LEN)
        if self.one_time_prekey_id is None or self.one_time_prekey is None:
            w.u8(0)
        else:
            w.u8(1).u32(self.one_time_prekey_id).fixed(self.one_time_prekey, X25519_LEN)
        w.u32(self.kem_prekey_id).fixed(self.kem_prekey, MLKEM768_PUBLIC_LEN)
        w.fixed(self.kem_prekey_signature, SIGNATURE_LEN).bool(self.kem_last_resort)
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PreKeyBundle:
        r = Reader(data)
        _header(r, KIND_BUNDLE)
        identity = IdentityPublic.from_bytes(r.fixed(IDENTITY_LEN))
        spk_id, spk, spk_sig = r.u32(), r.fixed(X25519_LEN), r.fixed(SIGNATURE_LEN)
        opk_id: int | None = None
        opk: bytes | None = None
        if r.bool():
            opk_id, opk = r.u32(), r.fixed(X25519_LEN)
        kem_id, kem = r.u32(), r.fixed(MLKEM768_PUBLIC_LEN)
        kem_sig, last_resort = r.fixed(SIGNATURE_LEN), r.bool()
        r.end()
        return cls(identity, spk_id, spk, spk_sig, kem_id, kem, kem_sig, last_resort, opk_id, opk)


Envelope = RatchetMessage | PreKeyMessage | SenderKeyMessage


def decode_envelope(data: bytes) -> Envelope:
    """Decode any message envelope by its kind; ``RemoteProtocolError`` otherwise."""
    kind = peek_kind(data)
    if kind == KIND_RATCHET:
        return RatchetMessage.from_bytes(data)
    if kind == KIND_PREKEY:
        return PreKeyMessage.from_bytes(data)
    if kind == KIND_SENDER_KEY:
        return SenderKeyMessage.from_bytes(data)
    raise MalformedMessage(f"unknown envelope kind {kind}")


def envelope_commitment(data: bytes) -> tuple[int, bytes]:
    """An envelope's kind and franking commitment, after every check ``decode_envelope``
    makes (``MalformedMessage`` otherwise), without building it: the server needs only
    these, once per message and recipient device, and the objects and copies cost
    about a tenth of its event loop's time per message. A pre-key message (a
    session's first) is decoded whole."""
    kind = peek_kind(data)
    if kind == KIND_RATCHET:
        head = _RATCHET_PREFIX.size
        if len(data) < head:
            raise MalformedMessage("truncated input")
        _var_end(data, head, MAX_CIPHERTEXT, 0)
        return kind, bytes(data[head - COMMITMENT_LEN : head])
    if kind == KIND_SENDER_KEY:
        head = _SENDER_KEY_PREFIX.size
        if len(data) < head:
            raise MalformedMessage("truncated input")
        _var_end(data, head, MAX_CIPHERTEXT, SIGNATURE_LEN)
        return kind, bytes(data[head - COMMITMENT_LEN : head])
    if kind == KIND_PREKEY:
        return kind, PreKeyMessage.from_bytes(data).message.commitment
    raise MalformedMessage(f"unknown envelope kind {kind}")


__all__ = [
    "AttachmentPointer",
    "Content",
    "Envelope",
    "IdentityPublic",
    "PreKeyBundle",
    "PreKeyMessage",
    "RatchetMessage",
    "RemoteProtocolError",
    "SenderKeyDistribution",
    "SenderKeyMessage",
    "decode_envelope",
    "envelope_commitment",
    "peek_kind",
]
