"""The pieces a cluster rests on, each against a real store: the fenced lease, key-
directory epochs followed by another node, and token buckets shared in Redis.
(tests/cluster runs whole nodes.)"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from parley.crypto.primitives import SigningKey
from parley.errors import NotFound, RateLimited
from parley.server.handlers.kt import KtHandler
from parley.server.handlers.ratelimit import RateLimiter
from parley.server.handlers.transparency import TransparencyHandler
from parley.server.storage import db
from parley.server.storage.accounts import AccountStore
from parley.server.storage.buckets import MAX_BATCH, RedisBuckets
from parley.server.storage.kt import KtStore
from parley.server.storage.leases import Lease, LeaseLost
from parley.server.storage.transparency import TransparencyStore
from parley.translog import directory as kt
from parley.translog.directory import Proof

REDIS_URL = os.environ.get("PARLEY_TEST_REDIS", "redis://127.0.0.1:6379/7")


class Clock:
    def __init__(self) -> None:
        self.ms = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.ms


def _node(engine: object, key: SigningKey, lease: Lease) -> KtHandler:
    log = TransparencyHandler(TransparencyStore(engine), key, Clock())  # type: ignore[arg-type]
    return KtHandler(KtStore(engine), log, Clock(), lease)  # type: ignore[arg-type]


def _proves(answer: dict[str, object], account: str) -> None:
    root = base64.b64decode(str(answer["root"]))
    proof = Proof.from_bytes(base64.b64decode(str(answer["proof"])))
    ids = answer["devices"]
    assert isinstance(ids, list)
    value = kt.value_hash(
        account,
        int(str(answer["version"])),
        int(str(answer["version_epoch"])),
        base64.b64decode(str(answer["identity_key"])),
        ids,
        base64.b64decode(str(answer["device_list"])),
        base64.b64decode(str(answer["prev"])),
    )
    kt.verify(root, kt.index_of(account), value, proof)


async def test_a_follower_answers_from_the_leaders_epochs_and_a_stale_leader_is_fenced(
    tmp_path: Path,
) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'kt.db'}")
    await db.migrate(engine)
    key = SigningKey.generate(secrets.token_bytes)
    a_clock, b_clock = Clock(), Clock()
    lease_a = Lease(engine, "leader", "a", a_clock)
    lease_b = Lease(engine, "leader", "b", b_clock)
    assert await lease_a.renew()
    assert not await lease_b.renew()  # one holder at a time
    leader, follower = _node(engine, key, lease_a), _node(engine, key, lease_b)
    accounts = AccountStore(engine)
    ids = []
    for i in range(3):
        account, _ = await accounts.register(
            f"+1415555{i:04d}", secrets.token_bytes(32), b"h" * 32, "2026-11-27", 1
        )
        ids.append(account)
    first = await leader.publish()
    assert first is not None and first["changed"] == 3
    assert await follower.publish() is None  # off the lease: it only follows
    answer = await follower.lookup(ids[0])
    assert answer["epoch"] == first["epoch"]
    _proves(answer, ids[0])

    # A deletion removes a leaf: the follower rebuilds and still proves the new root.
    await accounts.delete_account(ids[1])
    second = await leader.publish()
    assert second is not None and second["epoch"] == first["epoch"] + 1
    answer = await follower.lookup(ids[2])
    assert answer["epoch"] == second["epoch"]
    assert bytes.fromhex(str(second["root"])) == base64.b64decode(str(answer["root"]))
    _proves(answer, ids[2])
    with pytest.raises(NotFound):
        await follower.lookup(ids[1])

    # Node a pauses past its lease (its clock stands still); b takes over. a still
    # believes it leads, but its epoch never commits: the fence refuses it.
    b_clock.ms += 30_000
    assert await lease_b.renew()
    await accounts.register("+14155559999", secrets.token_bytes(32), b"h" * 32, "2026-11-27", 1)
    with pytest.raises(LeaseLost):
        await leader.publish()
    third = await follower.publish()
    assert third is not None and third["epoch"] == second["epoch"] + 1
    log = TransparencyHandler(TransparencyStore(engine), key, Clock())
    epochs = [
        e["body"]["epoch"]
        for e in await log.entries(0, await log.size())
        if e["kind"] == "kt_epoch"
    ]
    assert epochs == sorted(set(epochs))  # each epoch once, in order
    await engine.dispose()


def _redis_up() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", 6379)) == 0


@pytest.mark.skipif(not _redis_up(), reason="Redis is not running on 127.0.0.1:6379")
async def test_buckets_in_redis_are_one_limit_for_every_node() -> None:
    pepper = secrets.token_bytes(32)
    nodes = [Redis.from_url(REDIS_URL, decode_responses=True) for _ in range(2)]
    limits = [RedisBuckets(r, pepper, RateLimiter(time.monotonic)) for r in nodes]
    key = secrets.token_hex(8)

    async def attempt(i: int) -> bool:
        try:
            await limits[i % 2].check("test", key, 5, 0.001)
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(*[attempt(i) for i in range(20)])
    assert sum(results) == 5  # atomic: not 5 per node, not more under concurrency
    stored = await nodes[0].keys("parley:rl:test:*")
    assert stored and all(key not in k for k in stored)  # the key is hashed
    for r in nodes:
        await r.aclose()


def _count_calls(limits: RedisBuckets) -> list[int]:
    """The number of buckets in each script call ``limits`` makes from now on."""
    calls: list[int] = []
    script = limits._script

    async def counted(*, keys: list[str], args: list[str]) -> object:
        calls.append(len(keys))
        return await script(keys=keys, args=args)

    limits._script = counted
    return calls


@pytest.mark.skipif(not _redis_up(), reason="Redis is not running on 127.0.0.1:6379")
async def test_checks_made_together_share_one_round_trip() -> None:
    """A turn's checks go to Redis as one script call; each bucket still gives exactly
    its tokens, and a batch above MAX_BATCH is split, not truncated."""
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    limits = RedisBuckets(redis, secrets.token_bytes(32), RateLimiter(time.monotonic))
    calls = _count_calls(limits)
    a, b = secrets.token_hex(8), secrets.token_hex(8)

    async def attempt(key: str, capacity: int) -> bool:
        try:
            await limits.check("test", key, capacity, 0.001)
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(
        *[attempt(a, 5) for _ in range(20)], *[attempt(b, 3) for _ in range(10)]
    )
    assert sum(results[:20]) == 5 and sum(results[20:]) == 3
    assert calls == [30]
    calls.clear()
    await redis.script_flush()  # as after a Redis restart: the script is loaded again
    c = secrets.token_hex(8)
    results = await asyncio.gather(*[attempt(c, 100) for _ in range(MAX_BATCH + 44)])
    assert sum(results) == 100
    assert calls == [MAX_BATCH, 44]
    await redis.aclose()


async def test_a_hung_redis_costs_a_check_one_failed_call_not_two() -> None:
    """Checks that arrive while the call out is hanging share its failure and fall
    back to this node's buckets at once, rather than each batch waiting in turn."""

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = Redis.from_url(
        f"redis://127.0.0.1:{port}/0", socket_timeout=0.3, socket_connect_timeout=0.3
    )
    limits = RedisBuckets(redis, b"p" * 32, RateLimiter(time.monotonic))
    calls = _count_calls(limits)
    first = asyncio.create_task(limits.check("test", "a", 2, 0.001))
    await asyncio.sleep(0.05)  # its call is out, and hangs
    await asyncio.gather(first, *[limits.check("test", k, 2, 0.001) for k in "bcd"])
    assert calls == [1]  # the three that came later never waited for a call of their own
    with pytest.raises(RateLimited):  # they were counted here: this node's buckets
        for _ in range(2):
            await limits.check("test", "b", 2, 0.001)
    server.close()
    await redis.aclose()


async def test_buckets_fall_back_to_this_nodes_limits_without_redis() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    limits = RedisBuckets(redis, b"p" * 32, RateLimiter(time.monotonic))
    await limits.check("test", "k", 2, 0.001)
    await limits.check("test", "k", 2, 0.001)
    with pytest.raises(RateLimited):
        await limits.check("test", "k", 2, 0.001)
    await redis.aclose()
