"""Group messaging with sender keys (as Signal and WhatsApp do).

Theory of operation. Each member, for each group, owns one *sender key*: a
symmetric hash chain plus an Ed25519 signing key, named by a random 16-byte
``distribution_id``. The member sends a ``SenderKeyDistribution`` (chain key,
iteration, public signing key) to every other member over their pairwise
1:1 sessions. A group message is then encrypted once for the whole group:
``mk`` from the chain (``mk = HMAC(ck, 0x01)``, ``ck' = HMAC(ck, 0x02)``),
AES-256-GCM under a key expanded from ``mk``, and an Ed25519 signature over
the whole envelope, so a member holding the chain key still cannot forge
messages from another sender.

Receivers verify the signature before anything else, then step the chain,
keeping skipped keys within the same bounds as the Double Ratchet, and refuse
replays (a used iteration's key is deleted; pyca/vodozemac-style Megolm would
decrypt a replay again, see DESIGN-NOTES).

Rotation: when a member leaves or is removed, every remaining member drops
its sender key and distributes a fresh one to the remaining members only; the
removed member holds only retired chains and cannot read later messages.
Receivers keep the last ``MAX_KEYS_PER_SENDER`` keys of each sender so that
messages in flight across a rotation still open.

Who is a member is not this module's decision: ``members`` mirrors the group's
signed member list (``group_state.GroupLog``, held here as ``log``) through
``sync_roster``, and distributions and messages from anyone else are refused
(``NotAGroupMember``). A message from a member under a key id this member
never received, while it holds an earlier key of theirs, is noted in
``missed``: that member rotated, which happens when someone is removed, so
this member may have been kept from a change (the app holds its own sends
until the key arrives). The note is made before anything authenticates (it
cannot: the key is missing), so a forged header can only delay sending.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from parley.crypto.primitives import SigningKey, VerifyKey, aead_decrypt, aead_encrypt
from parley.crypto.random import Random
from parley.errors import (
    DuplicateMessage,
    LocalProtocolError,
    MalformedMessage,
    NotAGroupMember,
    TooManySkipped,
    UnknownSenderKey,
)
from parley.protocol import franking
from parley.protocol.codec import Reader, Writer
from parley.protocol.group_state import GroupEvent, GroupLog
from parley.protocol.ratchet import MAX_SKIP, kdf_ck, message_cipher_key
from parley.protocol.wire import (
    DISTRIBUTION_ID_LEN,
    Content,
    SenderKeyDistribution,
    SenderKeyMessage,
)

MAX_STORED_SKIPPED = 2000
MAX_KEYS_PER_SENDER = 5
MAX_ITERATION = 2**32 - 1

T = TypeVar("T")


class OutboundSenderKey:
    """This member's own sender key for one group."""

    __slots__ = ("chain_key", "distribution_id", "group_id", "iteration", "signing")

    def __init__(
        self,
        group_id: bytes,
        distribution_id: bytes,
        chain_key: bytes,
        signing: SigningKey,
        iteration: int = 0,
    ) -> None:
        self.group_id = group_id
        self.distribution_id = distribution_id
        self.chain_key = chain_key
        self.signing = signing
        self.iteration = iteration

    @classmethod
    def generate(cls, group_id: bytes, rng: Random) -> OutboundSenderKey:
        return cls(group_id, rng(DISTRIBUTION_ID_LEN), rng(32), SigningKey.generate(rng))

    def distribution(self) -> SenderKeyDistribution:
        """The key as it stands now: receivers can read from this iteration on."""
        return SenderKeyDistribution(
            self.group_id, self.distribution_id, self.iteration, self.chain_key, self.signing.public
        )

    def encrypt(self, plaintext: bytes, commitment: bytes) -> SenderKeyMessage:
        if self.iteration >= MAX_ITERATION:
            raise LocalProtocolError("sender key exhausted: rotate it")
        next_ck, mk = kdf_ck(self.chain_key)
        key, nonce = message_cipher_key(mk)
        unsigned = SenderKeyMessage(self.distribution_id, self.iteration, commitment, b"", b"")
        ciphertext = aead_encrypt(key, nonce, plaintext, self.group_id + unsigned.prefix())
        body = SenderKeyMessage(self.distribution_id, self.iteration, commitment, ciphertext, b"")
        signature = self.signing.sign(body.signed_part())
        self.chain_key, self.iteration = next_ck, self.iteration + 1
        return SenderKeyMessage(
            self.distribution_id, body.iteration, commitment, ciphertext, signature
        )


@dataclass(slots=True)
class InboundSenderKey:
    """Another member's sender key, as received in a distribution message."""

    group_id: bytes
    distribution_id: bytes
    verify_key: VerifyKey
    chain_key: bytes
    iteration: int
    skipped: OrderedDict[int, bytes] = field(default_factory=OrderedDict)

    @classmethod
    def from_distribution(cls, skd: SenderKeyDistribution) -> InboundSenderKey:
        return cls(
            skd.group_id,
            skd.distribution_id,
            VerifyKey(skd.signing_key),
            skd.chain_key,
            skd.iteration,
        )

    def decrypt_with(self, msg: SenderKeyMessage, check: Callable[[bytes], T]) -> T:
        """Verify, decrypt, ``check``, then advance; any failure changes nothing."""
        self.verify_key.verify(msg.signature, msg.signed_part())
        ad = self.group_id + msg.prefix()
        stored = self.skipped.get(msg.iteration)
        if stored is not None:
            result = check(_open(stored, msg.ciphertext, ad))
            del self.skipped[msg.iteration]
            return result
        if msg.iteration < self.iteration:
            raise DuplicateMessage("group message already decrypted")
        if msg.iteration - self.iteration > MAX_SKIP:
            raise TooManySkipped("group message too far ahead")
        ck = self.chain_key
        new_skipped: list[tuple[int, bytes]] = []
        for i in range(self.iteration, msg.iteration):
            ck, mk = kdf_ck(ck)
            new_skipped.append((i, mk))
        ck, mk = kdf_ck(ck)
        result = check(_open(mk, msg.ciphertext, ad))
        self.chain_key, self.iteration = ck, msg.iteration + 1
        for i, skipped_mk in new_skipped:
            self.skipped[i] = skipped_mk
        while len(self.skipped) > MAX_STORED_SKIPPED:
            self.skipped.popitem(last=False)
        return result


def _open(mk: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    key, nonce = message_cipher_key(mk)
    return aead_decrypt(key, nonce, ciphertext, ad)


class GroupSession:
    """One member's view of one group: its own sender key and everyone else's.

    Sans-I/O: methods return the distributions to send (over 1:1 sessions)
    and the caller delivers them. ``me`` and member names are the same
    stable names used for franking (``sender``).
    """

    def __init__(self, group_id: bytes, me: str, rng: Random) -> None:
        self.group_id = group_id
        self.conversation = franking.group_conversation(group_id.hex())
        self.me = me
        self.outbound = OutboundSenderKey.generate(group_id, rng)
        self.inbound: dict[str, OrderedDict[bytes, InboundSenderKey]] = {}
        self.members: set[str] = set()
        self._init_state()

    def _init_state(self) -> None:
        self.log: GroupLog | None = None  # the signed state; None: a group from before it
        self.missed: dict[str, bytes] = {}  # member -> a key id of theirs never received
        self.sent_to: set[str] = set()  # who has our current sender key
        # Per message handled, not stored: what changes did (for the app to show),
        # who asked for our key and state (with the head they named), and keys from
        # accounts that may be members in a state this member is catching up to.
        self.events: list[GroupEvent] = []
        self.requests: dict[str, tuple[int, bytes] | None] = {}
        self.deferred: dict[str, SenderKeyDistribution] = {}

    def sync_roster(self, rng: Random) -> list[str]:
        """Make ``members`` the signed member list (without us); anyone gone loses
        our future messages: their keys are dropped and ours rotates. Returns them."""
        if self.log is None:
            return []
        roster = set(self.log.state.members) - {self.me}
        gone = sorted(self.members - roster)
        for name in gone:
            self.inbound.pop(name, None)
            self.missed.pop(name, None)
        self.members = roster
        self.sent_to &= roster | {self.me}
        if gone:
            self.rotate(rng)
        return gone

    @property
    def is_member(self) -> bool:
        return self.log is not None and self.me in self.log.state.members

    def add_members(self, names: list[str]) -> dict[str, SenderKeyDistribution]:
        """New members get our current sender key; they read from here on."""
        added = [n for n in names if n != self.me and n not in self.members]
        self.members.update(added)
        skd = self.outbound.distribution()
        return dict.fromkeys(added, skd)

    def remove_member(self, name: str, rng: Random) -> dict[str, SenderKeyDistribution]:
        """Forget ``name``'s keys, rotate ours, and return it for the others only."""
        self.members.discard(name)
        self.inbound.pop(name, None)
        return self.rotate(rng)

    def rotate(self, rng: Random) -> dict[str, SenderKeyDistribution]:
        self.outbound = OutboundSenderKey.generate(self.group_id, rng)
        self.sent_to = set()
        skd = self.outbound.distribution()
        return dict.fromkeys(self.members, skd)

    def process_distribution(self, sender: str, skd: SenderKeyDistribution) -> None:
        """Store a member's sender key (delivered over an authenticated 1:1 session)."""
        if skd.group_id != self.group_id:
            raise MalformedMessage("sender key is for another group")
        if sender not in self.members and sender != self.me:  # our own other devices
            raise NotAGroupMember("sender key from a non-member")
        self.missed.pop(sender, None)  # their current key, from them over a 1:1 session
        keys = self.inbound.setdefault(sender, OrderedDict())
        if skd.distribution_id in keys:
            return  # a re-delivery must not rewind the chain (that would allow replays)
        keys[skd.distribution_id] = InboundSenderKey.from_distribution(skd)
        while len(keys) > MAX_KEYS_PER_SENDER:
            keys.popitem(last=False)

    def encrypt(self, content: Content) -> SenderKeyMessage:
        commitment = franking.commit(content, self.me, self.conversation)
        return self.outbound.encrypt(content.to_bytes(), commitment)

    def decrypt(self, sender: str, msg: SenderKeyMessage) -> Content:
        keys = self.inbound.get(sender)
        key = None if keys is None else keys.get(msg.distribution_id)
        if key is None:
            if sender not in self.members and sender != self.me:
                raise NotAGroupMember("a group message from an account that is not a member")
            if keys:
                self.missed[sender] = msg.distribution_id
            raise UnknownSenderKey("no sender key for this message")

        def check(plaintext: bytes) -> Content:
            content = Content.from_bytes(plaintext)
            franking.check_commitment(content, sender, self.conversation, msg.commitment)
            return content

        return key.decrypt_with(msg, check)


_STATE_VERSION = 2  # 2 adds the signed state, missed key ids and who has our key
_MAX_NAME = 256
_MAX_LOG = 64 * 1024 * 1024


def group_to_bytes(group: GroupSession) -> bytes:
    """Serialize a member's group state (secret material: encrypt at rest)."""
    w = Writer().u8(_STATE_VERSION).var(group.group_id, 64).text(group.me, _MAX_NAME)
    o = group.outbound
    w.fixed(o.distribution_id, DISTRIBUTION_ID_LEN).fixed(o.chain_key, 32)
    w.fixed(o.signing.private_bytes(), 32).u32(o.iteration)
    w.u32(len(group.members))
    for member in sorted(group.members):
        w.text(member, _MAX_NAME)
    w.u32(len(group.inbound))
    for sender, keys in group.inbound.items():
        w.text(sender, _MAX_NAME).u8(len(keys))
        for key in keys.values():
            w.fixed(key.distribution_id, DISTRIBUTION_ID_LEN).fixed(key.verify_key.public, 32)
            w.fixed(key.chain_key, 32).u32(key.iteration).u32(len(key.skipped))
            for iteration, mk in key.skipped.items():
                w.u32(iteration).fixed(mk, 32)
    w.bool(group.log is not None)
    if group.log is not None:
        w.var(group.log.to_bytes(), _MAX_LOG)
    w.u32(len(group.missed))
    for sender in sorted(group.missed):
        w.text(sender, _MAX_NAME).fixed(group.missed[sender], DISTRIBUTION_ID_LEN)
    w.u32(len(group.sent_to))
    for name in sorted(group.sent_to):
        w.text(name, _MAX_NAME)
    return w.to_bytes()


def group_from_bytes(data: bytes) -> GroupSession:
    r = Reader(data)
    version = r.u8()
    if version not in (1, _STATE_VERSION):
        raise MalformedMessage("unknown group state version")
    group_id, me = r.var(64), r.text(_MAX_NAME)
    group = GroupSession.__new__(GroupSession)
    group._init_state()
    group.group_id, group.me = group_id, me
    group.conversation = franking.group_conversation(group_id.hex())
    dist, ck = r.fixed(DISTRIBUTION_ID_LEN), r.fixed(32)
    signing, iteration = SigningKey.from_private_bytes(r.fixed(32)), r.u32()
    group.outbound = OutboundSenderKey(group_id, dist, ck, signing, iteration)
    group.members = {r.text(_MAX_NAME) for _ in range(_bounded(r.u32(), 100_000))}
    group.inbound = {}
    for _ in range(_bounded(r.u32(), 100_000)):
        sender = r.text(_MAX_NAME)
        keys: OrderedDict[bytes, InboundSenderKey] = OrderedDict()
        for _ in range(_bounded(r.u8(), MAX_KEYS_PER_SENDER)):
            key = InboundSenderKey(
                group_id, r.fixed(DISTRIBUTION_ID_LEN), VerifyKey(r.fixed(32)), r.fixed(32), r.u32()
            )
            for _ in range(_bounded(r.u32(), MAX_STORED_SKIPPED)):
                i = r.u32()
                key.skipped[i] = r.fixed(32)
            keys[key.distribution_id] = key
        group.inbound[sender] = keys
    if version == 1:  # before signed state: everyone listed had our key
        group.sent_to = set(group.members)
    else:
        if r.bool():
            group.log = GroupLog.from_bytes(r.var(_MAX_LOG))
        for _ in range(_bounded(r.u32(), 100_000)):
            sender = r.text(_MAX_NAME)
            group.missed[sender] = r.fixed(DISTRIBUTION_ID_LEN)
        group.sent_to = {r.text(_MAX_NAME) for _ in range(_bounded(r.u32(), 100_000))}
    r.end()
    return group


def _bounded(count: int, bound: int) -> int:
    if count > bound:
        raise MalformedMessage("stored group state exceeds its bounds")
    return count
