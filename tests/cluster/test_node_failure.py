"""A node killed with SIGKILL under load loses nothing that was acknowledged, and a
send retried elsewhere with the same client id is stored once."""

from __future__ import annotations

import asyncio
import signal

import pytest

from .harness import Cluster
from .people import until
from .raw import RawDevice, delivered_twice, describe_missing, make_pairs, missing

pytestmark = pytest.mark.cluster

PAIRS = 6
PER_SENDER = 40
IN_FLIGHT = 4


async def test_kill_9_of_a_node_under_load_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    pairs = await make_pairs(cluster.nodes, cluster.code_for, PAIRS)
    senders = [s for s, _ in pairs]
    receivers = [r for _, r in pairs]
    victim = cluster.b
    stop = asyncio.Event()
    holders = [asyncio.create_task(r.stay_connected(stop)) for r in receivers]
    acked: set[tuple[int, int]] = set()
    try:
        await until(lambda: all(r.live for r in receivers), 10, "receivers connected")
        for s in senders:
            await s.connect()
        on_victim = [d for d in senders + receivers if d.links[0].node is victim]
        assert len(on_victim) >= 4  # 2 senders and 2 receivers hold sockets on node B

        async def sender(i: int, s: RawDevice, to: RawDevice) -> None:
            slots = asyncio.Semaphore(IN_FLIGHT)

            async def one(seq: int) -> None:
                async with slots:
                    await s.send(to.account_id, i, seq)
                    acked.add((i, seq))

            tasks = []
            for seq in range(PER_SENDER):
                tasks.append(asyncio.create_task(one(seq)))
                await asyncio.sleep(0.02)  # spread the load over a few seconds
            await asyncio.gather(*tasks)

        load = asyncio.gather(*[sender(i, s, r) for i, (s, r) in enumerate(pairs)])
        await until(lambda: len(acked) >= PAIRS * PER_SENDER // 3, 60, "a third of the sends")
        victim.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        await load  # every send answered 200 in the end, retried elsewhere when it had to
        assert victim.proc is not None and victim.proc.wait(10) == -signal.SIGKILL
        assert len(acked) == PAIRS * PER_SENDER

        await until(lambda: not missing(pairs, acked), 30, lambda: describe_missing(pairs, acked))
        await asyncio.sleep(1.0)  # a message stored twice would be pushed by now
        assert not missing(pairs, acked)
        for r in receivers:
            assert delivered_twice(r) == {}, f"{r.name} got one send under two server ids"
            assert set(r.arrived) <= acked  # nothing that was never sent
        # the clients of the dead node moved to the others, and retried what was in flight
        for d in on_victim:
            assert len(d.links) >= 2 and all(link.node is not victim for link in d.links[1:]), (
                f"{d.name} did not reconnect elsewhere"
            )
        victim_senders = [s for s in senders if s in on_victim]
        assert sum(len(s.resent) for s in victim_senders) > 0, (
            "no send was in flight on the killed node: the test did not exercise retries"
        )
    finally:
        stop.set()
        for t in holders:
            t.cancel()
        for d in senders + receivers:
            await d.close()
