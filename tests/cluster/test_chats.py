"""1:1 and group chats between devices connected to different nodes, with the real client."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from .harness import Cluster
from .people import inbox, register

pytestmark = pytest.mark.cluster

REAL_TIME_S = 2.0


async def test_direct_and_group_chats_between_three_nodes(cluster: Cluster) -> None:
    alice = await register(cluster, cluster.a)
    bob = await register(cluster, cluster.b)
    carol = await register(cluster, cluster.c)
    try:
        async with inbox(alice) as to_alice, inbox(bob) as to_bob, inbox(carol) as to_carol:
            # 1:1, committed on one node, pushed live on another (no reconnect: each
            # inbox holds the one socket it opened)
            await alice.send_text(bob.account_id, "hello Bob")  # through node A
            sent = time.monotonic()
            await to_bob.wait_for("hello Bob", within_s=REAL_TIME_S + 8)
            assert to_bob.arrived["hello Bob"] - sent <= REAL_TIME_S, (
                "a message committed on node A reached Bob's socket on node B after "
                f"{to_bob.arrived['hello Bob'] - sent:.2f} s"
            )
            await bob.send_text(alice.account_id, "hi Alice")  # through node B
            sent = time.monotonic()
            await to_alice.wait_for("hi Alice", within_s=REAL_TIME_S + 8)
            assert to_alice.arrived["hi Alice"] - sent <= REAL_TIME_S

            # a group of the three: its signed state and sender keys travel over the
            # 1:1 sessions between nodes, the group messages through the group route
            gid = await alice.create_group([bob.account_id, carol.account_id])
            await alice.send_group(gid, "group: Alice")
            await to_bob.wait_for("group: Alice")
            await to_carol.wait_for("group: Alice")
            await bob.send_group(gid, "group: Bob")
            await carol.send_group(gid, "group: Carol")
            await to_alice.wait_for("group: Bob", "group: Carol")
            await to_bob.wait_for("group: Carol")
            await to_carol.wait_for("group: Bob")
            await carol.send_text(alice.account_id, "a private word from C")
            await to_alice.wait_for("a private word from C")
            await asyncio.sleep(1.0)  # time for a duplicate push to show up

            assert to_alice.texts() == Counter(
                ["hi Alice", "group: Bob", "group: Carol", "a private word from C"]
            )
            assert to_bob.texts() == Counter(["hello Bob", "group: Alice", "group: Carol"])
            assert to_carol.texts() == Counter(["group: Alice", "group: Bob"])
            for box in (to_alice, to_bob, to_carol):
                assert box.refused == []
                assert len(box.ids) == len(set(box.ids)), "a message was pushed twice"
                for r in box.got:
                    if r.content.text.startswith("group: "):
                        assert r.group == gid
            senders = {
                r.content.text: r.sender for b in (to_alice, to_bob, to_carol) for r in b.got
            }
            assert senders["group: Alice"] == alice.account_id
            assert senders["group: Bob"] == bob.account_id
            assert senders["group: Carol"] == carol.account_id
    finally:
        for m in (alice, bob, carol):
            await m.api.close()
