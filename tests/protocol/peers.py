"""A two-peer (and n-peer) in-memory harness over the sans-I/O protocol core."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from parley.crypto.random import Random
from parley.protocol import session as sessions
from parley.protocol.franking import direct_conversation
from parley.protocol.keys import (
    IdentityKeyPair,
    KemPreKey,
    OneTimePreKey,
    SignedPreKey,
    make_bundle,
)
from parley.protocol.wire import Content, PreKeyBundle, PreKeyMessage, RatchetMessage


def seeded(seed: int) -> Random:
    """A replayable RNG for tests (never for production keys)."""
    return random.Random(seed).randbytes


@dataclass
class Device:
    name: str
    rng: Random
    identity: IdentityKeyPair
    signed_prekey: SignedPreKey
    last_resort_kem: KemPreKey
    one_time: dict[int, OneTimePreKey] = field(default_factory=dict)
    one_time_kem: dict[int, KemPreKey] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str, seed: int, one_time: int = 2) -> Device:
        rng = seeded(seed)
        identity = IdentityKeyPair.generate(rng)
        device = cls(
            name,
            rng,
            identity,
            SignedPreKey.generate(identity, 1, rng),
            KemPreKey.generate(identity, 1000, rng, last_resort=True),
        )
        for i in range(one_time):
            device.one_time[100 + i] = OneTimePreKey.generate(100 + i, rng)
            device.one_time_kem[200 + i] = KemPreKey.generate(identity, 200 + i, rng)
        return device

    def bundle(self, *, use_one_time: bool = True) -> PreKeyBundle:
        """What the server would hand out; one-time keys go at most once."""
        opk = self.one_time[min(self.one_time)] if use_one_time and self.one_time else None
        kem = (
            self.one_time_kem[min(self.one_time_kem)]
            if use_one_time and self.one_time_kem
            else self.last_resort_kem
        )
        return make_bundle(self.identity.public, self.signed_prekey, kem, opk)

    def accept(self, msg: PreKeyMessage, sender: str) -> tuple[sessions.Session, Content]:
        opk = None if msg.one_time_prekey_id is None else self.one_time[msg.one_time_prekey_id]
        if msg.kem_prekey_id == self.last_resort_kem.id:
            kem = self.last_resort_kem
        else:
            kem = self.one_time_kem[msg.kem_prekey_id]
        result = sessions.accept(
            self.identity,
            msg,
            self.signed_prekey.key,
            None if opk is None else opk.key,
            kem.key,
            sender,
            direct_conversation(sender, self.name),
            self.rng,
        )
        # One-time keys are deleted only once the first message authenticated.
        if msg.one_time_prekey_id is not None:
            del self.one_time[msg.one_time_prekey_id]
        self.one_time_kem.pop(msg.kem_prekey_id, None)
        return result


def content(text: str, rng: Random, sent_at_ms: int = 1_790_000_000_000) -> Content:
    return Content(franking_key=rng(32), sent_at_ms=sent_at_ms, text=text)


@dataclass
class Pair:
    """Alice and Bob with an established session (after Bob's first reply)."""

    alice: Device
    bob: Device
    a: sessions.Session
    b: sessions.Session

    def send(self, frm: str, text: str) -> RatchetMessage | PreKeyMessage:
        dev, sess, to = (
            (self.alice, self.a, self.bob) if frm == "alice" else (self.bob, self.b, self.alice)
        )
        return sess.encrypt(
            content(text, dev.rng), dev.name, direct_conversation(dev.name, to.name)
        )

    def receive(self, to: str, msg: RatchetMessage | PreKeyMessage) -> Content:
        dev, sess, frm = (
            (self.alice, self.a, self.bob) if to == "alice" else (self.bob, self.b, self.alice)
        )
        return sess.decrypt(msg, frm.name, direct_conversation(dev.name, frm.name), dev.rng)


def establish(seed: int = 1, *, use_one_time: bool = True) -> Pair:
    alice = Device.create("alice", seed)
    bob = Device.create("bob", seed + 1000)
    a = sessions.initiate(alice.identity, bob.bundle(use_one_time=use_one_time), alice.rng)
    first = a.encrypt(content("hello bob", alice.rng), "alice", direct_conversation("alice", "bob"))
    assert isinstance(first, PreKeyMessage)
    b, got = bob.accept(first, "alice")
    assert got.text == "hello bob"
    return Pair(alice, bob, a, b)
