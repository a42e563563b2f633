"""Real clients (``parley.client.messenger.Messenger``) on the nodes of a cluster."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from websockets.asyncio.client import ClientConnection

from parley.client.api import ApiClient
from parley.client.device import Received
from parley.client.messenger import Messenger
from parley.errors import RemoteProtocolError
from tests.e2e.conftest import new_phone

from .harness import Cluster, Node


async def register(cluster: Cluster, node: Node) -> Messenger:
    """A new account whose client talks to ``node`` only."""
    return await Messenger.register(node.url, new_phone(), cluster.code_for, secrets.token_bytes)


async def until(check: Callable[[], bool], within_s: float, what: str | Callable[[], str]) -> None:
    """Wait for ``check``; fail saying ``what`` (a callable: what it says at that time)."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"not within {within_s:.1f} s: {said}")
        await asyncio.sleep(0.02)


class Inbox:
    """One device's push socket, read in the background as a client does: every
    pushed message is decrypted (group changes and sender keys are applied) and
    acknowledged, in order; the socket is never reopened."""

    def __init__(self, messenger: Messenger, ws: ClientConnection) -> None:
        self.messenger = messenger
        self.ws = ws
        self.got: list[Received] = []
        self.arrived: dict[str, float] = {}  # text -> when it was pushed
        self.ids: list[str] = []  # every server id pushed, in order
        self.refused: list[str] = []
        self.live = asyncio.Event()  # the stored backlog has been sent
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame.get("type") == "queue_empty":
                self.live.set()
            if frame.get("type") != "message":
                continue
            self.ids.append(frame["id"])
            try:
                received = self.messenger.state.open(frame)
            except RemoteProtocolError as exc:
                self.refused.append(f"{type(exc).__name__}: {exc}")
            else:
                self.got.append(received)
                if received.content.text:
                    self.arrived.setdefault(received.content.text, time.monotonic())
            await ApiClient.ack(self.ws, [frame["id"]])

    def texts(self) -> Counter[str]:
        return Counter(r.content.text for r in self.got if r.content.text)

    def has(self, *texts: str) -> bool:
        return all(t in self.arrived for t in texts)

    async def wait_for(self, *texts: str, within_s: float = 15.0) -> None:
        await until(
            lambda: self.has(*texts),
            within_s,
            lambda: (
                f"{texts} to reach {self.messenger.account_id} (got "
                f"{sorted(self.texts())}, refused {self.refused})"
            ),
        )


@asynccontextmanager
async def inbox(messenger: Messenger) -> AsyncIterator[Inbox]:
    async with messenger.api.websocket() as ws:
        box = Inbox(messenger, ws)
        await asyncio.wait_for(box.live.wait(), 10)
        try:
            yield box
        finally:
            box.task.cancel()
