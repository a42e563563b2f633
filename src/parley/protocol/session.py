"""1:1 sessions: PQXDH set-up, the Double Ratchet, and franking, together.

Theory of operation. Alice fetches Bob's bundle and calls ``initiate``; until
Bob's first reply authenticates, each message she sends is a ``PreKeyMessage``
carrying the PQXDH parameters, so Bob can set up the session from whichever
of them arrives first (Signal does the same). Bob calls ``accept`` with the
prekeys the message names. Every message carries a franking commitment
outside the ciphertext (``franking``), which is also AEAD associated data and
is checked after decryption before any state changes.

``sender`` and ``conversation`` are the application's stable names for the
author and the chat (the server uses the same names for its franking tag).
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.crypto.primitives import MLKEM768_CIPHERTEXT_LEN, DHKeyPair, KemKeyPair
from parley.crypto.random import Random
from parley.errors import MalformedMessage
from parley.protocol import franking, pqxdh
from parley.protocol.codec import Reader, Writer
from parley.protocol.keys import IdentityKeyPair
from parley.protocol.ratchet import RatchetState
from parley.protocol.wire import (
    IDENTITY_LEN,
    Content,
    IdentityPublic,
    PreKeyBundle,
    PreKeyMessage,
    RatchetMessage,
)

_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class PendingPreKey:
    """What Alice repeats in each message until Bob answers."""

    identity: IdentityPublic
    base_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    kem_prekey_id: int
    kem_ciphertext: bytes


class Session:
    """A 1:1 session with one peer device."""

    __slots__ = ("base_key", "peer", "pending", "ratchet")

    def __init__(
        self,
        peer: IdentityPublic,
        ratchet: RatchetState,
        base_key: bytes,
        pending: PendingPreKey | None = None,
    ) -> None:
        self.peer = peer
        self.ratchet = ratchet
        self.base_key = base_key
        self.pending = pending

    def encrypt(
        self, content: Content, sender: str, conversation: str
    ) -> RatchetMessage | PreKeyMessage:
        commitment = franking.commit(content, sender, conversation)
        msg = self.ratchet.encrypt(content.to_bytes(), commitment)
        p = self.pending
        if p is None:
            return msg
        return PreKeyMessage(
            p.identity,
            p.base_key,
            p.signed_prekey_id,
            p.one_time_prekey_id,
            p.kem_prekey_id,
            p.kem_ciphertext,
            msg,
        )

    def decrypt(
        self, msg: RatchetMessage | PreKeyMessage, sender: str, conversation: str, rng: Random
    ) -> Content:
        """Decrypt a message from the peer; the session changes only if it authenticates.

        A ``PreKeyMessage`` for this session (same base key, e.g. a re-delivery)
        is opened with the existing ratchet, so its replay is refused as a
        duplicate rather than starting a second session.
        """
        inner = msg.message if isinstance(msg, PreKeyMessage) else msg
        if isinstance(msg, PreKeyMessage) and msg.base_key != self.base_key:
            raise MalformedMessage("prekey message belongs to another session")

        def check(plaintext: bytes) -> Content:
            content = Content.from_bytes(plaintext)
            franking.check_commitment(content, sender, conversation, inner.commitment)
            return content

        content = self.ratchet.decrypt_with(inner, rng, check)
        self.pending = None
        return content

    # -- persistence (secret material: encrypt at rest) --------------------------------

    def to_bytes(self) -> bytes:
        w = Writer().u8(_STATE_VERSION).fixed(self.peer.to_bytes(), IDENTITY_LEN)
        w.fixed(self.base_key, 32).var(self.ratchet.to_bytes(), 1 << 20)
        p = self.pending
        if p is None:
            w.u8(0)
        else:
            w.u8(1).fixed(p.identity.to_bytes(), IDENTITY_LEN).fixed(p.base_key, 32)
            w.u32(p.signed_prekey_id)
            if p.one_time_prekey_id is None:
                w.u8(0)
            else:
                w.u8(1).u32(p.one_time_prekey_id)
            w.u32(p.kem_prekey_id).fixed(p.kem_ciphertext, MLKEM768_CIPHERTEXT_LEN)
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        r = Reader(data)
        if r.u8() != _STATE_VERSION:
            raise MalformedMessage("unknown session state version")
        peer = IdentityPublic.from_bytes(r.fixed(IDENTITY_LEN))
        base_key = r.fixed(32)
        ratchet = RatchetState.from_bytes(r.var(1 << 20))
        pending = None
        if r.bool():
            identity = IdentityPublic.from_bytes(r.fixed(IDENTITY_LEN))
            pbase, spk_id = r.fixed(32), r.u32()
            opk_id = r.u32() if r.bool() else None
            kem_id, kem_ct = r.u32(), r.fixed(MLKEM768_CIPHERTEXT_LEN)
            pending = PendingPreKey(identity, pbase, spk_id, opk_id, kem_id, kem_ct)
        r.end()
        return cls(peer, ratchet, base_key, pending)


def initiate(identity: IdentityKeyPair, bundle: PreKeyBundle, rng: Random) -> Session:
    """Alice: start a session from a bundle (``InvalidSignature`` if it is forged)."""
    init = pqxdh.initiate(identity, bundle, rng)
    ratchet = RatchetState.initiator(
        init.shared_key, init.associated_data, init.responder_ratchet_key, rng
    )
    pending = PendingPreKey(
        identity.public,
        init.base_key,
        init.signed_prekey_id,
        init.one_time_prekey_id,
        init.kem_prekey_id,
        init.kem_ciphertext,
    )
    return Session(bundle.identity, ratchet, init.base_key, pending)


def accept(
    identity: IdentityKeyPair,
    msg: PreKeyMessage,
    signed_prekey: DHKeyPair,
    one_time_prekey: DHKeyPair | None,
    kem_prekey: KemKeyPair,
    sender: str,
    conversation: str,
    rng: Random,
) -> tuple[Session, Content]:
    """Bob: set up the session from Alice's first message and decrypt it.

    The caller looks up the prekeys by the ids in ``msg`` and deletes the
    one-time ones only after this returns (it raises if the message is forged).
    """
    if (msg.one_time_prekey_id is None) != (one_time_prekey is None):
        raise MalformedMessage("one-time prekey does not match the message")
    shared_key, ad = pqxdh.respond(
        identity,
        msg.identity,
        msg.base_key,
        msg.kem_ciphertext,
        signed_prekey,
        one_time_prekey,
        kem_prekey,
    )
    session = Session(
        msg.identity, RatchetState.responder(shared_key, ad, signed_prekey), msg.base_key
    )
    return session, session.decrypt(msg.message, sender, conversation, rng)
