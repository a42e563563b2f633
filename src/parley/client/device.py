"""One device's cryptographic state, without I/O: keys, 1:1 sessions, group sessions.

The async transport (``api``) moves bytes; this object turns server JSON into
protocol objects and back. ``sender`` names are account ids, and the
conversation names are ``franking.direct_conversation`` / ``group_conversation``,
exactly as the server computes them for its franking tags.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from parley.crypto.primitives import DHKeyPair, KemKeyPair
from parley.crypto.random import Random
from parley.errors import MalformedMessage
from parley.protocol import session as sessions
from parley.protocol.franking import direct_conversation
from parley.protocol.keys import IdentityKeyPair, KemPreKey, OneTimePreKey, SignedPreKey
from parley.protocol.sender_keys import GroupSession, group_from_bytes, group_to_bytes
from parley.protocol.wire import (
    Content,
    IdentityPublic,
    PreKeyBundle,
    PreKeyMessage,
    RatchetMessage,
    SenderKeyDistribution,
    SenderKeyMessage,
    decode_envelope,
)

CONTROL_SENDER_KEY = "sender_key"


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def bundle_from_json(identity_key: str, device: dict[str, Any]) -> PreKeyBundle:
    """A server bundle (JSON) as a protocol bundle; signatures are checked on use."""
    try:
        spk, kem, opk = device["signed_prekey"], device["kem_prekey"], device.get("one_time_prekey")
        return PreKeyBundle(
            identity=IdentityPublic.from_bytes(_b(identity_key)),
            signed_prekey_id=int(spk["key_id"]),
            signed_prekey=_b(spk["public_key"]),
            signed_prekey_signature=_b(spk["signature"]),
            kem_prekey_id=int(kem["key_id"]),
            kem_prekey=_b(kem["public_key"]),
            kem_prekey_signature=_b(kem["signature"]),
            kem_last_resort=bool(kem["last_resort"]),
            one_time_prekey_id=None if opk is None else int(opk["key_id"]),
            one_time_prekey=None if opk is None else _b(opk["public_key"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage("malformed bundle from server") from exc


@dataclass(frozen=True, slots=True)
class Received:
    """A decrypted message, or a control message handled internally (``content.control``)."""

    id: str
    sender: str
    sender_device: int
    group: str | None
    server_ms: int
    content: Content
    franking_tag: bytes
    commitment: bytes


class DeviceState:
    def __init__(self, identity: IdentityKeyPair, rng: Random, next_key_id: int = 1) -> None:
        self.identity = identity
        self.rng = rng
        self.account_id = ""
        self.device_id = 0
        self._next_key_id = next_key_id
        self.signed_prekey = SignedPreKey.generate(identity, self._key_id(), rng)
        self.kem_last_resort = KemPreKey.generate(identity, self._key_id(), rng, last_resort=True)
        self.one_time: dict[int, OneTimePreKey] = {}
        self.kem_one_time: dict[int, KemPreKey] = {}
        self.sessions: dict[tuple[str, int], sessions.Session] = {}
        self.groups: dict[str, GroupSession] = {}

    def _key_id(self) -> int:
        self._next_key_id += 1
        return self._next_key_id

    def new_one_time_keys(self, count: int) -> tuple[list[OneTimePreKey], list[KemPreKey]]:
        ot = [OneTimePreKey.generate(self._key_id(), self.rng) for _ in range(count)]
        kem = [KemPreKey.generate(self.identity, self._key_id(), self.rng) for _ in range(count)]
        self.one_time.update({k.id: k for k in ot})
        self.kem_one_time.update({k.id: k for k in kem})
        return ot, kem

    # -- 1:1 ----------------------------------------------------------------------------------

    def has_session(self, account_id: str, device_id: int) -> bool:
        return (account_id, device_id) in self.sessions

    def start_session(self, account_id: str, identity_key: str, device: dict[str, Any]) -> None:
        bundle = bundle_from_json(identity_key, device)
        self.sessions[(account_id, int(device["device_id"]))] = sessions.initiate(
            self.identity, bundle, self.rng
        )

    def encrypt(self, account_id: str, device_id: int, content: Content) -> bytes:
        conversation = direct_conversation(self.account_id, account_id)
        return (
            self.sessions[(account_id, device_id)]
            .encrypt(content, self.account_id, conversation)
            .to_bytes()
        )

    def open(self, frame: dict[str, Any]) -> Received:
        """Decrypt a pushed message frame (1:1 or group); raises ``RemoteProtocolError``."""
        envelope = decode_envelope(_b(frame["envelope"]))
        sender, device, group = (
            str(frame["sender"]),
            int(frame["sender_device"]),
            frame.get("group"),
        )
        if isinstance(envelope, SenderKeyMessage):
            if group is None or group not in self.groups:
                raise MalformedMessage("group message for an unknown group")
            content = self.groups[group].decrypt(sender, envelope)
            commitment = envelope.commitment
        else:
            content = self._open_direct(sender, device, envelope)
            inner = envelope.message if isinstance(envelope, PreKeyMessage) else envelope
            commitment = inner.commitment
            self._handle_control(sender, content)
        return Received(
            str(frame["id"]),
            sender,
            device,
            group,
            int(frame["server_ms"]),
            content,
            _b(frame["franking_tag"]),
            commitment,
        )

    def _open_direct(
        self, sender: str, device: int, envelope: RatchetMessage | PreKeyMessage
    ) -> Content:
        conversation = direct_conversation(self.account_id, sender)
        existing = self.sessions.get((sender, device))
        if isinstance(envelope, PreKeyMessage) and (
            existing is None or existing.base_key != envelope.base_key
        ):
            opk = None
            if envelope.one_time_prekey_id is not None:
                if envelope.one_time_prekey_id not in self.one_time:
                    raise MalformedMessage("prekey message names an unknown or used one-time key")
                opk = self.one_time[envelope.one_time_prekey_id].key
            if envelope.kem_prekey_id == self.kem_last_resort.id:
                kem = self.kem_last_resort.key
            elif envelope.kem_prekey_id in self.kem_one_time:
                kem = self.kem_one_time[envelope.kem_prekey_id].key
            else:
                raise MalformedMessage("prekey message names an unknown KEM prekey")
            if envelope.signed_prekey_id != self.signed_prekey.id:
                raise MalformedMessage("prekey message names an unknown signed prekey")
            session, content = sessions.accept(
                self.identity,
                envelope,
                self.signed_prekey.key,
                opk,
                kem,
                sender,
                conversation,
                self.rng,
            )
            self.one_time.pop(envelope.one_time_prekey_id or -1, None)
            self.kem_one_time.pop(envelope.kem_prekey_id, None)
            self.sessions[(sender, device)] = session
            return content
        if existing is None:
            raise MalformedMessage("message for a session this device does not have")
        return existing.decrypt(envelope, sender, conversation, self.rng)

    # -- groups ---------------------------------------------------------------------------------

    def group(self, group_id: str) -> GroupSession:
        if group_id not in self.groups:
            self.groups[group_id] = GroupSession(bytes.fromhex(group_id), self.account_id, self.rng)
        return self.groups[group_id]

    @staticmethod
    def sender_key_control(skd: SenderKeyDistribution) -> bytes:
        return json.dumps({CONTROL_SENDER_KEY: base64.b64encode(skd.to_bytes()).decode()}).encode()

    def _handle_control(self, sender: str, content: Content) -> None:
        """Apply a sender-key distribution carried in a 1:1 message's control field."""
        if not content.control:
            return
        try:
            control = json.loads(content.control)
        except ValueError:
            return
        if isinstance(control, dict) and isinstance(control.get(CONTROL_SENDER_KEY), str):
            skd = SenderKeyDistribution.from_bytes(base64.b64decode(control[CONTROL_SENDER_KEY]))
            group = self.group(skd.group_id.hex())
            group.members.add(sender)
            group.process_distribution(sender, skd)

    # -- persistence (the profile store encrypts the whole state) ------------------------------

    def to_dict(self) -> dict[str, Any]:
        def e(b: bytes) -> str:
            return base64.b64encode(b).decode()

        def kem(k: KemPreKey) -> list[Any]:
            return [k.id, e(k.key.seed), e(k.signature), k.last_resort]

        spk = self.signed_prekey
        return {
            "identity": e(self.identity.private_bytes()),
            "account_id": self.account_id,
            "device_id": self.device_id,
            "next_key_id": self._next_key_id,
            "signed_prekey": [spk.id, e(spk.key.private_bytes()), e(spk.signature)],
            "kem_last_resort": kem(self.kem_last_resort),
            "one_time": [[k.id, e(k.key.private_bytes())] for k in self.one_time.values()],
            "kem_one_time": [kem(k) for k in self.kem_one_time.values()],
            "sessions": {f"{a} {d}": e(x.to_bytes()) for (a, d), x in self.sessions.items()},
            "groups": {gid: e(group_to_bytes(g)) for gid, g in self.groups.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], rng: Random) -> DeviceState:
        def kem(v: list[Any]) -> KemPreKey:
            return KemPreKey(int(v[0]), KemKeyPair(_b(v[1])), _b(v[2]), bool(v[3]))

        state = cls.__new__(cls)
        state.identity = IdentityKeyPair.from_private_bytes(_b(data["identity"]))
        state.rng = rng
        state.account_id, state.device_id = str(data["account_id"]), int(data["device_id"])
        state._next_key_id = int(data["next_key_id"])
        spk = data["signed_prekey"]
        state.signed_prekey = SignedPreKey(
            int(spk[0]), DHKeyPair.from_private_bytes(_b(spk[1])), _b(spk[2])
        )
        state.kem_last_resort = kem(data["kem_last_resort"])
        state.one_time = {
            int(i): OneTimePreKey(int(i), DHKeyPair.from_private_bytes(_b(k)))
            for i, k in data["one_time"]
        }
        state.kem_one_time = {k.id: k for k in map(kem, data["kem_one_time"])}
        state.sessions = {}
        for key, blob in data["sessions"].items():
            account, device = key.rsplit(" ", 1)
            state.sessions[(account, int(device))] = sessions.Session.from_bytes(_b(blob))
        state.groups = {gid: group_from_bytes(_b(blob)) for gid, blob in data["groups"].items()}
        return state
