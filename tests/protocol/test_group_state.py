"""Signed group state: a hash chain of admin-signed changes no server can make,
reorder or drop unnoticed (protocol/group_state.py), and the sender-key session
that follows it (a roster change rotates; non-members are refused)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.errors import (
    InvalidGroupChange,
    MalformedMessage,
    NotAGroupMember,
    UnknownSenderKey,
)
from parley.protocol import group_state as gs
from parley.protocol.group_state import Add, GroupChange, GroupLog, Remove, Rename, SetAdmin
from parley.protocol.keys import IdentityKeyPair
from parley.protocol.sender_keys import GroupSession, group_from_bytes, group_to_bytes

from .peers import content, seeded

GID = bytes(range(16))
RNG = seeded(11)
KEYS = {name: IdentityKeyPair.generate(RNG) for name in ("alice", "bob", "carol", "dave", "eve")}


def ident(name: str) -> bytes:
    return KEYS[name].public.to_bytes()


def add(name: str) -> Add:
    return Add(name, ident(name), f"+1555000{len(name)}")


def created(*members: str, name: str = "friends") -> tuple[gs.GroupState, GroupChange]:
    change = gs.genesis(KEYS["alice"], GID, "alice", "+15550001", name, [add(m) for m in members])
    state, _ = gs.apply(None, change)
    return state, change


def by(actor: str, state: gs.GroupState, *actions: gs.Action) -> GroupChange:
    """A change signed by ``actor`` whether or not it may make it (what an attacker sends)."""
    unsigned = GroupChange(GID, state.version + 1, state.head, actor, tuple(actions))
    return gs.sign(KEYS[actor], unsigned)


def known(name: str) -> bytes | None:
    return ident(name) if name in KEYS else None


# -- applying changes ----------------------------------------------------------------------------


def test_genesis_makes_the_creator_the_first_admin_and_names_the_group() -> None:
    state, change = created("bob", "carol")
    assert state.version == 0 and state.head == change.hash() and state.name == "friends"
    assert sorted(state.members) == ["alice", "bob", "carol"] and state.admins == ["alice"]
    assert state.members["bob"].identity == ident("bob")
    _, events = gs.apply(None, change)
    assert [(e.kind, e.actor, e.subject) for e in events] == [("created", "alice", "friends")]


def test_every_kind_of_change_and_what_members_are_shown() -> None:
    state, _ = created("bob", "carol")
    steps: list[tuple[tuple[str, gs.Action], tuple[str, str, str]]] = [
        (("alice", Add("dave", ident("dave"), "+1")), ("member_added", "alice", "dave")),
        (("alice", SetAdmin("bob", True)), ("admin_added", "alice", "bob")),
        (("bob", Remove("carol")), ("member_removed", "bob", "carol")),
        (("bob", Rename("book club")), ("renamed", "bob", "book club")),
        (("dave", Remove("dave")), ("left", "dave", "dave")),  # any member may leave
        (("alice", SetAdmin("bob", False)), ("admin_removed", "alice", "bob")),
    ]
    for (actor, action), shown in steps:
        change = gs.propose(KEYS[actor], state, actor, [action])
        state, events = gs.apply(state, change)
        assert [(e.kind, e.actor, e.subject) for e in events] == [shown]
    assert sorted(state.members) == ["alice", "bob"] and state.name == "book club"
    assert state.version == len(steps)


@pytest.mark.parametrize(
    "actor,action,why",
    [
        ("bob", Add("eve", ident("eve")), "only an admin"),  # a member is not an admin
        ("eve", Add("eve", ident("eve")), "not a member"),  # the server's own account
        ("bob", Remove("carol"), "only an admin"),
        ("alice", Add("bob", ident("bob")), "already a member"),
        ("alice", Remove("eve"), "not a member"),
        ("alice", SetAdmin("eve", True), "not a member"),
        ("alice", Remove("alice"), "without an admin"),  # the last admin cannot leave them
    ],
)
def test_changes_nobody_may_make_are_refused(actor: str, action: gs.Action, why: str) -> None:
    state, _ = created("bob", "carol")
    with pytest.raises(InvalidGroupChange, match=why):
        gs.apply(state, by(actor, state, action))


def test_a_ghost_member_cannot_be_made_without_an_admins_signature() -> None:
    """The server (or anyone without alice's identity key) adding a ghost: Rösler,
    Mainka, Schwenk 2018 against WhatsApp, Signal and Threema."""
    state, _ = created("bob")
    genuine = gs.propose(KEYS["alice"], state, "alice", [Add("dave", ident("dave"))])
    # signed by eve's key but claiming alice made it
    forged = dataclasses.replace(genuine, actions=(Add("eve", ident("eve")),))
    forged = dataclasses.replace(forged, signature=KEYS["eve"].signing.sign(forged.signed_part()))
    with pytest.raises(InvalidGroupChange, match="signature"):
        gs.apply(state, forged)
    # alice's signature moved onto other actions
    moved = dataclasses.replace(genuine, actions=(Add("eve", ident("eve")),))
    with pytest.raises(InvalidGroupChange, match="signature"):
        gs.apply(state, moved)
    assert gs.apply(state, genuine)[0].members.keys() == {"alice", "bob", "dave"}


def test_changes_cannot_be_reordered_replayed_or_moved_to_another_group() -> None:
    state0, _ = created("bob", "carol")
    one = gs.propose(KEYS["alice"], state0, "alice", [Remove("carol")])
    state1, _ = gs.apply(state0, one)
    two = gs.propose(KEYS["alice"], state1, "alice", [Add("dave", ident("dave"))])
    with pytest.raises(InvalidGroupChange, match="does not follow"):
        gs.apply(state0, two)  # skipping version 1 (a withheld removal)
    with pytest.raises(InvalidGroupChange, match="does not follow"):
        gs.apply(state1, one)  # a replay
    other_state, _ = gs.apply(
        None, gs.genesis(KEYS["alice"], b"x" * 16, "alice", "", "", [add("bob"), add("carol")])
    )
    with pytest.raises(InvalidGroupChange, match="another group"):
        gs.apply(other_state, one)
    # the same version after a different history: prev_hash breaks
    fork = gs.propose(KEYS["alice"], state0, "alice", [Rename("other")])
    forked, _ = gs.apply(state0, fork)
    with pytest.raises(InvalidGroupChange, match="history"):
        gs.apply(forked, dataclasses.replace(two, version=2))


def test_genesis_must_be_by_its_creator_who_adds_itself_first() -> None:
    change = gs.genesis(KEYS["alice"], GID, "alice", "", "", [add("bob")])
    impostor = gs.sign(
        KEYS["eve"],
        GroupChange(GID, 0, gs.ZERO_HASH, "eve", (add("bob"), Add("eve", ident("eve")))),
    )
    with pytest.raises(InvalidGroupChange, match="add itself first"):
        gs.apply(None, impostor)
    with pytest.raises(InvalidGroupChange, match="version 0"):
        gs.apply(None, dataclasses.replace(change, version=1))


# -- a member's log ------------------------------------------------------------------------------


def _log(*members: str) -> GroupLog:
    _, change = created(*members)
    log, _ = GroupLog.start(bytes(32), [change], known)
    return log


def test_a_log_extends_with_what_it_lacks_and_refuses_another_history() -> None:
    log = _log("bob", "carol")
    c1 = gs.propose(KEYS["alice"], log.state, "alice", [Remove("carol")])
    assert [e.kind for e in log.extend([*log.changes, c1], known)] == ["member_removed"]
    assert log.extend([*log.changes], known) == []  # already had it all: nothing new
    other = gs.propose(KEYS["alice"], gs.apply(None, log.changes[0])[0], "alice", [Rename("x")])
    with pytest.raises(InvalidGroupChange, match="different change"):
        log.extend([log.changes[0], other], known)
    assert log.version == 1 and "carol" not in log.state.members


def test_an_actor_must_sign_with_the_identity_this_device_verified() -> None:
    state, genesis = created("bob")
    c1 = gs.propose(KEYS["alice"], state, "alice", [Add("dave", ident("dave"))])
    with pytest.raises(InvalidGroupChange, match="identity"):
        GroupLog.start(bytes(32), [genesis, c1], lambda a: ident("eve") if a == "alice" else None)
    GroupLog.start(bytes(32), [genesis, c1], known)


def test_named_heads_show_a_newer_state_or_a_fork() -> None:
    log = _log("bob")
    head0 = log.state.head
    assert log.note_head(0, head0, "bob") == "same"
    c1 = gs.propose(KEYS["alice"], log.state, "alice", [Add("carol", ident("carol"))])
    assert log.note_head(1, c1.hash(), "alice") == "ahead"
    assert log.pending == gs.Pending(1, c1.hash(), "alice")
    log.extend([c1], known)
    after = log  # a fresh name: the checks above narrowed log.pending
    assert after.pending is None and after.forked is None
    assert log.note_head(0, head0, "bob") == "behind"
    assert log.note_head(1, b"\x01" * 32, "bob") == "forked"
    assert log.forked == gs.Pending(1, b"\x01" * 32, "bob")


def test_a_pending_state_that_turns_out_different_is_a_fork() -> None:
    log = _log("bob")
    log.note_head(1, b"\x02" * 32, "bob")
    log.extend([gs.propose(KEYS["alice"], log.state, "alice", [Rename("n")])], known)
    assert log.pending is None and log.forked is not None


def test_a_log_survives_serialization() -> None:
    log = _log("bob", "carol")
    log.extend([gs.propose(KEYS["alice"], log.state, "alice", [Remove("bob")])], known)
    log.note_head(5, b"\x03" * 32, "carol")
    again = GroupLog.from_bytes(log.to_bytes())
    assert again.to_bytes() == log.to_bytes() and again.state == log.state
    assert again.pending == log.pending


def test_sealed_changes_open_only_in_their_place_and_under_the_key() -> None:
    log = _log("bob")
    sealed = gs.seal(log.master_key, log.changes[0], RNG)
    assert gs.unseal(log.master_key, GID, 0, sealed) == log.changes[0]
    for key, gid, version, blob in [
        (b"\x09" * 32, GID, 0, sealed),
        (log.master_key, GID, 1, sealed),  # moved to another version
        (log.master_key, b"y" * 16, 0, sealed),  # moved to another group
        (log.master_key, GID, 0, sealed[:-1] + bytes([sealed[-1] ^ 1])),
        (log.master_key, GID, 0, b""),
    ]:
        with pytest.raises(InvalidGroupChange):
            gs.unseal(key, gid, version, blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_malformed(data: bytes) -> None:
    try:
        change = GroupChange.from_bytes(data)
    except MalformedMessage:
        return
    assert change.to_bytes() == data


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(0, 255))
def test_a_flipped_bit_never_passes_as_a_change(position: int, bit: int) -> None:
    state, _ = created("bob", "carol")
    change = gs.propose(KEYS["alice"], state, "alice", [Add("dave", ident("dave"), "+1")])
    data = bytearray(change.to_bytes())
    data[position % len(data)] ^= 1 << (bit % 8)
    try:
        mutated = GroupChange.from_bytes(bytes(data))
    except MalformedMessage:
        return
    with pytest.raises(InvalidGroupChange):
        gs.apply(state, mutated)


# -- the sender-key session follows the signed roster ----------------------------------------------


def _session(me: str, log: GroupLog) -> GroupSession:
    session = GroupSession(GID, me, RNG)
    session.log = log
    session.sync_roster(RNG)
    return session


def test_sender_keys_only_from_the_roster_and_a_removal_rotates() -> None:
    log = _log("bob", "carol")
    bob, alice = _session("bob", log), _session("alice", _log("bob", "carol"))
    ghost = GroupSession(GID, "eve", RNG)
    with pytest.raises(NotAGroupMember):
        bob.process_distribution("eve", ghost.outbound.distribution())
    with pytest.raises(NotAGroupMember):
        bob.decrypt("eve", ghost.encrypt(content("let me in", RNG)))
    carol = GroupSession(GID, "carol", RNG)
    bob.process_distribution("carol", carol.outbound.distribution())
    before = bob.outbound.distribution_id
    bob.sent_to |= {"alice", "carol"}
    log.extend([gs.propose(KEYS["alice"], log.state, "alice", [Remove("carol")])], known)
    assert bob.sync_roster(RNG) == ["carol"]
    assert bob.outbound.distribution_id != before and bob.sent_to == set()
    assert "carol" not in bob.inbound
    with pytest.raises(NotAGroupMember):  # a removed member re-adding itself with its key
        bob.process_distribution("carol", carol.outbound.distribution())
    assert alice.members == {"bob", "carol"}


def test_a_members_unknown_key_after_a_known_one_is_noted_as_missed() -> None:
    bob, alice = _session("bob", _log("bob")), _session("alice", _log("bob"))
    bob.process_distribution("alice", alice.outbound.distribution())
    assert bob.decrypt("alice", alice.encrypt(content("one", RNG))).text == "one"
    alice.rotate(RNG)  # as after a removal bob never heard of
    with pytest.raises(UnknownSenderKey):
        bob.decrypt("alice", alice.encrypt(content("two", RNG)))
    assert bob.missed == {"alice": alice.outbound.distribution_id}
    bob.process_distribution("alice", alice.outbound.distribution())
    assert bob.missed == {}


def test_group_sessions_migrate_from_before_signed_state() -> None:
    session = GroupSession(GID, "bob", RNG)
    session.add_members(["alice"])
    v2 = group_to_bytes(session)
    tail = 1 + 4 + 4  # no log, no missed keys, nobody has our key
    v1 = b"\x01" + v2[1:-tail]
    old = group_from_bytes(v1)
    assert old.log is None and old.members == {"alice"} and old.sent_to == {"alice"}
    with_log = _session("bob", _log("bob"))
    with_log.missed["alice"] = b"\x07" * 16
    again = group_from_bytes(group_to_bytes(with_log))
    assert again.log is not None and again.log.state == with_log.log.state  # type: ignore[union-attr]
    assert again.missed == with_log.missed and group_to_bytes(again) == group_to_bytes(with_log)
