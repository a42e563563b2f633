"""The strict decoders: any bytes either decode or raise RemoteProtocolError.

The h11/wsproto fuzz rule, property-tested with Hypothesis over random bytes
and over mutations (flips, truncations, insertions) of valid encodings.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.errors import RemoteProtocolError
from parley.protocol.ratchet import RatchetState
from parley.protocol.session import Session
from parley.protocol.wire import (
    AttachmentPointer,
    Content,
    PreKeyBundle,
    PreKeyMessage,
    RatchetMessage,
    SenderKeyDistribution,
    SenderKeyMessage,
    decode_envelope,
    envelope_commitment,
)

from .peers import Device, establish, seeded
from .test_sender_keys import Group

DECODERS: dict[str, Callable[[bytes], object]] = {
    "envelope": decode_envelope,
    "ratchet": RatchetMessage.from_bytes,
    "prekey": PreKeyMessage.from_bytes,
    "sender_key": SenderKeyMessage.from_bytes,
    "distribution": SenderKeyDistribution.from_bytes,
    "content": Content.from_bytes,
    "bundle": PreKeyBundle.from_bytes,
    "session_state": Session.from_bytes,
    "ratchet_state": RatchetState.from_bytes,
}


def _samples() -> dict[str, bytes]:
    pair = establish(seed=3)
    first = pair.send("alice", "first")
    pair.receive("bob", first)
    reply = pair.send("bob", "reply")
    group = Group(["a", "b"])
    att = AttachmentPointer("id", b"k" * 32, b"d" * 32, 10, "text/plain", "n.txt")
    return {
        "prekey": first.to_bytes(),
        "ratchet": reply.to_bytes(),
        "sender_key": group.send("a", "g").to_bytes(),
        "distribution": group.members["a"].outbound.distribution().to_bytes(),
        "content": Content(b"f" * 32, 5, "héllo", (att,), b"ctl").to_bytes(),
        "bundle": Device.create("x", 4).bundle().to_bytes(),
        "session_state": pair.a.to_bytes(),
        "ratchet_state": pair.b.ratchet.to_bytes(),
    }


SAMPLES = _samples()


def _decodes_or_refuses(decoder: Callable[[bytes], object], data: bytes) -> None:
    try:
        decoder(data)
    except RemoteProtocolError:
        pass


def _mutated(sample: bytes, cuts: list[tuple[int, int, str]]) -> bytes:
    """``sample`` with each cut applied: a flipped byte, a truncation or an insertion."""
    data = bytearray(sample)
    for pos, value, op in cuts:
        pos %= max(len(data), 1)
        if op == "f" and data:
            data[pos] ^= value or 1
        elif op == "t":
            del data[pos:]
        else:
            data[pos:pos] = bytes([value])
    return bytes(data)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_round_trip(name: str) -> None:
    decoded = DECODERS[name](SAMPLES[name])
    assert decoded.to_bytes() == SAMPLES[name]  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(DECODERS)), data=st.binary(max_size=4096))
def test_random_bytes(name: str, data: bytes) -> None:
    _decodes_or_refuses(DECODERS[name], data)


@settings(max_examples=600, deadline=None)
@given(
    name=st.sampled_from(sorted(SAMPLES)),
    cuts=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("fti")),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_valid_encodings(name: str, cuts: list[tuple[int, int, str]]) -> None:
    data = _mutated(SAMPLES[name], cuts)
    for decoder in DECODERS.values():
        _decodes_or_refuses(decoder, data)


def _commitment_by_decoding(data: bytes) -> tuple[int, bytes]:
    decoded = decode_envelope(data)
    inner = decoded.message if isinstance(decoded, PreKeyMessage) else decoded
    return data[1], inner.commitment


def _outcome(read: Callable[[bytes], tuple[int, bytes]], data: bytes) -> object:
    try:
        return read(data)
    except RemoteProtocolError as exc:
        return type(exc)


@settings(max_examples=600, deadline=None)
@given(
    name=st.sampled_from(["prekey", "ratchet", "sender_key", "distribution"]),
    cuts=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("fti")),
        max_size=4,
    ),
)
def test_the_servers_commitment_reader_agrees_with_the_full_decoder(
    name: str, cuts: list[tuple[int, int, str]]
) -> None:
    """``envelope_commitment`` (the server's) skips building the envelope: on valid and
    mutated encodings it accepts exactly what ``decode_envelope`` accepts, with the
    same kind and commitment."""
    raw = _mutated(SAMPLES[name], cuts)
    assert _outcome(envelope_commitment, raw) == _outcome(_commitment_by_decoding, raw)


def test_wrong_version_and_kind_are_refused() -> None:
    raw = SAMPLES["ratchet"]
    for bad in (b"\x02" + raw[1:], raw[:1] + b"\x09" + raw[2:], raw + b"\x00", b"", b"\x01"):
        with pytest.raises(RemoteProtocolError):
            decode_envelope(bad)


def test_huge_length_prefix_is_refused_without_allocation() -> None:
    raw = bytearray(SAMPLES["content"])
    raw[2 + 32 + 8 : 2 + 32 + 8 + 4] = b"\xff\xff\xff\xff"  # the text length
    with pytest.raises(RemoteProtocolError):
        Content.from_bytes(bytes(raw))


def test_random_session_bytes_cannot_crash_a_receiver() -> None:
    rng = seeded(11)
    pair = establish(seed=12)
    before = pair.b.to_bytes()
    for _ in range(200):
        blob = rng(rng(1)[0] + 90)
        try:
            msg = decode_envelope(blob)
        except RemoteProtocolError:
            continue
        with pytest.raises(RemoteProtocolError):
            pair.receive("bob", msg)  # type: ignore[arg-type]
    assert pair.b.to_bytes() == before
