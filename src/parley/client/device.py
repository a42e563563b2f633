"""One device's cryptographic state, without I/O: keys, 1:1 sessions, group sessions.

The async transport (``api``) moves bytes; this object turns server JSON into
protocol objects and back. ``sender`` names are account ids, and the
conversation names are ``franking.direct_conversation`` / ``group_conversation``,
exactly as the server computes them for its franking tags.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from parley.client import groups
from parley.crypto.primitives import DHKeyPair, KemKeyPair
from parley.crypto.random import Random
from parley.errors import DecryptionError, DuplicateMessage, MalformedMessage
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
# Prekey lifecycle (as Signal's clients): the signed prekey and the last-resort
# ML-KEM prekey are replaced every ROTATION_MS; the retired private keys are kept
# for GRACE_MS so first messages built from a bundle fetched before the rotation
# still open, then deleted (forward secrecy for first messages).
ROTATION_MS = 7 * 86_400_000
GRACE_MS = 30 * 86_400_000
# Earlier sessions kept per peer device, so a peer that re-initiated (or whose
# messages on the old session are still in flight) is still understood.
MAX_PREVIOUS_SESSIONS = 5


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def _e(data: bytes) -> str:
    return base64.b64encode(data).decode()


K = TypeVar("K")


class StoredKeys(MutableMapping[int, K]):
    """Prekeys by id, each kept in its stored form (a JSON list) until first used.

    A device holds a hundred one-time prekeys, and decoding one means deriving an
    ML-KEM key pair from its seed: loading them all cost every command about 15 ms
    (the first ML-KEM key also loads pyca's OpenSSL backend module, about 8 ms), and
    a command that opens no first message (a send) needs none of them. ``stored``
    gives them back for saving without decoding the ones never used."""

    def __init__(
        self,
        decode: Callable[[Any], K],
        encode: Callable[[K], Any],
        stored: Iterable[Any] = (),
    ) -> None:
        self._decode, self._encode = decode, encode
        self._items: dict[int, Any] = {}
        self._undecoded: set[int] = set()
        for value in stored:
            key_id = int(value[0])
            self._items[key_id] = value
            self._undecoded.add(key_id)

    def __getitem__(self, key_id: int) -> K:
        value = self._items[key_id]
        if key_id in self._undecoded:
            value = self._items[key_id] = self._decode(value)
            self._undecoded.discard(key_id)
        return value  # type: ignore[no-any-return]

    def __setitem__(self, key_id: int, key: K) -> None:
        self._items[key_id] = key
        self._undecoded.discard(key_id)

    def __delitem__(self, key_id: int) -> None:
        del self._items[key_id]
        self._undecoded.discard(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._items

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def stored(self) -> list[Any]:
        """Every key in its stored form, in order."""
        return [
            value if key_id in self._undecoded else self._encode(value)
            for key_id, value in self._items.items()
        ]


def _one_time_from(v: list[Any]) -> OneTimePreKey:
    return OneTimePreKey(int(v[0]), DHKeyPair.from_private_bytes(_b(v[1])))


def _one_time_to(k: OneTimePreKey) -> list[Any]:
    return [k.id, _e(k.key.private_bytes())]


def _kem_from(v: list[Any]) -> KemPreKey:
    return KemPreKey(int(v[0]), KemKeyPair(_b(v[1])), _b(v[2]), bool(v[3]))


def _kem_to(k: KemPreKey) -> list[Any]:
    return [k.id, _e(k.key.seed), _e(k.signature), k.last_resort]


def _retired_kem_from(v: list[Any]) -> tuple[KemPreKey, int]:
    return _kem_from(v[:4]), int(v[4])


def _retired_kem_to(retired: tuple[KemPreKey, int]) -> list[Any]:
    return [*_kem_to(retired[0]), retired[1]]


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
        self._kem_last_resort_stored: list[Any] | None = None
        self.kem_last_resort = KemPreKey.generate(identity, self._key_id(), rng, last_resort=True)
        self.one_time = StoredKeys(_one_time_from, _one_time_to)
        self.kem_one_time = StoredKeys(_kem_from, _kem_to)
        self.sessions: dict[tuple[str, int], sessions.Session] = {}
        self.groups: dict[str, GroupSession] = {}
        self.prekeys_rotated_ms = 0
        self.retired_signed: dict[int, tuple[SignedPreKey, int]] = {}
        self.retired_kem = StoredKeys(_retired_kem_from, _retired_kem_to)
        # Base keys of the first messages accepted, per signed prekey id: a first
        # message is accepted once (a replay under another device id, or after the
        # session changed, is refused). Dropped with the signed prekey's private key.
        self.base_keys: dict[int, set[bytes]] = {}
        self.previous: dict[tuple[str, int], list[sessions.Session]] = {}

    @property
    def kem_last_resort(self) -> KemPreKey:
        """The last-resort ML-KEM prekey, decoded from the profile when first used
        (as ``StoredKeys``: a send does not need it)."""
        if self._kem_last_resort_stored is not None:
            self._kem_last_resort = _kem_from(self._kem_last_resort_stored)
            self._kem_last_resort_stored = None
        return self._kem_last_resort

    @kem_last_resort.setter
    def kem_last_resort(self, key: KemPreKey) -> None:
        self._kem_last_resort = key
        self._kem_last_resort_stored = None

    def _key_id(self) -> int:
        self._next_key_id += 1
        return self._next_key_id

    def new_one_time_keys(self, count: int) -> tuple[list[OneTimePreKey], list[KemPreKey]]:
        ot = [OneTimePreKey.generate(self._key_id(), self.rng) for _ in range(count)]
        kem = [KemPreKey.generate(self.identity, self._key_id(), self.rng) for _ in range(count)]
        self.one_time.update({k.id: k for k in ot})
        self.kem_one_time.update({k.id: k for k in kem})
        return ot, kem

    def rotate_if_due(self, now_ms: int) -> bool:
        """Replace the signed and last-resort prekeys if they are older than ``ROTATION_MS``
        (retiring the old ones for ``GRACE_MS``) and forget keys past their grace.
        True if new keys were made (the caller uploads them)."""
        for table in (self.retired_signed, self.retired_kem):
            for key_id in [k for k, (_, at) in table.items() if now_ms - at > GRACE_MS]:
                del table[key_id]
        for key_id in [k for k in self.base_keys if k not in self._signed_ids()]:
            del self.base_keys[key_id]
        if now_ms - self.prekeys_rotated_ms < ROTATION_MS:
            return False
        self.retired_signed[self.signed_prekey.id] = (self.signed_prekey, now_ms)
        self.retired_kem[self.kem_last_resort.id] = (self.kem_last_resort, now_ms)
        self.signed_prekey = SignedPreKey.generate(self.identity, self._key_id(), self.rng)
        self.kem_last_resort = KemPreKey.generate(
            self.identity, self._key_id(), self.rng, last_resort=True
        )
        self.prekeys_rotated_ms = now_ms
        return True

    def _signed_ids(self) -> set[int]:
        return {self.signed_prekey.id, *self.retired_signed}

    def _signed_prekey(self, key_id: int) -> SignedPreKey:
        if key_id == self.signed_prekey.id:
            return self.signed_prekey
        if key_id in self.retired_signed:
            return self.retired_signed[key_id][0]
        raise MalformedMessage("prekey message names an unknown or expired signed prekey")

    def _kem_prekey(self, key_id: int) -> KemPreKey:
        if key_id == self.kem_last_resort.id:
            return self.kem_last_resort
        if key_id in self.retired_kem:
            return self.retired_kem[key_id][0]
        if key_id in self.kem_one_time:
            return self.kem_one_time[key_id]
        raise MalformedMessage("prekey message names an unknown KEM prekey")

    @staticmethod
    def first_message_identity(frame: dict[str, Any]) -> bytes | None:
        """The identity a first message (PreKeyMessage) claims, before anything is
        decrypted, so the caller can check it against the verified one; None for
        any other message."""
        envelope = decode_envelope(_b(frame["envelope"]))
        if isinstance(envelope, PreKeyMessage):
            return envelope.identity.to_bytes()
        return None

    def peer_identity(self, account_id: str, device_id: int) -> bytes | None:
        session = self.sessions.get((account_id, device_id))
        return None if session is None else session.peer.to_bytes()

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
        """Theory of operation: a message is tried on the current session with that
        device, then on the earlier ones (promoting the one that opens it). A first
        message whose base key no session has starts a new session, once: its base
        key is remembered under its signed prekey, so the same first message is
        refused if it comes again (under another device id, or after the session
        changed). Every decryption works on a copy and commits only on success."""
        conversation = direct_conversation(self.account_id, sender)
        key = (sender, device)
        existing = self.sessions.get(key)
        candidates = [x for x in (existing, *self.previous.get(key, [])) if x is not None]
        if isinstance(envelope, PreKeyMessage):
            for known in candidates:
                if known.base_key == envelope.base_key:
                    return self._decrypt_on(key, known, envelope, sender, conversation)
            return self._accept(key, existing, envelope, sender, conversation)
        failure: Exception = MalformedMessage("message for a session this device does not have")
        for known in candidates:
            try:
                return self._decrypt_on(key, known, envelope, sender, conversation)
            except DecryptionError as exc:
                failure = exc
        raise failure

    def _decrypt_on(
        self,
        key: tuple[str, int],
        session: sessions.Session,
        envelope: RatchetMessage | PreKeyMessage,
        sender: str,
        conversation: str,
    ) -> Content:
        content = session.decrypt(envelope, sender, conversation, self.rng)
        current = self.sessions.get(key)
        if current is not session:  # an earlier session spoke: it is current again
            earlier = [x for x in self.previous.get(key, []) if x is not session]
            self.previous[key] = ([current] if current else []) + earlier
            self.previous[key] = self.previous[key][:MAX_PREVIOUS_SESSIONS]
            self.sessions[key] = session
        return content

    def _accept(
        self,
        key: tuple[str, int],
        existing: sessions.Session | None,
        envelope: PreKeyMessage,
        sender: str,
        conversation: str,
    ) -> Content:
        spk = self._signed_prekey(envelope.signed_prekey_id)
        if envelope.base_key in self.base_keys.get(spk.id, set()):
            raise DuplicateMessage("a first message that was already accepted, sent again")
        opk = None
        if envelope.one_time_prekey_id is not None:
            if envelope.one_time_prekey_id not in self.one_time:
                raise MalformedMessage("prekey message names an unknown or used one-time key")
            opk = self.one_time[envelope.one_time_prekey_id].key
        kem = self._kem_prekey(envelope.kem_prekey_id)
        session, content = sessions.accept(
            self.identity, envelope, spk.key, opk, kem.key, sender, conversation, self.rng
        )
        self.one_time.pop(envelope.one_time_prekey_id or -1, None)
        self.kem_one_time.pop(envelope.kem_prekey_id, None)
        self.base_keys.setdefault(spk.id, set()).add(envelope.base_key)
        if existing is not None:
            earlier = [existing, *self.previous.get(key, [])]
            self.previous[key] = earlier[:MAX_PREVIOUS_SESSIONS]
        self.sessions[key] = session
        return content

    # -- groups ---------------------------------------------------------------------------------

    def group(self, group_id: str) -> GroupSession:
        if group_id not in self.groups:
            self.groups[group_id] = GroupSession(bytes.fromhex(group_id), self.account_id, self.rng)
        return self.groups[group_id]

    @staticmethod
    def sender_key_control(skd: SenderKeyDistribution) -> bytes:
        return json.dumps({CONTROL_SENDER_KEY: base64.b64encode(skd.to_bytes()).decode()}).encode()

    def _handle_control(self, sender: str, content: Content) -> None:
        """Apply the group changes and sender key a 1:1 message's control carries: only
        from the group's signed member list, never from whoever sends one
        (``client.groups.handle_control``)."""
        if not content.control:
            return
        try:
            control = json.loads(content.control)
        except ValueError:
            return
        if isinstance(control, dict):
            groups.handle_control(self, sender, control)

    # -- persistence (the profile store encrypts the whole state) ------------------------------

    def to_dict(self) -> dict[str, Any]:
        e = _e
        spk = self.signed_prekey
        stored_kem = self._kem_last_resort_stored
        return {
            "identity": e(self.identity.private_bytes()),
            "account_id": self.account_id,
            "device_id": self.device_id,
            "next_key_id": self._next_key_id,
            "signed_prekey": [spk.id, e(spk.key.private_bytes()), e(spk.signature)],
            "kem_last_resort": _kem_to(self.kem_last_resort) if stored_kem is None else stored_kem,
            "one_time": self.one_time.stored(),
            "kem_one_time": self.kem_one_time.stored(),
            "sessions": {f"{a} {d}": e(x.to_bytes()) for (a, d), x in self.sessions.items()},
            "previous": {
                f"{a} {d}": [e(x.to_bytes()) for x in xs] for (a, d), xs in self.previous.items()
            },
            "prekeys_rotated_ms": self.prekeys_rotated_ms,
            "retired_signed": [
                [k.id, e(k.key.private_bytes()), e(k.signature), at]
                for k, at in self.retired_signed.values()
            ],
            "retired_kem": self.retired_kem.stored(),
            "base_keys": {str(i): sorted(e(b) for b in keys) for i, keys in self.base_keys.items()},
            "groups": {gid: e(group_to_bytes(g)) for gid, g in self.groups.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], rng: Random) -> DeviceState:
        state = cls.__new__(cls)
        state.identity = IdentityKeyPair.from_private_bytes(_b(data["identity"]))
        state.rng = rng
        state.account_id, state.device_id = str(data["account_id"]), int(data["device_id"])
        state._next_key_id = int(data["next_key_id"])
        spk = data["signed_prekey"]
        state.signed_prekey = SignedPreKey(
            int(spk[0]), DHKeyPair.from_private_bytes(_b(spk[1])), _b(spk[2])
        )
        state._kem_last_resort_stored = data["kem_last_resort"]
        state.one_time = StoredKeys(_one_time_from, _one_time_to, data["one_time"])
        state.kem_one_time = StoredKeys(_kem_from, _kem_to, data["kem_one_time"])
        state.sessions = {}
        for key, blob in data["sessions"].items():
            account, device = key.rsplit(" ", 1)
            state.sessions[(account, int(device))] = sessions.Session.from_bytes(_b(blob))
        state.groups = {gid: group_from_bytes(_b(blob)) for gid, blob in data["groups"].items()}
        # Fields added later default to what an older profile implies.
        state.previous = {}
        for key, blobs in data.get("previous", {}).items():
            account, device = key.rsplit(" ", 1)
            state.previous[(account, int(device))] = [
                sessions.Session.from_bytes(_b(x)) for x in blobs
            ]
        state.prekeys_rotated_ms = int(data.get("prekeys_rotated_ms", 0))
        state.retired_signed = {
            int(v[0]): (
                SignedPreKey(int(v[0]), DHKeyPair.from_private_bytes(_b(v[1])), _b(v[2])),
                int(v[3]),
            )
            for v in data.get("retired_signed", [])
        }
        state.retired_kem = StoredKeys(
            _retired_kem_from, _retired_kem_to, data.get("retired_kem", [])
        )
        state.base_keys = {
            int(i): {_b(x) for x in keys} for i, keys in data.get("base_keys", {}).items()
        }
        return state
