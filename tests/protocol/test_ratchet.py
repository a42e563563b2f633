"""Double Ratchet over an in-memory link: interleaving, reordering, drops, replays, tampering."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.errors import (
    DecryptionError,
    DuplicateMessage,
    FrankingError,
    MalformedMessage,
    TooManySkipped,
)
from parley.protocol import franking
from parley.protocol import ratchet as ratchet_mod
from parley.protocol.ratchet import MAX_SKIP, RatchetState
from parley.protocol.session import Session
from parley.protocol.wire import Content, PreKeyMessage, RatchetMessage

from .peers import Pair, content, direct_conversation, establish

SIDES = ("alice", "bob")


def _other(side: str) -> str:
    return "bob" if side == "alice" else "alice"


def _state(pair: Pair, side: str) -> bytes:
    return (pair.a if side == "alice" else pair.b).to_bytes()


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_interleaving_reordering_drops_and_replays(data: st.DataObject) -> None:
    """A random schedule: each side sends bursts, the link reorders, drops and replays.

    Every delivered message decrypts to what was sent, once; replays are
    refused as duplicates; dropped messages never block later ones.
    """
    pair = establish(seed=data.draw(st.integers(0, 10_000)))
    in_flight: list[tuple[str, RatchetMessage | PreKeyMessage, str]] = []
    delivered: set[tuple[str, str]] = set()
    for step in range(data.draw(st.integers(5, 40))):
        action = data.draw(
            st.sampled_from(["send", "send", "deliver", "deliver", "drop", "replay"])
        )
        if action == "send" or not in_flight:
            frm = data.draw(st.sampled_from(SIDES))
            text = f"{frm}-{step}"
            in_flight.append((frm, pair.send(frm, text), text))
            continue
        idx = data.draw(st.integers(0, len(in_flight) - 1))
        frm, msg, text = in_flight[idx]
        to = _other(frm)
        if action == "drop":
            in_flight.pop(idx)
        elif action == "deliver":
            in_flight.pop(idx)
            got = pair.receive(to, msg)
            assert got.text == text
            delivered.add((frm, text))
        elif (frm, text) in delivered:  # replay of something already delivered
            before = _state(pair, to)
            with pytest.raises(DecryptionError):
                pair.receive(to, msg)
            assert _state(pair, to) == before


def test_ping_pong_ratchets_every_turn() -> None:
    pair = establish()
    keys_seen = set()
    for i in range(20):
        frm = SIDES[i % 2]
        msg = pair.send(frm, f"turn {i}")
        inner = msg.message if isinstance(msg, PreKeyMessage) else msg
        keys_seen.add(inner.dh)
        assert pair.receive(_other(frm), msg).text == f"turn {i}"
    assert len(keys_seen) >= 19  # a fresh ratchet key for (almost) every turn


def test_out_of_order_across_ratchet_steps() -> None:
    pair = establish()
    early = [pair.send("alice", f"a{i}") for i in range(5)]
    assert pair.receive("bob", early[4]).text == "a4"
    reply = pair.send("bob", "b0")
    assert pair.receive("alice", reply).text == "b0"
    late = pair.send("alice", "a-new-chain")
    assert pair.receive("bob", late).text == "a-new-chain"
    for i in (2, 0, 3, 1):  # old chain, out of order, after the ratchet moved on
        assert pair.receive("bob", early[i]).text == f"a{i}"
    with pytest.raises(DuplicateMessage):
        pair.receive("bob", early[2])


def test_drops_within_max_skip_are_tolerated_and_beyond_are_refused() -> None:
    pair = establish()
    pair.receive("alice", pair.send("bob", "ack"))
    for _ in range(MAX_SKIP):
        pair.send("alice", "dropped")
    assert pair.receive("bob", pair.send("alice", "after gap")).text == "after gap"
    for _ in range(MAX_SKIP + 1):
        pair.send("alice", "dropped")
    far = pair.send("alice", "too far")
    before = _state(pair, "bob")
    with pytest.raises(TooManySkipped):
        pair.receive("bob", far)
    assert _state(pair, "bob") == before


def test_stored_skipped_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratchet_mod, "MAX_STORED_SKIPPED", 10)
    pair = establish()
    pair.receive("alice", pair.send("bob", "ack"))
    msgs = [pair.send("alice", str(i)) for i in range(30)]
    pair.receive("bob", msgs[-1])
    assert len(pair.b.ratchet.skipped) == 10
    assert pair.receive("bob", msgs[25]).text == "25"  # recent gaps still open
    with pytest.raises(DecryptionError):
        pair.receive("bob", msgs[0])  # the oldest keys were evicted


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize("where", ["ciphertext", "dh", "n", "pn", "commitment"])
def test_tampered_messages_leave_the_session_unchanged(where: str) -> None:
    pair = establish()
    pair.receive("alice", pair.send("bob", "ack"))
    msg = pair.send("alice", "genuine")
    assert isinstance(msg, RatchetMessage)
    if where == "ciphertext":
        forged = dataclasses.replace(msg, ciphertext=_flip(msg.ciphertext, 3))
    elif where == "dh":
        forged = dataclasses.replace(msg, dh=_flip(msg.dh, 5))
    elif where == "commitment":
        forged = dataclasses.replace(msg, commitment=_flip(msg.commitment, 0))
    else:
        forged = dataclasses.replace(msg, **{where: getattr(msg, where) + 1})
    before = _state(pair, "bob")
    with pytest.raises(DecryptionError):
        pair.receive("bob", forged)
    assert _state(pair, "bob") == before
    assert pair.receive("bob", msg).text == "genuine"


def test_every_single_bit_flip_of_the_envelope_is_refused() -> None:
    pair = establish()
    pair.receive("alice", pair.send("bob", "ack"))
    raw = pair.send("alice", "x").to_bytes()
    before = _state(pair, "bob")
    for i in range(len(raw)):
        try:
            forged = RatchetMessage.from_bytes(_flip(raw, i))
        except MalformedMessage:
            continue  # the decoder refused it (version, kind or length byte)
        with pytest.raises(DecryptionError):
            pair.receive("bob", forged)
        assert _state(pair, "bob") == before


def test_sender_cannot_send_a_message_whose_commitment_lies() -> None:
    """A mismatch between content and commitment is an undecryptable message."""
    pair = establish()
    pair.receive("alice", pair.send("bob", "ack"))
    real = content("what bob sees", pair.alice.rng)
    other = content("what a report would claim", pair.alice.rng)
    lie = franking.commit(other, "alice", direct_conversation("alice", "bob"))
    msg = pair.a.ratchet.encrypt(real.to_bytes(), lie)
    before = _state(pair, "bob")
    with pytest.raises(FrankingError):
        pair.receive("bob", msg)
    assert _state(pair, "bob") == before


def test_message_for_another_conversation_or_sender_is_refused() -> None:
    pair = establish()
    pair.receive("alice", pair.send("bob", "ack"))
    msg = pair.send("alice", "hi")
    with pytest.raises(FrankingError):
        pair.b.decrypt(msg, "alice", "dm:alice:carol", pair.bob.rng)
    with pytest.raises(FrankingError):
        pair.b.decrypt(msg, "mallory", direct_conversation("alice", "bob"), pair.bob.rng)
    assert pair.receive("bob", msg).text == "hi"


def test_state_survives_serialization_mid_conversation() -> None:
    pair = establish()
    pending = [pair.send("alice", f"m{i}") for i in range(4)]
    pair.receive("bob", pending[3])
    pair.b = Session.from_bytes(pair.b.to_bytes())
    pair.a = Session.from_bytes(pair.a.to_bytes())
    assert pair.receive("bob", pending[1]).text == "m1"
    assert pair.receive("alice", pair.send("bob", "reply")).text == "reply"
    assert (
        RatchetState.from_bytes(pair.a.ratchet.to_bytes()).to_bytes() == pair.a.ratchet.to_bytes()
    )


def test_content_round_trips_with_attachments_and_control() -> None:
    pair = establish()
    pair.receive("alice", pair.send("bob", "ack"))
    from parley.protocol.wire import AttachmentPointer

    att = AttachmentPointer("att-1", b"k" * 32, b"d" * 32, 1234, "image/png", "cat.png")
    sent = Content(b"f" * 32, 42, "see attached", (att,), b'{"op":"x"}')
    msg = pair.a.encrypt(sent, "alice", direct_conversation("alice", "bob"))
    assert pair.receive("bob", msg) == sent
