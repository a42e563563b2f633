"""Message franking: genuine reports verify, every forged opening or tag fails."""

from __future__ import annotations

import dataclasses

import pytest

from parley.errors import FrankingError
from parley.protocol import attachments, franking
from parley.protocol.franking import Opening
from parley.protocol.wire import AttachmentPointer, Content

from .peers import direct_conversation, establish, seeded

SERVER_KEY = b"s" * 32
DELIVERED_AT = 1_790_000_123_456


def _delivered(with_attachment: bool = True) -> tuple[Opening, bytes, bytes]:
    """Alice sends Bob a message (through a real session); the 'server' tags it;
    Bob builds the opening from what he decrypted."""
    pair = establish()
    rng = seeded(99)
    pointers: tuple[AttachmentPointer, ...] = ()
    if with_attachment:
        enc = attachments.encrypt(b"\x89PNG fake image bytes", rng)
        pointers = (
            AttachmentPointer("a1", enc.key, enc.digest, len(enc.blob), "image/png", "x.png"),
        )
    sent = Content(rng(32), 1_790_000_000_000, "illegal offer", pointers)
    conversation = direct_conversation("alice", "bob")
    msg = pair.a.encrypt(sent, "alice", conversation)
    inner = msg.message if hasattr(msg, "message") else msg
    tag = franking.server_tag(SERVER_KEY, inner.commitment, "alice", conversation, DELIVERED_AT)
    got = pair.b.decrypt(msg, "alice", conversation, pair.bob.rng)
    return Opening.of(got, "alice", conversation), inner.commitment, tag


def test_genuine_report_verifies() -> None:
    opening, commitment, tag = _delivered()
    franking.verify_report(SERVER_KEY, opening, commitment, DELIVERED_AT, tag)


@pytest.mark.parametrize(
    "change",
    [
        {"text": "something else"},
        {"sender": "carol"},
        {"conversation": "dm:bob:carol"},
        {"sent_at_ms": 1},
        {"attachment_digests": (b"\x00" * 32,)},
        {"attachment_digests": ()},
        {"franking_key": b"\x01" * 32},
        {"control": b"x"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_forged_opening_fails(change: dict[str, object]) -> None:
    opening, commitment, tag = _delivered()
    forged = dataclasses.replace(opening, **change)  # type: ignore[arg-type]
    with pytest.raises(FrankingError):
        franking.verify_report(SERVER_KEY, forged, commitment, DELIVERED_AT, tag)


def test_altered_time_or_foreign_tag_fails() -> None:
    opening, commitment, tag = _delivered()
    with pytest.raises(FrankingError):
        franking.verify_report(SERVER_KEY, opening, commitment, DELIVERED_AT + 1, tag)
    other_opening, _other_commitment, other_tag = _delivered(with_attachment=False)
    with pytest.raises(FrankingError):  # tag replayed from another message
        franking.verify_report(SERVER_KEY, opening, commitment, DELIVERED_AT, other_tag)
    with pytest.raises(FrankingError):  # opening from another message
        franking.verify_report(SERVER_KEY, other_opening, commitment, DELIVERED_AT, tag)
    with pytest.raises(FrankingError):  # a tag made with another server key
        franking.verify_report(b"t" * 32, opening, commitment, DELIVERED_AT, tag)


def test_a_keyed_hmac_state_tags_as_the_key_does() -> None:
    from parley.crypto.primitives import HmacKey

    commitment = bytes(range(32))
    keyed = HmacKey(SERVER_KEY)
    for t in (DELIVERED_AT, DELIVERED_AT + 1):  # the copied state is fresh every time
        assert franking.server_tag(keyed, commitment, "alice", "dm:a:b", t) == (
            franking.server_tag(SERVER_KEY, commitment, "alice", "dm:a:b", t)
        )
