"""PQXDH set-up (Signal PQXDH rev. 3): agreement, and refusal of forged bundles."""

from __future__ import annotations

import dataclasses

import pytest

from parley.errors import DecryptionError, InvalidSignature, MalformedMessage
from parley.protocol import pqxdh
from parley.protocol import session as sessions
from parley.protocol.keys import KemPreKey, SignedPreKey, verify_bundle
from parley.protocol.wire import PreKeyBundle, PreKeyMessage

from .peers import Device, content, direct_conversation, establish


@pytest.mark.parametrize("use_one_time", [True, False])
def test_both_sides_derive_the_same_key(use_one_time: bool) -> None:
    alice, bob = Device.create("alice", 1), Device.create("bob", 2)
    bundle = bob.bundle(use_one_time=use_one_time)
    init = pqxdh.initiate(alice.identity, bundle, alice.rng)
    opk = bob.one_time[bundle.one_time_prekey_id] if bundle.one_time_prekey_id else None
    kem = bob.one_time_kem.get(bundle.kem_prekey_id, bob.last_resort_kem)
    sk, ad = pqxdh.respond(
        bob.identity,
        alice.identity.public,
        init.base_key,
        init.kem_ciphertext,
        bob.signed_prekey.key,
        None if opk is None else opk.key,
        kem.key,
    )
    assert sk == init.shared_key
    assert (
        ad
        == init.associated_data
        == alice.identity.public.to_bytes() + bob.identity.public.to_bytes()
    )
    assert (bundle.one_time_prekey is None) is (not use_one_time)
    assert bundle.kem_last_resort is (not use_one_time)


def test_one_time_keys_change_the_secret() -> None:
    alice, bob = Device.create("alice", 1), Device.create("bob", 2)
    with_opk = bob.bundle()
    without = dataclasses.replace(with_opk, one_time_prekey=None, one_time_prekey_id=None)
    a1 = pqxdh.initiate(alice.identity, with_opk, alice.rng)
    sk_wrong, _ = pqxdh.respond(
        bob.identity,
        alice.identity.public,
        a1.base_key,
        a1.kem_ciphertext,
        bob.signed_prekey.key,
        None,  # Bob ignores DH4: the keys must differ
        bob.one_time_kem[with_opk.kem_prekey_id].key,
    )
    assert sk_wrong != a1.shared_key
    verify_bundle(without)  # the one-time X25519 key is not signed (as in Signal)


def _tamper(bundle: PreKeyBundle, field: str) -> PreKeyBundle:
    value = getattr(bundle, field)
    flipped = bytes([value[0] ^ 1]) + value[1:]
    return dataclasses.replace(bundle, **{field: flipped})


@pytest.mark.parametrize(
    "field",
    ["signed_prekey", "signed_prekey_signature", "kem_prekey", "kem_prekey_signature"],
)
def test_bundle_with_bad_signature_is_refused(field: str) -> None:
    alice, bob = Device.create("alice", 1), Device.create("bob", 2)
    with pytest.raises(InvalidSignature):
        sessions.initiate(alice.identity, _tamper(bob.bundle(), field), alice.rng)


def test_bundle_signed_by_another_identity_is_refused() -> None:
    alice, bob, mallory = Device.create("alice", 1), Device.create("bob", 2), Device.create("m", 3)
    forged = dataclasses.replace(mallory.bundle(), identity=bob.identity.public)
    with pytest.raises(InvalidSignature):
        sessions.initiate(alice.identity, forged, alice.rng)


def test_signature_of_one_prekey_cannot_vouch_for_another() -> None:
    alice, bob = Device.create("alice", 1), Device.create("bob", 2)
    other = SignedPreKey.generate(bob.identity, 2, bob.rng)
    bundle = dataclasses.replace(
        bob.bundle(),
        signed_prekey_id=2,
        signed_prekey_signature=bob.signed_prekey.signature,
        signed_prekey=other.key.public,
    )
    with pytest.raises(InvalidSignature):
        sessions.initiate(alice.identity, bundle, alice.rng)
    # Flipping the last-resort flag invalidates the KEM signature too.
    kem = KemPreKey.generate(bob.identity, 7, bob.rng, last_resort=False)
    flipped = dataclasses.replace(
        bob.bundle(),
        kem_prekey_id=7,
        kem_prekey=kem.key.public,
        kem_prekey_signature=kem.signature,
        kem_last_resort=True,
    )
    with pytest.raises(InvalidSignature):
        sessions.initiate(alice.identity, flipped, alice.rng)


def test_prekey_message_with_wrong_kem_ciphertext_does_not_decrypt() -> None:
    alice, bob = Device.create("alice", 1), Device.create("bob", 2)
    a = sessions.initiate(alice.identity, bob.bundle(), alice.rng)
    msg = a.encrypt(content("hi", alice.rng), "alice", direct_conversation("alice", "bob"))
    assert isinstance(msg, PreKeyMessage)
    bad_ct = bytes([msg.kem_ciphertext[0] ^ 1]) + msg.kem_ciphertext[1:]
    with pytest.raises(DecryptionError):
        bob.accept(dataclasses.replace(msg, kem_ciphertext=bad_ct), "alice")
    # Nothing was consumed: the genuine message still sets up the session.
    _, got = bob.accept(msg, "alice")
    assert got.text == "hi"


def test_prekey_message_naming_a_missing_one_time_key_is_refused() -> None:
    alice, bob = Device.create("alice", 1), Device.create("bob", 2)
    a = sessions.initiate(alice.identity, bob.bundle(), alice.rng)
    msg = a.encrypt(content("hi", alice.rng), "alice", direct_conversation("alice", "bob"))
    assert isinstance(msg, PreKeyMessage)
    with pytest.raises(MalformedMessage):
        sessions.accept(
            bob.identity,
            msg,
            bob.signed_prekey.key,
            None,
            bob.last_resort_kem.key,
            "alice",
            "x",
            bob.rng,
        )


def test_initiator_keeps_sending_prekey_messages_until_answered() -> None:
    pair = establish()
    assert pair.a.pending is not None
    second = pair.send("alice", "again")
    assert isinstance(second, PreKeyMessage)
    assert pair.receive("bob", second).text == "again"
    reply = pair.send("bob", "hi alice")
    assert pair.receive("alice", reply).text == "hi alice"
    assert pair.a.pending is None
    assert not isinstance(pair.send("alice", "now plain"), PreKeyMessage)
