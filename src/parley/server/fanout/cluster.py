"""The fan-out of a cluster node: this process's sessions plus signals over Redis.

Theory of operation (after Signal's server). PostgreSQL is the queue of
record; Redis carries only signals, never a message:

- *presence*: ``parley:p:TAG`` names the node holding a device's socket
  (TAG is a keyed BLAKE2b of the device under the server pepper, so Redis
  holds no account id at rest), with an expiry refreshed while it is held;
- *messages available*: after a commit, devices connected elsewhere get a
  signal on their node's channel (``parley:n:NODE``) and that node reads them
  from the database;
- *closes and changes* on the broadcast channel (``parley:all``): a device
  removed, an account's devices or credentials changed (caches), standing
  changed (every node reloads it and closes a banned account's sockets), the
  key directory changed; a replaced connection is closed on its node.

Losing Redis loses no message. Signals for a commit are sent before its
senders are answered, and a duplicate send signals its recipients again (the
first attempt may have committed on a node that died before signalling).
While the subscription is down every local session re-reads its queue each
second and account caches are bypassed (a revocation on another node must not
be missed); when it returns presence is re-registered first, every session
reads its queue once more, and a *resync* tells every other node to do the
same (this node's signals may have been lost meanwhile, as may any single
signal that failed, which also triggers a resync).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from parley.server.fanout.local import (
    CLOSE_REPLACED,
    LocalFanout,
    Subscriber,
    by_device,
)
from parley.server.storage.queue import QueuedMessage

log = logging.getLogger(__name__)

ALL = "parley:all"
PRESENCE_TTL_S = 90
PRESENCE_REFRESH_S = 30
POLL_S = 1.0
SIGNAL_TIMEOUT_S = 1.0
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
Failure = (RedisError, OSError)


def _node_channel(node: str) -> str:
    return f"parley:n:{node}"


class ClusterFanout(LocalFanout):
    def __init__(self, redis: Redis, pepper: bytes, node: str) -> None:
        super().__init__()
        self._redis = redis
        self._pepper = pepper[:64]
        self.node = node
        self.up = False
        self._missed = False  # a signal was lost: tell every node to re-read its queues
        self._tasks: set[asyncio.Task[Any]] = set()
        self._release_script: Any = redis.register_script(_RELEASE)
        # Wired by the composition root.
        self.on_account_changed: Callable[[str], None] = lambda _a: None
        self.on_standing: Callable[[], None] = lambda: None
        self.on_kt: Callable[[], None] = lambda: None
        self.on_signals: Callable[[bool], None] = lambda _up: None

    # -- this node's sessions -------------------------------------------------------------

    def _presence(self, owner: tuple[str, int]) -> str:
        name = f"{owner[0]}.{owner[1]}".encode()
        return "parley:p:" + hashlib.blake2b(name, key=self._pepper, digest_size=16).hexdigest()

    async def register(self, session: Subscriber) -> None:
        """Presence is set before the session's first read of its queue: a commit
        after this sees it and signals; one before is in that read."""
        await super().register(session)
        try:
            old = await self._redis.set(
                self._presence(session.owner), self.node, ex=PRESENCE_TTL_S, get=True
            )
        except Failure:
            return  # signals are down: the session polls until they return
        if old is not None and str(old) != self.node:
            a, d = session.owner
            self._publish(
                _node_channel(str(old)), {"t": "close", "a": a, "d": d, "at": session.started}
            )

    def unregister(self, session: Subscriber) -> None:
        held = self.sessions.get(session.owner) is session
        super().unregister(session)
        if held:
            self._spawn(self._release(session.owner))

    async def _release(self, owner: tuple[str, int]) -> None:
        with contextlib.suppress(*Failure):
            await self._release_script(keys=[self._presence(owner)], args=[self.node])

    # -- outgoing signals --------------------------------------------------------------------

    def deliver(
        self, rows: list[QueuedMessage], again: list[tuple[str, int]]
    ) -> Awaitable[None] | None:
        """Awaited by the queue writer before the senders are answered: a node that
        dies after answering has already told the recipients' nodes. A signal that
        could not be sent is made up for by a resync once Redis answers again.
        Returns None when every recipient is connected here (nothing to wait for)."""
        elsewhere: dict[tuple[str, int], None] = {}
        for owner, device_rows in by_device(rows).items():
            session = self.sessions.get(owner)
            if session is not None:
                session.offer(device_rows)
            else:
                elsewhere[owner] = None
        for owner in again:
            session = self.sessions.get(owner)
            if session is not None:
                session.available()
            else:
                elsewhere[owner] = None
        if not elsewhere:
            return None
        if not self.up:
            self._missed = True
            return None
        return self._signal_elsewhere(list(elsewhere))

    async def _signal_elsewhere(self, owners: list[tuple[str, int]]) -> None:
        try:
            await asyncio.wait_for(self._signal(owners, None), SIGNAL_TIMEOUT_S)
        except TimeoutError:
            self._missed = True

    def notify(self, account_id: str, device_id: int, frame: dict[str, Any]) -> None:
        if (account_id, device_id) in self.sessions:
            super().notify(account_id, device_id, frame)
        elif self.up:
            self._spawn(self._signal([(account_id, device_id)], frame))

    async def _signal(self, owners: list[tuple[str, int]], frame: dict[str, Any] | None) -> None:
        """Tell the nodes holding these devices: messages available (or a control frame)."""
        try:
            nodes = await self._redis.mget([self._presence(o) for o in owners])
            found: dict[str, list[list[Any]]] = defaultdict(list)
            for owner, node in zip(owners, nodes, strict=True):
                if node is not None and str(node) != self.node:
                    found[str(node)].append(list(owner))
            if not found:
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for node, devices in found.items():
                    signal = (
                        {"t": "avail", "o": devices}
                        if frame is None
                        else {"t": "ctl", "o": devices, "f": frame}
                    )
                    pipe.publish(_node_channel(node), orjson.dumps(signal))
                await pipe.execute()
        except Failure as exc:
            self._missed = True  # a resync goes out once Redis answers
            log.debug("signal not sent (%s)", type(exc).__name__)

    def disconnect(self, account_id: str, device_id: int) -> None:
        super().disconnect(account_id, device_id)
        self._publish(ALL, {"t": "gone", "a": account_id, "d": device_id})

    def account_changed(self, account_id: str) -> None:
        self._publish(ALL, {"t": "acct", "a": account_id})

    def standing_changed(self) -> None:
        self._publish(ALL, {"t": "standing"})

    def kt_changed(self) -> None:
        self._publish(ALL, {"t": "kt"})

    def _publish(self, channel: str, payload: dict[str, Any]) -> None:
        async def send() -> None:
            try:
                await self._redis.publish(channel, orjson.dumps(payload))
            except Failure:
                self._missed = True  # e.g. a lost "gone": other nodes must drop caches

        self._spawn(send())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- incoming signals ---------------------------------------------------------------------

    def _handle(self, signal: dict[str, Any]) -> None:
        kind = signal.get("t")
        if kind == "avail":
            for a, d in signal["o"]:
                if (session := self.sessions.get((a, d))) is not None:
                    session.available()
        elif kind == "ctl":
            for a, d in signal["o"]:
                super().notify(a, d, signal["f"])
        elif kind == "close":
            session = self.sessions.get((signal["a"], signal["d"]))
            if session is not None and session.started < float(signal["at"]):
                super().unregister(session)
                session.close_soon(CLOSE_REPLACED)
        elif kind == "gone":
            super().disconnect(signal["a"], int(signal["d"]))
            self.on_account_changed(signal["a"])
        elif kind == "acct":
            self.on_account_changed(signal["a"])
        elif kind == "standing":
            self.on_standing()
        elif kind == "kt":
            self.on_kt()
        elif kind == "resync":  # a node lost signals: anything may have been missed
            self.all_available()
            self.on_signals(True)
            self.on_standing()
            self.on_kt()

    async def run(self) -> None:
        """Subscribe, and keep subscribing: the node's signal loop."""
        ticker = asyncio.create_task(self._tick())
        try:
            while True:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(_node_channel(self.node), ALL)
                    await self._came_up()
                    async for message in pubsub.listen():
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            self._handle(orjson.loads(message["data"]))
                except Failure as exc:
                    if self.up:
                        log.warning(
                            "signals lost (%s): sessions poll the database", type(exc).__name__
                        )
                    self._went_down()
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8
                await asyncio.sleep(0.5)
        finally:
            ticker.cancel()

    async def _came_up(self) -> None:
        await self._refresh_presence()
        was_up, self.up = self.up, True
        self.on_signals(True)
        if not was_up:
            log.info("signals up")
        self.all_available()  # whatever was committed while signals were down
        # Whatever this node committed while it could not signal: every node re-reads.
        self._missed = False
        self._publish(ALL, {"t": "resync"})
        self.on_standing()
        self.on_kt()

    def _went_down(self) -> None:
        self.up = False
        self.on_signals(False)

    async def _refresh_presence(self) -> None:
        if not self.sessions:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for owner in list(self.sessions):
                pipe.set(self._presence(owner), self.node, ex=PRESENCE_TTL_S)
            await pipe.execute()

    async def _tick(self) -> None:
        since_refresh = 0.0
        while True:
            await asyncio.sleep(POLL_S)
            if not self.up:
                self.all_available()
                continue
            if self._missed:
                self._missed = False
                self._publish(ALL, {"t": "resync"})
            since_refresh += POLL_S
            if since_refresh >= PRESENCE_REFRESH_S:
                since_refresh = 0.0
                with contextlib.suppress(*Failure):
                    await self._refresh_presence()

    async def close_all(self) -> None:
        for owner in list(self.sessions):
            await self._release(owner)
        await super().close_all()
