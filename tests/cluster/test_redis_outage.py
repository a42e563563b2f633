"""Redis carries only signals: stopped and started again under load, it loses nothing
that was acknowledged, and devices that kept their sockets catch up from the database."""

from __future__ import annotations

import asyncio
import time

import pytest

from .harness import Cluster
from .people import until
from .raw import delivered_twice, describe_missing, make_pairs, missing

pytestmark = pytest.mark.cluster

PAIRS = 6
CATCH_UP_S = 15.0
OUTAGE_S = 3.0
RETURN_S = 0.6  # the nodes resubscribe within about half a second of its return
REAL_TIME_S = 2.0


async def test_redis_restarted_under_load_loses_nothing(cluster: Cluster) -> None:
    pairs = await make_pairs(cluster.nodes, cluster.code_for, PAIRS)
    senders = [s for s, _ in pairs]
    receivers = [r for _, r in pairs]
    stop = asyncio.Event()
    holders = [asyncio.create_task(r.stay_connected(stop)) for r in receivers]
    acked: set[tuple[int, int]] = set()
    sends: list[asyncio.Task[None]] = []
    next_seq = [0] * PAIRS

    def send_one(i: int) -> None:
        seq, next_seq[i] = next_seq[i], next_seq[i] + 1

        async def one() -> None:
            await pairs[i][0].send(pairs[i][1].account_id, i, seq, give_up_s=CATCH_UP_S + 60)
            acked.add((i, seq))

        sends.append(asyncio.create_task(one()))

    try:
        await until(lambda: all(r.live for r in receivers), 10, "receivers connected")
        first_links = {r.name: r.link for r in receivers}
        # before: every message crosses nodes in real time
        for _ in range(5):
            for i in range(PAIRS):
                send_one(i)
        await asyncio.gather(*sends)
        await until(
            lambda: not missing(pairs, acked),
            5,
            lambda: "before the outage: " + describe_missing(pairs, acked),
        )

        # Redis goes away; the senders keep sending through the outage, and on while
        # it comes back and the nodes resubscribe: pair i falls silent at its own
        # moment of the return, so some last message is sent while one node has its
        # signals back and another not yet
        async def keep_sending(stops: list[float]) -> int:
            count = len(sends)
            while time.monotonic() < max(stops):
                for i in range(PAIRS):
                    if time.monotonic() < stops[i]:
                        send_one(i)
                await asyncio.sleep(0.1)
            return len(sends) - count

        await asyncio.to_thread(cluster.redis.stop)
        assert not cluster.redis.ping()
        sent_during = await keep_sending([time.monotonic() + OUTAGE_S] * PAIRS)
        answered_during = len(acked) - 5 * PAIRS
        await asyncio.to_thread(cluster.redis.start)
        back = time.monotonic()
        sent_after = await keep_sending([back + RETURN_S * (i + 1) / PAIRS for i in range(PAIRS)])
        await asyncio.gather(*sends)  # every send is acknowledged in the end (retried if need be)
        assert len(acked) == len(sends)
        assert sent_during >= PAIRS * 10 and sent_after >= PAIRS

        # every acknowledged message reaches its receiver, within a bound
        await until(
            lambda: not missing(pairs, acked),
            max(0.0, back + CATCH_UP_S - time.monotonic()),
            lambda: f"within {CATCH_UP_S} s of Redis returning: " + describe_missing(pairs, acked),
        )
        stayed = [r for r in receivers if r.link is first_links[r.name]]
        for r in stayed:  # caught up on the very socket they held all along
            assert all(t in r.arrived for t in acked if pairs[t[0]][1] is r)

        # and signals flow again: in real time, to the sockets held all along
        settled = set(acked)
        for i in range(PAIRS):
            send_one(i)
        await asyncio.gather(*sends)
        assert len(acked - settled) == PAIRS
        await until(
            lambda: not missing(pairs, acked),
            REAL_TIME_S,
            lambda: "after the return, in real time: " + describe_missing(pairs, acked),
        )
        await asyncio.sleep(0.5)
        for r in receivers:
            assert delivered_twice(r) == {}
        print(
            f"{sent_during} sends during the outage ({answered_during} answered before Redis "
            f"returned), {sent_after} while it came back; "
            f"{len(stayed)}/{PAIRS} receivers kept their socket"
        )
    finally:
        stop.set()
        for t in [*holders, *sends]:
            t.cancel()
        for d in senders + receivers:
            await d.close()
