"""(b) A first message replayed under another device id, or after the session changed.

Sans-I/O: two devices' states and the frames a server would deliver, so each
replay is played exactly, and the honest flows (a re-initiation, a message
still in flight on the earlier session, a bundle fetched before a prekey
rotation) are shown to keep working.
"""

from __future__ import annotations

import base64
import secrets

import pytest

from parley.client.device import GRACE_MS, ROTATION_MS, DeviceState
from parley.errors import DuplicateMessage, MalformedMessage, RemoteProtocolError
from parley.protocol.keys import IdentityKeyPair
from parley.protocol.wire import Content

ALICE, BOB = "a" * 8 + "-0000-4000-8000-" + "0" * 12, "b" * 8 + "-0000-4000-8000-" + "0" * 12
DAY = 86_400_000


def e(data: bytes) -> str:
    return base64.b64encode(data).decode()


def device(account: str) -> DeviceState:
    state = DeviceState(IdentityKeyPair.generate(secrets.token_bytes), secrets.token_bytes)
    state.account_id, state.device_id = account, 1
    return state


def bundle(owner: DeviceState) -> dict[str, object]:
    """The bundle the server would hand out (no one-time key: the harder case)."""
    spk, kem = owner.signed_prekey, owner.kem_last_resort
    return {
        "device_id": owner.device_id,
        "signed_prekey": {
            "key_id": spk.id,
            "public_key": e(spk.key.public),
            "signature": e(spk.signature),
        },
        "kem_prekey": {
            "key_id": kem.id,
            "public_key": e(kem.key.public),
            "signature": e(kem.signature),
            "last_resort": True,
        },
        "one_time_prekey": None,
    }


def start(
    sender: DeviceState, receiver: DeviceState, offered: dict[str, object] | None = None
) -> None:
    sender.sessions.pop((receiver.account_id, 1), None)
    identity = e(receiver.identity.public.to_bytes())
    sender.start_session(receiver.account_id, identity, offered or bundle(receiver))


def frame(
    sender: DeviceState, receiver: DeviceState, text: str, device_id: int = 1
) -> dict[str, object]:
    content = Content(secrets.token_bytes(32), 1, text, (), b"")
    envelope = sender.encrypt(receiver.account_id, 1, content)
    return {
        "id": secrets.token_hex(8),
        "sender": sender.account_id,
        "sender_device": device_id,
        "envelope": e(envelope),
        "server_ms": 1,
        "franking_tag": e(bytes(32)),
        "group": None,
    }


def test_a_first_message_replayed_under_another_device_id_is_refused() -> None:
    alice, bob = device(ALICE), device(BOB)
    start(alice, bob)
    first = frame(alice, bob, "hello")
    assert bob.open(first).content.text == "hello"
    with pytest.raises(DuplicateMessage):
        bob.open({**first, "sender_device": 2})
    assert (ALICE, 2) not in bob.sessions


def test_a_first_message_replayed_after_the_session_changed_is_refused() -> None:
    alice, bob = device(ALICE), device(BOB)
    start(alice, bob)
    first = frame(alice, bob, "hello")
    bob.open(first)
    start(alice, bob)  # alice re-initiates (a new device state, a reinstall...)
    assert bob.open(frame(alice, bob, "again")).content.text == "again"
    with pytest.raises(RemoteProtocolError):
        bob.open(first)
    assert bob.open(frame(alice, bob, "still fine")).content.text == "still fine"


def test_messages_in_flight_on_the_earlier_session_still_open() -> None:
    alice, bob = device(ALICE), device(BOB)
    start(alice, bob)
    bob.open(frame(alice, bob, "one"))
    late = frame(alice, bob, "sent before the re-initiation")
    saved = alice.sessions[(BOB, 1)]
    start(alice, bob)
    bob.open(frame(alice, bob, "new session"))
    assert bob.open(late).content.text == "sent before the re-initiation"
    assert bob.sessions[(ALICE, 1)].base_key == saved.base_key  # the one that spoke is current
    with pytest.raises(RemoteProtocolError):
        bob.open(late)  # and only once


def test_prekeys_rotate_and_old_ones_work_only_for_their_grace() -> None:
    alice, bob = device(ALICE), device(BOB)
    now = 1_000 * DAY
    bob.prekeys_rotated_ms = now
    assert not bob.rotate_if_due(now + ROTATION_MS - 1)
    old = bundle(bob)
    assert bob.rotate_if_due(now + ROTATION_MS)
    assert bob.signed_prekey.id != old["signed_prekey"]["key_id"]  # type: ignore[index]
    start(alice, bob, old)  # a bundle fetched before the rotation
    assert bob.open(frame(alice, bob, "within the grace")).content.text == "within the grace"
    bob.rotate_if_due(now + ROTATION_MS + GRACE_MS + 1)  # the old private keys are deleted
    start(alice, bob, old)
    with pytest.raises(MalformedMessage):
        bob.open(frame(alice, bob, "too late"))
    start(alice, bob)  # a current bundle works
    assert bob.open(frame(alice, bob, "current")).content.text == "current"


def test_rotation_state_survives_serialization() -> None:
    alice, bob = device(ALICE), device(BOB)
    bob.prekeys_rotated_ms = DAY
    old = bundle(bob)
    bob.rotate_if_due(DAY + ROTATION_MS)
    start(alice, bob, old)
    first = frame(alice, bob, "hi")
    bob.open(first)
    restored = DeviceState.from_dict(bob.to_dict(), secrets.token_bytes)
    with pytest.raises(DuplicateMessage):
        restored.open({**first, "sender_device": 3})
    assert restored.retired_signed.keys() == bob.retired_signed.keys()
    start(alice, restored)
    assert restored.open(frame(alice, restored, "after restore")).content.text == "after restore"
