"""The raw push protocol, as a client speaks it, for load across nodes.

A ``RawDevice`` holds one push socket (``/v1/websocket``) to one node of a cluster;
when the socket is lost it reconnects to the next node that answers. Sends go over
the socket as ``send`` frames answered by ``response`` frames; a send whose answer
never came (the node died, the socket dropped, no answer in time) is sent again
with the SAME ``client_id``, which the server must store once. Pushed ``message``
frames are recorded by server message id (so a redelivery under the same id counts
once, as a client's store would) and acknowledged.

Envelopes are well-formed ratchet envelopes (as ``parley.bench.load`` sends) whose
ciphertext starts with the sending pair and a sequence number, so a receiver knows
which send a delivery belongs to without decrypting.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from parley.client.api import keys_json
from parley.protocol.keys import IdentityKeyPair, KemPreKey, SignedPreKey
from parley.protocol.wire import RatchetMessage
from tests.e2e.conftest import new_phone

from .harness import Node

_TAG = struct.Struct(">II")


def envelope(pair: int, seq: int) -> str:
    payload = _TAG.pack(pair, seq) + secrets.token_bytes(120)
    msg = RatchetMessage(secrets.token_bytes(32), 0, seq, secrets.token_bytes(32), payload)
    return base64.b64encode(msg.to_bytes()).decode()


def tag_of(envelope_b64: str) -> tuple[int, int]:
    """(pair, seq) from an envelope made by ``envelope``."""
    ciphertext = RatchetMessage.from_bytes(base64.b64decode(envelope_b64)).ciphertext
    pair, seq = _TAG.unpack_from(ciphertext)
    return int(pair), int(seq)


@dataclass
class Account:
    account_id: str
    credential: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.credential}"}


async def register(node: Node, phone: str, code_for: Callable[[str], Awaitable[str]]) -> Account:
    """Register one device with well-formed keys over HTTP (no client library)."""
    identity = IdentityKeyPair.generate(secrets.token_bytes)
    keys = keys_json(
        SignedPreKey.generate(identity, 1, secrets.token_bytes),
        KemPreKey.generate(identity, 2, secrets.token_bytes, last_resort=True),
    )
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        r = await http.post("/v1/registration/code", json={"phone": phone})
        assert r.status_code == 202, r.text
        body = {
            "phone": phone,
            "code": await code_for(phone),
            "identity_key": base64.b64encode(identity.public.to_bytes()).decode(),
            "keys": keys,
        }
        r = await http.post("/v1/registration/verify", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
    return Account(str(data["account_id"]), str(data["credential"]))


class LinkLost(Exception):
    """The socket closed before the answer came."""


class Link:
    """One open push socket to one node, and the task reading it."""

    def __init__(
        self, ws: ClientConnection, node: Node, on_message: Callable[[dict[str, Any]], None]
    ) -> None:
        self.ws = ws
        self.node = node
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.queue_empty = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self._on_message = on_message
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "response":
                    future = self.pending.pop(frame.get("request_id"), None)
                    if future is not None and not future.done():
                        future.set_result(frame)
                elif kind == "message":
                    self._on_message(frame)
                    await self.ws.send(json.dumps({"type": "ack", "ids": [frame["id"]]}))
                elif kind == "queue_empty":
                    self.queue_empty.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self.close_code = self.ws.close_code
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(LinkLost())
            self.pending.clear()
            self.closed.set()

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        if self.closed.is_set():
            raise LinkLost
        self.next_id += 1
        request_id = self.next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            await self.ws.send(json.dumps({**frame, "request_id": request_id}))
        except websockets.ConnectionClosed as exc:
            self.pending.pop(request_id, None)
            raise LinkLost from exc
        return await future

    async def close(self) -> None:
        await self.ws.close()
        await self.task


@dataclass
class RawDevice:
    """One device (device 1 of an account) that keeps a push socket to some node."""

    name: str
    account: Account
    nodes: Sequence[Node]
    home: int
    link: Link | None = None
    links: list[Link] = field(default_factory=list)
    received: dict[str, tuple[int, int]] = field(default_factory=dict)  # server id -> tag
    arrived: dict[tuple[int, int], float] = field(default_factory=dict)  # tag -> first seen
    deliveries: int = 0
    resent: set[str] = field(default_factory=set)  # client ids sent more than once
    duplicates: set[str] = field(default_factory=set)  # answered {"duplicate": true}
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.index = self.home

    @property
    def account_id(self) -> str:
        return self.account.account_id

    @property
    def live(self) -> bool:
        """Connected, and the stored backlog has been pushed (``queue_empty``)."""
        return (
            self.link is not None
            and not self.link.closed.is_set()
            and self.link.queue_empty.is_set()
        )

    def _record(self, frame: dict[str, Any]) -> None:
        self.deliveries += 1
        tag = tag_of(frame["envelope"])
        self.received.setdefault(frame["id"], tag)
        self.arrived.setdefault(tag, time.monotonic())

    async def connect(self, within_s: float = 30.0) -> Link:
        """The open socket, or a new one: to the same node the first time, then after a
        loss to the next node that accepts (a dead node refuses at once)."""
        async with self._lock:
            if self.link is not None and not self.link.closed.is_set():
                return self.link
            if self.link is not None:
                self.index = (self.index + 1) % len(self.nodes)
            deadline = time.monotonic() + within_s
            while True:
                node = self.nodes[self.index]
                try:
                    ws = await websockets.connect(
                        node.ws_url,
                        additional_headers=self.account.auth,
                        max_size=2**22,
                        open_timeout=5,
                    )
                except (OSError, TimeoutError, websockets.InvalidHandshake):
                    if time.monotonic() > deadline:
                        raise
                    self.index = (self.index + 1) % len(self.nodes)
                    await asyncio.sleep(0.1)
                    continue
                self.link = Link(ws, node, self._record)
                self.links.append(self.link)
                return self.link

    async def stay_connected(self, stop: asyncio.Event) -> None:
        """Hold a socket until ``stop``, reconnecting elsewhere whenever it is lost."""
        while not stop.is_set():
            link = await self.connect()
            waiters = [
                asyncio.ensure_future(link.closed.wait()),
                asyncio.ensure_future(stop.wait()),
            ]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    async def send(
        self, to: str, pair: int, seq: int, answer_within_s: float = 10.0, give_up_s: float = 90.0
    ) -> dict[str, Any]:
        """Send until the server answers 200, always with the same client id."""
        client_id = f"{pair}-{seq}"
        frame = {
            "type": "send",
            "to": to,
            "client_id": client_id,
            "messages": [{"device_id": 1, "envelope": envelope(pair, seq)}],
        }
        deadline = time.monotonic() + give_up_s
        attempts = 0
        while True:
            if attempts:
                self.resent.add(client_id)
                if time.monotonic() > deadline:
                    raise AssertionError(f"{client_id}: no 200 after {attempts} attempts")
            attempts += 1
            link = await self.connect()
            try:
                answer = await asyncio.wait_for(link.request(frame), answer_within_s)
            except LinkLost:
                await asyncio.sleep(0.05)
                continue
            except TimeoutError:  # no answer: give this socket up, send again elsewhere
                await link.close()
                continue
            if answer["status"] == 200:
                body: dict[str, Any] = answer["body"]
                if body.get("duplicate"):
                    self.duplicates.add(client_id)
                return body
            if answer["status"] in (429, 500, 502, 503, 504):
                await asyncio.sleep(0.2)
                continue
            raise AssertionError(f"{client_id}: send refused: {answer}")

    async def close(self) -> None:
        if self.link is not None and not self.link.closed.is_set():
            await self.link.close()


async def make_pairs(
    nodes: Sequence[Node], code_for: Callable[[str], Awaitable[str]], count: int
) -> list[tuple[RawDevice, RawDevice]]:
    """``count`` (sender, receiver) pairs; pair i's sender starts on node i, its receiver
    on the next node, so every message crosses from one node to another."""
    homes = [(i + j) % len(nodes) for i in range(count) for j in (0, 1)]
    accounts = await asyncio.gather(*[register(nodes[h], new_phone(), code_for) for h in homes])
    return [
        (
            RawDevice(f"sender{i}", accounts[2 * i], nodes, homes[2 * i]),
            RawDevice(f"receiver{i}", accounts[2 * i + 1], nodes, homes[2 * i + 1]),
        )
        for i in range(count)
    ]


def missing(
    pairs: Sequence[tuple[RawDevice, RawDevice]], acked: set[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Acknowledged sends (pair, seq) whose message has not reached its receiver."""
    return sorted(t for t in acked if t not in pairs[t[0]][1].arrived)


def delivered_twice(receiver: RawDevice) -> dict[tuple[int, int], list[str]]:
    """Sends that reached ``receiver`` under more than one server message id."""
    ids: dict[tuple[int, int], list[str]] = {}
    for server_id, tag in receiver.received.items():
        ids.setdefault(tag, []).append(server_id)
    return {tag: found for tag, found in ids.items() if len(found) > 1}


def describe_missing(
    pairs: Sequence[tuple[RawDevice, RawDevice]], acked: set[tuple[int, int]]
) -> str:
    """Which acknowledged sends are missing, where their devices are, and whether
    each was sent again (``resent``) and answered as a duplicate (``duplicate``)."""
    gone = missing(pairs, acked)
    by_pair: dict[int, list[str]] = {}
    for pair, seq in gone:
        sender = pairs[pair][0]
        flags = [
            f
            for f, on in (
                ("resent", f"{pair}-{seq}" in sender.resent),
                ("duplicate", f"{pair}-{seq}" in sender.duplicates),
            )
            if on
        ]
        by_pair.setdefault(pair, []).append(f"{seq}{'(' + ','.join(flags) + ')' if flags else ''}")
    where = "; ".join(
        f"pair {p} (sender on {_node_of(pairs[p][0])}, receiver on {_node_of(pairs[p][1])}, "
        f"{len(pairs[p][1].links)} socket(s)): seq {seqs[:8]}"
        for p, seqs in sorted(by_pair.items())
    )
    return f"{len(gone)} of {len(acked)} acknowledged messages not delivered: {where}"


def _node_of(device: RawDevice) -> str:
    return device.link.node.name if device.link is not None else "-"
