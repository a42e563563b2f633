"""Known-answer transcripts (tests/vectors/protocol-v1.json, see its README).

Two checks per vector: the committed bytes still open (compatibility with
what older clients sent), and re-deriving them from the documented DRBG
seeds gives the same bytes (a change to the key schedule or wire format fails).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley.crypto.primitives import DHKeyPair, committing_decrypt
from parley.protocol import franking, pqxdh
from parley.protocol.fingerprint import safety_number
from parley.protocol.franking import Opening
from parley.protocol.ratchet import RatchetState
from parley.protocol.sender_keys import InboundSenderKey
from parley.protocol.wire import (
    Content,
    IdentityPublic,
    PreKeyBundle,
    RatchetMessage,
    SenderKeyDistribution,
    SenderKeyMessage,
)
from tests.vectors import generate
from tests.vectors.drbg import Drbg

VECTORS: dict[str, Any] = json.loads(generate.PATH.read_text())
h = bytes.fromhex


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vectors_regenerate_byte_for_byte(name: str) -> None:
    assert generate.build(VECTORS)[name] == VECTORS[name]


def test_pqxdh_kdf() -> None:
    v = VECTORS["pqxdh_kdf"]
    assert pqxdh.kdf(h(v["key_material"])).hex() == v["shared_key"]


def test_pqxdh_responder_opens_the_recorded_first_message() -> None:
    v = VECTORS["pqxdh"]
    from parley.protocol import session as sessions
    from parley.protocol.wire import PreKeyMessage

    identity, spk, opk, kem = generate.bob_keys()
    assert PreKeyBundle.from_bytes(h(v["bundle"])).identity == identity.public
    msg = PreKeyMessage.from_bytes(h(v["prekey_message"]))
    _, content = sessions.accept(
        identity, msg, spk.key, opk.key, kem.key, "alice", "dm:alice:bob", Drbg("x")
    )
    assert content.to_bytes().hex() == v["content"]
    assert content.text == "hello from the vectors"


def test_ratchet_transcript_opens_in_order() -> None:
    v = VECTORS["ratchet"]
    # Each side's new ratchet keys come from its own DRBG, in the same order as
    # when the transcript was made.
    bob_spk = DHKeyPair.from_private_bytes(h(v["bob_ratchet_private"]))
    a_rng, b_rng = Drbg("ratchet-alice"), Drbg("ratchet-bob")
    sk, ad = h(v["shared_key"]), h(v["associated_data"])
    alice = RatchetState.initiator(sk, ad, bob_spk.public, a_rng)
    bob = RatchetState.responder(sk, ad, bob_spk)
    for step in v["steps"]:
        receiver, rng = (bob, b_rng) if step["from"] == "alice" else (alice, a_rng)
        msg = RatchetMessage.from_bytes(h(step["message"]))
        assert receiver.decrypt(msg, rng).hex() == step["plaintext"]


def test_sender_key_transcript_opens() -> None:
    v = VECTORS["sender_key"]
    inbound = InboundSenderKey.from_distribution(
        SenderKeyDistribution.from_bytes(h(v["distribution"]))
    )
    for i, raw in enumerate(v["messages"]):
        content = inbound.decrypt_with(SenderKeyMessage.from_bytes(h(raw)), Content.from_bytes)
        assert content.text == f"group message {i}"


def test_fingerprint() -> None:
    v = VECTORS["fingerprint"]
    a, b = (
        IdentityPublic.from_bytes(h(v["local_identity"])),
        IdentityPublic.from_bytes(h(v["remote_identity"])),
    )
    assert safety_number(a, v["local_id"], b, v["remote_id"]) == v["safety_number"]


def test_franking() -> None:
    v = VECTORS["franking"]
    opening = Opening(
        h(v["franking_key"]), v["sender"], v["conversation"], v["sent_at_ms"], v["text"], (), b""
    )
    assert opening.commitment().hex() == v["commitment"]
    franking.verify_report(
        h(v["server_key"]), opening, h(v["commitment"]), v["delivered_at_ms"], h(v["server_tag"])
    )


def test_attachment() -> None:
    v = VECTORS["attachment"]
    assert committing_decrypt(h(v["key"]), h(v["blob"]), b"parley/attachment/v1") == h(
        v["plaintext"]
    )
