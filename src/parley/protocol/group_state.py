"""Authenticated group state: a hash chain of changes signed by the group's admins.

Theory of operation. A group's state (members with their identity keys, admins,
name) is never the server's word. It is the result of a sequence of *changes*;
each change names the group, its ``version`` (genesis is 0, then current + 1),
the hash of the change before it (``prev_hash``, zeros for genesis), the
account that made it (``actor``) and a list of actions (add, remove, rename,
admin). The actor signs exactly those bytes with its Ed25519 identity key, so
the server, which only ever stores and relays changes, can neither create one,
nor reorder two (the version and the hash chain), nor drop one unnoticed: every
group message names the (version, hash) it was sent under, and a member that
was shown an older state sees a newer version it does not have.

Applying a change (``apply``), after Signal's ``GroupChangeApplicator``: check
the version and chain, that the actor is allowed to make it (an admin; any
member may remove itself), verify the signature under the actor's identity key
*as the state records it*, then run one ``_apply_*`` per action on a copy and a
final validation (at most ``MAX_MEMBERS``, at least one admin while anyone is
left). Any failure raises ``InvalidGroupChange`` and changes nothing. Genesis is
signed by its actor, who must add itself first and becomes the first admin; a
member trusts a genesis only from a 1:1 session with a member of the resulting
group whose identity matches (the caller checks that, ``GroupLog.start``).

Parley adds to Signal's design what Signal leaves to its server: the ``prev_hash``
chain and admin signatures the server cannot make (Signal's server checks its
zkgroup proofs; here there is nothing for it to check). The server keeps each
change sealed under the group's master key (``seal``/``unseal``), which only
members hold, so it can serve the history to a new device without reading the
group's name or members' phone numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import assert_never

from parley.crypto.primitives import (
    ED25519_LEN,
    SIGNATURE_LEN,
    VerifyKey,
    aead_decrypt,
    aead_encrypt,
    sha256,
)
from parley.crypto.random import Random
from parley.errors import DecryptionError, InvalidGroupChange, InvalidSignature, MalformedMessage
from parley.protocol.codec import Reader, Writer
from parley.protocol.keys import IdentityKeyPair
from parley.protocol.wire import IDENTITY_LEN, MAX_GROUP_ID

FORMAT = 1
HASH_LEN = 32
MASTER_KEY_LEN = 32
ZERO_HASH = bytes(HASH_LEN)
MAX_MEMBERS = 1000
MAX_ACTIONS = MAX_MEMBERS + 8
MAX_ACCOUNT = 64
MAX_PHONE = 32
MAX_NAME = 256
MAX_VERSION = 2**32 - 1
MAX_CHANGE = 256 * 1024
MAX_CHANGES = 100_000

_SIGNED = b"parley/group-change/v1"
_HASHED = b"parley/group-change-hash/v1"
_SEALED = b"parley/group-log/v1"
_NONCE = 12

ADD, REMOVE, RENAME, ADMIN = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class Add:
    member: str
    identity: bytes  # the 64-byte identity the adding admin verified
    phone: str = ""  # the adder's word for the member's number; shown once the directory agrees


@dataclass(frozen=True, slots=True)
class Remove:
    member: str


@dataclass(frozen=True, slots=True)
class Rename:
    name: str


@dataclass(frozen=True, slots=True)
class SetAdmin:
    member: str
    admin: bool


Action = Add | Remove | Rename | SetAdmin


@dataclass(frozen=True, slots=True)
class GroupChange:
    group_id: bytes
    version: int
    prev_hash: bytes
    actor: str
    actions: tuple[Action, ...]
    signature: bytes = b""

    def _body(self) -> Writer:
        if not 0 < len(self.actions) <= MAX_ACTIONS:
            raise ValueError("a change has 1 to MAX_ACTIONS actions")
        w = Writer().u8(FORMAT).var(self.group_id, MAX_GROUP_ID).u32(self.version)
        w.fixed(self.prev_hash, HASH_LEN).text(self.actor, MAX_ACCOUNT).u16(len(self.actions))
        for a in self.actions:
            match a:
                case Add():
                    w.u8(ADD).text(a.member, MAX_ACCOUNT).fixed(a.identity, IDENTITY_LEN)
                    w.text(a.phone, MAX_PHONE)
                case Remove():
                    w.u8(REMOVE).text(a.member, MAX_ACCOUNT)
                case Rename():
                    w.u8(RENAME).text(a.name, MAX_NAME)
                case SetAdmin():
                    w.u8(ADMIN).text(a.member, MAX_ACCOUNT).bool(a.admin)
        return w

    def signed_part(self) -> bytes:
        """Exactly what the actor signs (domain-separated)."""
        return _SIGNED + self._body().to_bytes()

    def to_bytes(self) -> bytes:
        return self._body().fixed(self.signature, SIGNATURE_LEN).to_bytes()

    def hash(self) -> bytes:
        """What the next change names as ``prev_hash``, and messages name as the state."""
        return sha256(_HASHED + self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupChange:
        """Strict decoding: any defect raises ``MalformedMessage``."""
        if len(data) > MAX_CHANGE:
            raise MalformedMessage("group change too large")
        r = Reader(data)
        if r.u8() != FORMAT:
            raise MalformedMessage("unknown group change format")
        group_id, version, prev = r.var(MAX_GROUP_ID), r.u32(), r.fixed(HASH_LEN)
        actor, count = r.text(MAX_ACCOUNT), r.u16()
        if not 0 < count <= MAX_ACTIONS:
            raise MalformedMessage("a group change has 1 to MAX_ACTIONS actions")
        actions: list[Action] = []
        for _ in range(count):
            kind = r.u8()
            if kind == ADD:
                actions.append(Add(r.text(MAX_ACCOUNT), r.fixed(IDENTITY_LEN), r.text(MAX_PHONE)))
            elif kind == REMOVE:
                actions.append(Remove(r.text(MAX_ACCOUNT)))
            elif kind == RENAME:
                actions.append(Rename(r.text(MAX_NAME)))
            elif kind == ADMIN:
                actions.append(SetAdmin(r.text(MAX_ACCOUNT), r.bool()))
            else:
                raise MalformedMessage("unknown group action")
        signature = r.fixed(SIGNATURE_LEN)
        r.end()
        return cls(group_id, version, prev, actor, tuple(actions), signature)


def sign(identity: IdentityKeyPair, unsigned: GroupChange) -> GroupChange:
    """``unsigned`` with the actor's signature (the caller is the actor)."""
    signature = identity.signing.sign(unsigned.signed_part())
    return GroupChange(
        unsigned.group_id,
        unsigned.version,
        unsigned.prev_hash,
        unsigned.actor,
        unsigned.actions,
        signature,
    )


@dataclass(frozen=True, slots=True)
class Member:
    identity: bytes
    admin: bool = False
    phone: str = ""


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """What a change did, for members to see ("Alice added Dave")."""

    kind: str  # created, member_added, member_removed, left, renamed, admin_added, admin_removed
    actor: str
    subject: str  # the member concerned, or the new name
    version: int


@dataclass(frozen=True, slots=True)
class GroupState:
    group_id: bytes
    version: int
    head: bytes
    name: str
    members: Mapping[str, Member] = field(default_factory=dict)

    def is_admin(self, account: str) -> bool:
        m = self.members.get(account)
        return m is not None and m.admin

    @property
    def admins(self) -> list[str]:
        return sorted(a for a, m in self.members.items() if m.admin)


def _refuse(why: str) -> InvalidGroupChange:
    return InvalidGroupChange(why)


def _signer(state: GroupState | None, change: GroupChange) -> bytes:
    """The identity that must have signed ``change``: the checks that come before
    any action (version, chain, the actor's right to make it)."""
    if state is None:
        if change.version != 0 or change.prev_hash != ZERO_HASH:
            raise _refuse("a group's first change must be version 0")
        first = change.actions[0]
        if not (isinstance(first, Add) and first.member == change.actor):
            raise _refuse("a group's creator must add itself first")
        return first.identity
    if change.group_id != state.group_id:
        raise _refuse("a change for another group")
    if change.version != state.version + 1:
        raise _refuse(f"version {change.version} does not follow {state.version}")
    if change.prev_hash != state.head:
        raise _refuse("the change does not follow this group's history")
    actor = state.members.get(change.actor)
    if actor is None:
        raise _refuse("the change was made by someone who is not a member")
    if not actor.admin and change.actions != (Remove(change.actor),):
        raise _refuse("only an admin can change the group (any member may leave)")
    return actor.identity


class _Draft:
    """The state being built from one change (a copy: the caller's state is untouched)."""

    def __init__(self, state: GroupState | None, change: GroupChange) -> None:
        self.genesis = state is None
        self.members: dict[str, Member] = {} if state is None else dict(state.members)
        self.name = "" if state is None else state.name
        self.actor, self.version = change.actor, change.version
        self.events: list[GroupEvent] = []

    def event(self, kind: str, subject: str) -> None:
        self.events.append(GroupEvent(kind, self.actor, subject, self.version))

    def apply_add(self, a: Add, first: bool) -> None:
        if a.member in self.members:
            raise _refuse("adds someone who is already a member")
        if not a.member or len(self.members) >= MAX_MEMBERS:
            raise _refuse(f"a group has 1 to {MAX_MEMBERS} members")
        # The creator, adding itself first in genesis, is the first admin.
        self.members[a.member] = Member(a.identity, self.genesis and first, a.phone)
        if not self.genesis:
            self.event("member_added", a.member)

    def apply_remove(self, a: Remove) -> None:
        if a.member not in self.members:
            raise _refuse("removes someone who is not a member")
        del self.members[a.member]
        self.event("left" if a.member == self.actor else "member_removed", a.member)

    def apply_rename(self, a: Rename) -> None:
        self.name = a.name
        if not self.genesis:
            self.event("renamed", a.name)

    def apply_admin(self, a: SetAdmin) -> None:
        m = self.members.get(a.member)
        if m is None:
            raise _refuse("changes the role of someone who is not a member")
        if m.admin != a.admin:
            self.members[a.member] = Member(m.identity, a.admin, m.phone)
            self.event("admin_added" if a.admin else "admin_removed", a.member)

    def validate(self) -> None:
        if self.members and not any(m.admin for m in self.members.values()):
            raise _refuse("the change would leave the group without an admin")
        if self.genesis:
            self.events.insert(0, GroupEvent("created", self.actor, self.name, self.version))


def apply(
    state: GroupState | None, change: GroupChange, verify: bool = True
) -> tuple[GroupState, list[GroupEvent]]:
    """Verify ``change`` against ``state`` (None: genesis) and return the new state and
    what it did; raise ``InvalidGroupChange`` (nothing changes) if it must be refused."""
    signer = _signer(state, change)
    if verify:
        try:
            VerifyKey(signer[:ED25519_LEN]).verify(change.signature, change.signed_part())
        except (MalformedMessage, InvalidSignature) as exc:
            raise _refuse("the change's signature does not verify") from exc
    draft = _Draft(state, change)
    for i, action in enumerate(change.actions):
        match action:
            case Add():
                draft.apply_add(action, i == 0)
            case Remove():
                draft.apply_remove(action)
            case Rename():
                draft.apply_rename(action)
            case SetAdmin():
                draft.apply_admin(action)
            case _:
                assert_never(action)
    draft.validate()
    new = GroupState(change.group_id, change.version, change.hash(), draft.name, draft.members)
    return new, draft.events


Known = Callable[[str], bytes | None]
"""An account's identity key as this device verified it (its 1:1 session), or None."""


def _check_known(state: GroupState | None, change: GroupChange, known: Known) -> None:
    """The actor's identity as the state records it (for genesis: as it adds itself)
    must be the one this device verified for that account, when it has one."""
    if state is None:
        first = change.actions[0]
        recorded = first.identity if isinstance(first, Add) else b""
    else:
        member = state.members.get(change.actor)
        recorded = member.identity if member is not None else b""
    verified = known(change.actor)
    if verified is not None and recorded and verified != recorded:
        raise _refuse("the change is signed under an identity this device does not know")


@dataclass(frozen=True, slots=True)
class Pending:
    """A newer state a member named (in a message) that this device does not have."""

    version: int
    hash: bytes
    by: str


class GroupLog:
    """One member's copy of a group's history: every change from genesis, the state
    they produce, the master key that seals them for the server, and what members
    have named (``pending``: a newer state; ``forked``: a different one)."""

    __slots__ = ("changes", "forked", "master_key", "pending", "state")

    def __init__(self, master_key: bytes, changes: list[GroupChange], state: GroupState) -> None:
        self.master_key = master_key
        self.changes = changes
        self.state = state
        self.pending: Pending | None = None
        self.forked: Pending | None = None

    @classmethod
    def start(
        cls, master_key: bytes, changes: Sequence[GroupChange], known: Known
    ) -> tuple[GroupLog, list[GroupEvent]]:
        """Verify a whole history from genesis."""
        if len(master_key) != MASTER_KEY_LEN:
            raise _refuse("a group master key is 32 bytes")
        if not changes:
            raise _refuse("an empty group history")
        state: GroupState | None = None
        events: list[GroupEvent] = []
        for change in changes:
            _check_known(state, change, known)
            state, done = apply(state, change)
            events += done
        assert state is not None
        return cls(master_key, list(changes), state), events

    @property
    def version(self) -> int:
        return self.state.version

    def hash_at(self, version: int) -> bytes:
        return self.changes[version].hash()

    def since(self, version: int) -> list[GroupChange]:
        """The changes after ``version`` (all of them for -1)."""
        return self.changes[version + 1 :]

    def extend(self, changes: Iterable[GroupChange], known: Known) -> list[GroupEvent]:
        """Apply the changes beyond this log's version; the ones it already has must be
        the same (else ``InvalidGroupChange``: two histories). All or nothing."""
        state, added, events = self.state, [], []
        for change in changes:
            if change.version <= state.version:
                if change.version < len(self.changes) and change.hash() != self.hash_at(
                    change.version
                ):
                    raise _refuse(f"a different change for version {change.version}")
                continue
            _check_known(state, change, known)
            state, done = apply(state, change)
            added.append(change)
            events += done
        if len(self.changes) + len(added) > MAX_CHANGES:
            raise _refuse("the group's history is too long")
        self.changes += added
        self.state = state
        if self.pending is not None and self.pending.version <= state.version:
            if self.hash_at(self.pending.version) != self.pending.hash:
                self.forked = self.pending
            self.pending = None
        return events

    def note_head(self, version: int, digest: bytes, by: str) -> str:
        """Compare a (version, hash) a member named with this log: ``same``,
        ``behind`` (theirs is older and on this chain), ``ahead`` (newer: kept as
        ``pending``) or ``forked`` (a different history, kept as ``forked``)."""
        if version <= self.state.version:
            if self.hash_at(version) != digest:
                self.forked = Pending(version, digest, by)
                return "forked"
            return "same" if version == self.state.version else "behind"
        if self.pending is None or version > self.pending.version:
            self.pending = Pending(version, digest, by)
        return "ahead"

    def to_bytes(self) -> bytes:
        w = Writer().u8(FORMAT).fixed(self.master_key, MASTER_KEY_LEN).u32(len(self.changes))
        for change in self.changes:
            w.var(change.to_bytes(), MAX_CHANGE)
        for p in (self.pending, self.forked):
            w.bool(p is not None)
            if p is not None:
                w.u32(p.version).fixed(p.hash, HASH_LEN).text(p.by, MAX_ACCOUNT)
        return w.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> GroupLog:
        """A stored log (from this device's own encrypted profile): the chain is
        replayed, signatures are not checked again."""
        r = Reader(data)
        if r.u8() != FORMAT:
            raise MalformedMessage("unknown group log format")
        key, count = r.fixed(MASTER_KEY_LEN), r.u32()
        if not 0 < count <= MAX_CHANGES:
            raise MalformedMessage("stored group log exceeds its bounds")
        changes = [GroupChange.from_bytes(r.var(MAX_CHANGE)) for _ in range(count)]
        marks: list[Pending | None] = []
        for _ in range(2):
            marks.append(
                Pending(r.u32(), r.fixed(HASH_LEN), r.text(MAX_ACCOUNT)) if r.bool() else None
            )
        r.end()
        state: GroupState | None = None
        for change in changes:
            state, _ = apply(state, change, verify=False)
        assert state is not None
        log = cls(key, changes, state)
        log.pending, log.forked = marks
        return log


def genesis(
    identity: IdentityKeyPair,
    group_id: bytes,
    actor: str,
    phone: str,
    name: str,
    members: Sequence[Add],
) -> GroupChange:
    """A new group's first change: the creator adds itself (first admin), then the others."""
    actions: list[Action] = [Add(actor, identity.public.to_bytes(), phone), *members]
    if name:
        actions.append(Rename(name))
    change = sign(identity, GroupChange(group_id, 0, ZERO_HASH, actor, tuple(actions)))
    apply(None, change)  # a change this client would refuse is never sent
    return change


def propose(
    identity: IdentityKeyPair, state: GroupState, actor: str, actions: Sequence[Action]
) -> GroupChange:
    """The next change to ``state``, signed; raises ``InvalidGroupChange`` if it is
    not allowed (so the caller can say why before anything is sent)."""
    unsigned = GroupChange(state.group_id, state.version + 1, state.head, actor, tuple(actions))
    change = sign(identity, unsigned)
    apply(state, change)
    return change


def _sealed_ad(group_id: bytes, version: int) -> bytes:
    return _SEALED + Writer().var(group_id, MAX_GROUP_ID).u32(version).to_bytes()


def seal(master_key: bytes, change: GroupChange, rng: Random) -> bytes:
    """The change as the server stores it: AES-256-GCM under the group master key,
    bound to the group and version."""
    nonce = rng(_NONCE)
    ad = _sealed_ad(change.group_id, change.version)
    return nonce + aead_encrypt(master_key, nonce, change.to_bytes(), ad)


def unseal(master_key: bytes, group_id: bytes, version: int, blob: bytes) -> GroupChange:
    """A stored change, opened and decoded; raises ``InvalidGroupChange`` if the server
    serves anything a member did not seal for that place in the history."""
    try:
        plain = aead_decrypt(
            master_key, blob[:_NONCE], blob[_NONCE:], _sealed_ad(group_id, version)
        )
        change = GroupChange.from_bytes(plain)
    except (DecryptionError, MalformedMessage, ValueError) as exc:
        raise _refuse("a stored group change does not open") from exc
    if change.group_id != group_id or change.version != version:
        raise _refuse("a stored group change is out of place")
    return change
