"""Groups with sender keys: sizes 2..50, joins, removals, rotation, replays, forgeries."""

from __future__ import annotations

import dataclasses
import random

import pytest

from parley.errors import (
    DuplicateMessage,
    FrankingError,
    InvalidSignature,
    UnknownSenderKey,
)
from parley.protocol import franking
from parley.protocol.sender_keys import GroupSession
from parley.protocol.wire import Content, SenderKeyDistribution, SenderKeyMessage

from .peers import content, seeded

GROUP_ID = b"group-0123456789"


class Group:
    """n members, each with its own GroupSession; distributions delivered in memory
    (in the product they travel over the 1:1 sessions tested in test_ratchet)."""

    def __init__(self, names: list[str], seed: int = 7) -> None:
        self.rng = seeded(seed)
        self.members: dict[str, GroupSession] = {}
        for name in names:
            self.join(name)

    def _deliver(self, sender: str, out: dict[str, SenderKeyDistribution]) -> None:
        for to, skd in out.items():
            # round-trip through the wire format as it would travel
            self.members[to].process_distribution(
                sender, SenderKeyDistribution.from_bytes(skd.to_bytes())
            )

    def join(self, name: str) -> None:
        new = GroupSession(GROUP_ID, name, self.rng)
        existing = list(self.members)
        self.members[name] = new
        new.add_members(existing)
        for other in existing:
            self.members[other].add_members([name])
            self._deliver(other, {name: self.members[other].outbound.distribution()})
        self._deliver(name, {m: new.outbound.distribution() for m in existing})

    def remove(self, name: str) -> GroupSession:
        gone = self.members.pop(name)
        for member, session in self.members.items():
            self._deliver(member, session.remove_member(name, self.rng))
        return gone

    def send(self, sender: str, text: str) -> SenderKeyMessage:
        msg = self.members[sender].encrypt(content(text, self.rng))
        return SenderKeyMessage.from_bytes(msg.to_bytes())


@pytest.mark.parametrize("size", [2, 3, 10, 50])
def test_everyone_reads_everyone(size: int) -> None:
    names = [f"m{i}" for i in range(size)]
    group = Group(names)
    for sender in random.Random(size).sample(names, min(size, 5)):
        msg = group.send(sender, f"from {sender}")
        for name, session in group.members.items():
            if name != sender:
                assert session.decrypt(sender, msg).text == f"from {sender}"


def test_one_ciphertext_serves_the_whole_group() -> None:
    group = Group(["a", "b", "c", "d"])
    msg = group.send("a", "once")
    got = {n: group.members[n].decrypt("a", msg).text for n in ("b", "c", "d")}
    assert set(got.values()) == {"once"}


def test_removed_member_cannot_read_later_messages() -> None:
    group = Group(["a", "b", "c"])
    before = group.send("a", "before removal")
    assert group.members["c"].decrypt("a", before).text == "before removal"
    removed = group.remove("c")
    for sender in ("a", "b"):
        after = group.send(sender, "after removal")
        other = "b" if sender == "a" else "a"
        assert group.members[other].decrypt(sender, after).text == "after removal"
        with pytest.raises(UnknownSenderKey):
            removed.decrypt(sender, after)
        # Even if the removed member still held every old chain, the new key id is unknown.
        assert after.distribution_id not in {k for keys in removed.inbound.values() for k in keys}


def test_joiner_reads_from_join_on_but_not_before() -> None:
    group = Group(["a", "b"])
    old = group.send("a", "old")
    group.join("c")
    new = group.send("a", "new")
    assert group.members["c"].decrypt("a", new).text == "new"
    with pytest.raises(DuplicateMessage):  # behind the iteration it was given
        group.members["c"].decrypt("a", old)
    assert group.members["a"].decrypt("c", group.send("c", "hi")).text == "hi"


def test_churn_of_joins_and_removals() -> None:
    rng = random.Random(3)
    group = Group([f"m{i}" for i in range(6)])
    removed: dict[str, GroupSession] = {}
    for step in range(12):
        if rng.random() < 0.5 and len(group.members) > 2:
            name = rng.choice(sorted(group.members))
            removed[name] = group.remove(name)
        else:
            group.join(f"n{step}")
        sender = rng.choice(sorted(group.members))
        msg = group.send(sender, f"step {step}")
        for name, session in group.members.items():
            if name != sender:
                assert session.decrypt(sender, msg).text == f"step {step}"
        for name, gone in removed.items():
            if name not in group.members:
                with pytest.raises(UnknownSenderKey):
                    gone.decrypt(sender, msg)


def test_messages_in_flight_across_a_rotation_still_open() -> None:
    group = Group(["a", "b", "c"])
    in_flight = group.send("a", "sent before rotation")
    group.remove("c")
    assert group.members["b"].decrypt("a", in_flight).text == "sent before rotation"


def test_replay_is_refused_and_reordering_is_tolerated() -> None:
    group = Group(["a", "b"])
    msgs = [group.send("a", str(i)) for i in range(5)]
    b = group.members["b"]
    for i in (3, 0, 4, 1, 2):
        assert b.decrypt("a", msgs[i]).text == str(i)
    for m in msgs:
        with pytest.raises(DuplicateMessage):
            b.decrypt("a", m)
    # a re-delivered distribution must not rewind the chain
    b.process_distribution("a", group.members["a"].outbound.distribution())
    with pytest.raises(DuplicateMessage):
        b.decrypt("a", msgs[0])


def test_a_member_cannot_forge_another_members_messages() -> None:
    group = Group(["a", "b", "c"])
    genuine = group.send("a", "from a")
    # c knows a's chain key (it can decrypt) but not a's signing key.
    forged = dataclasses.replace(genuine, ciphertext=genuine.ciphertext[:-1] + b"\x00")
    with pytest.raises(InvalidSignature):
        group.members["b"].decrypt("a", forged)
    assert group.members["b"].decrypt("a", genuine).text == "from a"
    # Claiming c's message came from a fails too: a's key id differs.
    from_c = group.send("c", "from c")
    with pytest.raises(UnknownSenderKey):
        group.members["b"].decrypt("a", from_c)


def test_group_commitment_must_match_the_content() -> None:
    group = Group(["a", "b"])
    a = group.members["a"]
    shown = Content(b"k" * 32, 1, "shown")
    claimed = Content(b"k" * 32, 1, "claimed")
    lie = franking.commit(claimed, "a", a.conversation)
    msg = a.outbound.encrypt(shown.to_bytes(), lie)
    with pytest.raises(FrankingError):
        group.members["b"].decrypt("a", msg)


def test_distribution_from_a_non_member_or_other_group_is_refused() -> None:
    group = Group(["a", "b"])
    stranger = GroupSession(GROUP_ID, "z", group.rng)
    with pytest.raises(UnknownSenderKey):
        group.members["a"].process_distribution("z", stranger.outbound.distribution())
    other = GroupSession(b"other-group", "b", group.rng)
    from parley.errors import MalformedMessage

    with pytest.raises(MalformedMessage):
        group.members["a"].process_distribution("b", other.outbound.distribution())


def test_group_state_survives_serialization() -> None:
    from parley.protocol.sender_keys import group_from_bytes, group_to_bytes

    group = Group(["a", "b", "c"])
    early = [group.send("a", f"m{i}") for i in range(3)]
    group.members["b"].decrypt("a", early[2])  # leaves skipped keys for m0, m1
    for name in list(group.members):
        group.members[name] = group_from_bytes(group_to_bytes(group.members[name]))
    assert group.members["b"].decrypt("a", early[0]).text == "m0"
    msg = group.send("b", "after reload")
    assert group.members["c"].decrypt("b", msg).text == "after reload"
    assert group_to_bytes(group_from_bytes(group_to_bytes(group.members["a"]))) == group_to_bytes(
        group.members["a"]
    )
