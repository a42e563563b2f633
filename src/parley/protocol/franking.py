"""Message franking: commitments that make abuse reports verifiable.

Theory of operation (after Facebook's message franking and Grubbs-Lu-Ristenpart,
"Message Franking via Committing Authenticated Encryption", CRYPTO 2017):

1. The sender draws a fresh 32-byte franking key ``fk`` per message, puts it
   inside the encrypted ``Content`` and sends, outside the ciphertext,
   ``commitment = HMAC-SHA256(fk, franked(sender, conversation, content))``.
   ``franked`` binds the sender, the conversation, the send time, the text,
   the digest of every attachment blob and the control field; not the
   attachment keys, which a report need not reveal (attachment blobs are
   key-committing, so their digest pins the key).
2. The commitment is part of the AEAD associated data, and the receiver
   recomputes it after decrypting: a mismatch is an undecryptable message, so
   nothing a receiver was shown can be unreportable.
3. The server, which sees only ciphertext, adds on delivery
   ``tag = HMAC-SHA256(server_secret, commitment, sender, conversation, time)``.
   Only the server can check a tag, so the opening is no proof to anyone
   else (deniability towards third parties).
4. A report reveals the opening (``fk`` and the franked fields) with the
   commitment, time and tag; the server recomputes both MACs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from parley.crypto.primitives import HmacKey, constant_time_equal, hmac_sha256
from parley.errors import FrankingError
from parley.protocol.wire import MAX_ATTACHMENTS, MAX_CONTROL, MAX_TEXT, Content

_COMMIT_LABEL = b"parley/franking/v1/commitment"
_TAG_LABEL = b"parley/franking/v1/server-tag"
MAX_PARTY = 256
# The latest send time a message may carry. The wire has a u64, but a report
# travels as JSON and is stored in SQL, whose integers stop at 2**63 - 1: a
# receiver refuses what a report could not carry, so no message it shows is
# unreportable.
MAX_SENT_AT_MS = 2**63 - 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class Opening:
    """What a reporter reveals about one message, and nothing more."""

    franking_key: bytes
    sender: str
    conversation: str
    sent_at_ms: int
    text: str
    attachment_digests: tuple[bytes, ...]
    control: bytes

    @classmethod
    def of(cls, content: Content, sender: str, conversation: str) -> Opening:
        return cls(
            content.franking_key,
            sender,
            conversation,
            content.sent_at_ms,
            content.text,
            tuple(a.digest for a in content.attachments),
            content.control,
        )

    def franked_bytes(self) -> bytes:
        """The committed encoding: label, then each field length-prefixed (u32, u64 time)."""
        sender, conversation = self.sender.encode(), self.conversation.encode()
        text = self.text.encode()
        if max(len(sender), len(conversation)) > MAX_PARTY or len(text) > MAX_TEXT:
            raise FrankingError("franked field too long")
        if len(self.control) > MAX_CONTROL or len(self.attachment_digests) > 255:
            raise FrankingError("franked field too long")
        if any(len(d) != 32 for d in self.attachment_digests):
            raise FrankingError("attachment digest must be 32 bytes")
        return b"".join(
            (
                _COMMIT_LABEL,
                _U32.pack(len(sender)),
                sender,
                _U32.pack(len(conversation)),
                conversation,
                _U64.pack(self.sent_at_ms),
                _U32.pack(len(text)),
                text,
                bytes((len(self.attachment_digests),)),
                *self.attachment_digests,
                _U32.pack(len(self.control)),
                self.control,
            )
        )

    def commitment(self) -> bytes:
        return hmac_sha256(self.franking_key, self.franked_bytes())


def direct_conversation(a: str, b: str) -> str:
    """The conversation name of a 1:1 chat between accounts ``a`` and ``b`` (symmetric)."""
    return "dm:" + ":".join(sorted((a, b)))


def group_conversation(group_id: str) -> str:
    """The conversation name of a group (its id as 32 hex digits)."""
    return "group:" + group_id


def commit(content: Content, sender: str, conversation: str) -> bytes:
    """The sender's commitment to a message, sent outside the ciphertext."""
    return Opening.of(content, sender, conversation).commitment()


def check_reportable(opening: Opening) -> None:
    """What a message may carry, decided once for the receiver (which refuses the
    rest before showing it) and the server (which accepts exactly this in reports).
    ``FrankingError`` names what is out of bounds."""
    if not 0 <= opening.sent_at_ms <= MAX_SENT_AT_MS:
        raise FrankingError("the send time is out of range")
    if len(opening.attachment_digests) > MAX_ATTACHMENTS:
        raise FrankingError(f"more than {MAX_ATTACHMENTS} attachments")
    if len(opening.franking_key) != 32:
        raise FrankingError("the franking key must be 32 bytes")
    opening.franked_bytes()  # every other bound


def check_commitment(content: Content, sender: str, conversation: str, commitment: bytes) -> None:
    """The receiver's check after decrypting; ``FrankingError`` on a mismatch or on a
    message a report could not carry (``check_reportable``)."""
    opening = Opening.of(content, sender, conversation)
    check_reportable(opening)
    if not constant_time_equal(opening.commitment(), commitment):
        raise FrankingError("franking commitment does not match the message")


def server_tag(
    server_key: bytes | HmacKey, commitment: bytes, sender: str, conversation: str, time_ms: int
) -> bytes:
    """The server's tag over a delivered commitment (keyed by a server secret).

    Encoded as ``codec.Writer`` would (label, commitment, two ``text`` fields, a
    u64), written out as ``franked_bytes`` is: this runs once per message and
    recipient device, and the builder's calls cost about as much as the HMAC."""
    party, place = sender.encode(), conversation.encode()
    if len(commitment) != 32 or len(party) > MAX_PARTY or len(place) > MAX_PARTY:
        raise ValueError("commitment must be 32 bytes, sender and conversation at most 256")
    data = b"".join(
        (_TAG_LABEL, commitment, _U32.pack(len(party)), party, _U32.pack(len(place)), place)
    ) + _U64.pack(time_ms)
    if isinstance(server_key, HmacKey):
        return server_key.mac(data)
    return hmac_sha256(server_key, data)


def verify_report(
    server_key: bytes, opening: Opening, commitment: bytes, time_ms: int, tag: bytes
) -> None:
    """Server-side check of a reported message; ``FrankingError`` names what failed."""
    check_reportable(opening)
    if not constant_time_equal(opening.commitment(), commitment):
        raise FrankingError("the opening does not match the commitment")
    expected = server_tag(server_key, commitment, opening.sender, opening.conversation, time_ms)
    if not constant_time_equal(expected, tag):
        raise FrankingError("the server tag does not match this sender, conversation and time")
