"""Build Parley's known-answer transcripts (tests/vectors/protocol-v1.json).

Run ``python -m tests.vectors.generate`` to print them, or with ``--write`` to
refresh the committed file: do that only for a deliberate, versioned change of
the wire format or key schedule, since the point of the file is that an
accidental change fails ``tests/protocol/test_vectors.py``.

Every value is derived from the DRBG in ``drbg.py`` with the seed named beside
it, except ML-KEM encapsulation (pyca draws its randomness inside OpenSSL): the
PQXDH vector therefore records Alice's first message once and fixes Bob's
side, which is deterministic (decapsulation, four X25519 outputs, HKDF).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from parley.crypto.primitives import DHKeyPair, committing_encrypt, sha256
from parley.protocol import franking, pqxdh
from parley.protocol import session as sessions
from parley.protocol.fingerprint import safety_number
from parley.protocol.keys import (
    IdentityKeyPair,
    KemPreKey,
    OneTimePreKey,
    SignedPreKey,
    make_bundle,
)
from parley.protocol.ratchet import RatchetState
from parley.protocol.sender_keys import OutboundSenderKey
from parley.protocol.wire import Content

from .drbg import Drbg

PATH = Path(__file__).with_name("protocol-v1.json")
SENT_AT = 1_790_000_000_000


def _content(text: str, rng: Drbg) -> Content:
    return Content(franking_key=rng(32), sent_at_ms=SENT_AT, text=text)


def kdf_vector() -> dict[str, str]:
    km = Drbg("pqxdh-kdf")(32 * 4 + 32)
    return {"key_material": km.hex(), "shared_key": pqxdh.kdf(km).hex()}


def bob_keys() -> tuple[IdentityKeyPair, SignedPreKey, OneTimePreKey, KemPreKey]:
    rng = Drbg("pqxdh-bob")
    identity = IdentityKeyPair.generate(rng)
    return (
        identity,
        SignedPreKey.generate(identity, 1, rng),
        OneTimePreKey.generate(2, rng),
        KemPreKey.generate(identity, 3, rng),
    )


def pqxdh_vector(previous: dict[str, Any] | None) -> dict[str, Any]:
    identity, spk, opk, kem = bob_keys()
    bundle = make_bundle(identity.public, spk, kem, opk)
    if previous is None:
        rng = Drbg("pqxdh-alice")
        alice = IdentityKeyPair.generate(rng)
        session = sessions.initiate(alice, bundle, rng)
        msg = session.encrypt(_content("hello from the vectors", rng), "alice", "dm:alice:bob")
        message_hex = msg.to_bytes().hex()
    else:
        message_hex = previous["prekey_message"]
    from parley.protocol.wire import PreKeyMessage

    msg = PreKeyMessage.from_bytes(bytes.fromhex(message_hex))
    sk, ad = pqxdh.respond(
        identity, msg.identity, msg.base_key, msg.kem_ciphertext, spk.key, opk.key, kem.key
    )
    _, content = sessions.accept(
        identity, msg, spk.key, opk.key, kem.key, "alice", "dm:alice:bob", Drbg("pqxdh-bob-accept")
    )
    return {
        "bundle": bundle.to_bytes().hex(),
        "prekey_message": message_hex,
        "shared_key": sk.hex(),
        "associated_data": ad.hex(),
        "content": content.to_bytes().hex(),
    }


def ratchet_vector() -> dict[str, Any]:
    """Alice and Bob from a fixed SK; a ping-pong with an out-of-order pair."""
    sk, ad = Drbg("ratchet-sk")(32), Drbg("ratchet-ad")(128)
    bob_spk = DHKeyPair.generate(Drbg("ratchet-bob-spk"))
    a_rng, b_rng, c_rng = Drbg("ratchet-alice"), Drbg("ratchet-bob"), Drbg("ratchet-content")
    alice = RatchetState.initiator(sk, ad, bob_spk.public, a_rng)
    bob = RatchetState.responder(sk, ad, bob_spk)
    script = ["alice", "alice", "bob", "alice", "bob", "bob", "alice"]
    steps = []
    for i, frm in enumerate(script):
        sender, receiver, rng = (alice, bob, b_rng) if frm == "alice" else (bob, alice, a_rng)
        plaintext = _content(f"message {i} from {frm}", c_rng).to_bytes()
        msg = sender.encrypt(plaintext, sha256(plaintext))
        assert receiver.decrypt(msg, rng) == plaintext
        steps.append({"from": frm, "plaintext": plaintext.hex(), "message": msg.to_bytes().hex()})
    return {
        "shared_key": sk.hex(),
        "associated_data": ad.hex(),
        "bob_ratchet_private": bob_spk.private_bytes().hex(),
        "steps": steps,
    }


def sender_key_vector() -> dict[str, Any]:
    rng = Drbg("sender-key")
    key = OutboundSenderKey.generate(b"vector-group", rng)
    distribution = key.distribution().to_bytes()
    messages = []
    for i in range(3):
        content = _content(f"group message {i}", rng)
        commitment = franking.commit(content, "alice", "group:" + b"vector-group".hex())
        messages.append(key.encrypt(content.to_bytes(), commitment).to_bytes().hex())
    return {"distribution": distribution.hex(), "messages": messages}


def fingerprint_vector() -> dict[str, str]:
    rng = Drbg("fingerprint")
    a, b = IdentityKeyPair.generate(rng).public, IdentityKeyPair.generate(rng).public
    return {
        "local_identity": a.to_bytes().hex(),
        "local_id": "+14155550100",
        "remote_identity": b.to_bytes().hex(),
        "remote_id": "+442079460000",
        "safety_number": safety_number(a, "+14155550100", b, "+442079460000"),
    }


def franking_vector() -> dict[str, Any]:
    rng = Drbg("franking")
    content = Content(rng(32), SENT_AT, "reportable text")
    commitment = franking.commit(content, "alice", "dm:alice:bob")
    server_key = rng(32)
    tag = franking.server_tag(server_key, commitment, "alice", "dm:alice:bob", SENT_AT + 5)
    return {
        "franking_key": content.franking_key.hex(),
        "sender": "alice",
        "conversation": "dm:alice:bob",
        "sent_at_ms": SENT_AT,
        "text": "reportable text",
        "commitment": commitment.hex(),
        "server_key": server_key.hex(),
        "delivered_at_ms": SENT_AT + 5,
        "server_tag": tag.hex(),
    }


def attachment_vector() -> dict[str, str]:
    rng = Drbg("attachment")
    key, nonce = rng(32), rng(12)
    blob = committing_encrypt(key, nonce, b"attachment plaintext", b"parley/attachment/v1")
    return {
        "key": key.hex(),
        "nonce": nonce.hex(),
        "plaintext": b"attachment plaintext".hex(),
        "blob": blob.hex(),
        "digest": sha256(blob).hex(),
    }


def build(previous: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "pqxdh_kdf": kdf_vector(),
        "pqxdh": pqxdh_vector(None if previous is None else previous.get("pqxdh")),
        "ratchet": ratchet_vector(),
        "sender_key": sender_key_vector(),
        "fingerprint": fingerprint_vector(),
        "franking": franking_vector(),
        "attachment": attachment_vector(),
    }


def main() -> None:
    previous = json.loads(PATH.read_text()) if PATH.exists() else None
    if "--fresh" in sys.argv:
        previous = None
    text = json.dumps(build(previous), indent=1, sort_keys=True) + "\n"
    if "--write" in sys.argv:
        PATH.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
