"""The load generator of ``python -m parley.bench server`` (runs in its own process).

One design for every server: an asyncio process (uvloop when installed) that
holds two raw client connections per pair (sender and receiver), writes
synchronously from protocol callbacks, and stamps each 200-byte message body
with its send time, phase and sequence number so the receiver measures
send-to-receive latency on the same clock. Two protocol back ends:

- ``parley``: registers its accounts over HTTP (aiohttp; set-up only), then
  speaks the push websocket through a minimal RFC 6455 client
  (``WsClient``): ``send`` frames carrying well-formed ratchet envelopes
  whose 200-byte ciphertext holds the stamp, ``response`` frames, and an
  ``ack`` per received message (acks gathered per event-loop turn, as a
  client would). A message counts as delivered when the receiver has it; its
  ack follows at once. Receivers do not decrypt: ``bench protocol`` measures
  the cryptography, this measures the relay.
- ``xmpp``: ``parley.bench.xmpp``: in-band registration, SASL PLAIN, bind,
  presence, ``<message type='chat'>`` to the receiver's full JID with a
  200-character body holding the stamp.

The orchestrator (``parley.bench.server``) starts one or more of these
processes, each with its own slice of the pairs, and drives them through
JSON lines on stdin (``{"cmd": "closed"|"rate"|"quit", ...}``, phase times
in ``time.monotonic()`` seconds, which is system-wide on Linux); each phase
is answered by one JSON line on stdout. Phases:

- ``closed``: every pair keeps ``in_flight`` messages outstanding; a message
  stops being outstanding when it is delivered (or refused), and the sender
  then sends the next. Deliveries between ``warm`` and ``end`` are counted.
- ``rate``: messages are offered at a fixed rate, round robin over the pairs,
  from ``start`` to ``end``; messages sent between ``warm`` and ``end`` give
  the latencies, deliveries between ``warm`` and ``end`` the delivered rate.

After either, the generator waits until everything it sent has arrived (at
most ``drain`` seconds, or 5 s without progress), so that no backlog spills
into the next phase; ``undelivered`` counts what had not arrived by then and
``stale`` what arrived during a phase but was sent in an earlier one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import secrets
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

# As the server: C JSON and websockets' C masking, so that the generator takes less
# of the cores it shares with the server under test.
import orjson
from websockets.speedups import apply_mask

BODY_BYTES = 200
_STAMP = struct.Struct(">dII")  # send time (monotonic), phase, sequence
_RATCHET_CT = 2 + 32 + 4 + 4 + 32 + 4  # ciphertext offset in a ratchet envelope
XMPP_DOMAIN = "localhost"
monotonic = time.monotonic


# --- the workload, independent of the protocol ----------------------------------------------


class Link(Protocol):
    """One pair: its sender sends one message to its receiver (False: its connection is gone)."""

    def send(self, phase: int, seq: int, now: float) -> bool: ...


@dataclass
class Phase:
    number: int
    closed: bool
    start: float
    warm: float
    end: float
    in_flight: int = 0
    rate: float = 0.0
    latencies: list[float] = field(default_factory=list)
    delivered_in_window: int = 0
    sent: int = 0
    sent_in_window: int = 0
    delivered_of_window: int = 0
    errors: int = 0
    stale: int = 0
    unsendable: int = 0
    delivered: int = 0


class Engine:
    def __init__(self) -> None:
        self.links: list[Link] = []
        self.phase: Phase | None = None
        self.seq: list[int] = []
        self.in_transit = 0  # sent, neither delivered nor refused yet, whatever the phase
        self.connections: list[Any] = []  # with .lost and .close_code

    def add(self, link: Link) -> int:
        self.links.append(link)
        self.seq.append(0)
        return len(self.links) - 1

    def _send(self, pair: int, phase: Phase, now: float) -> None:
        self.seq[pair] += 1
        self.in_transit += 1
        phase.sent += 1
        if phase.warm <= now < phase.end:
            phase.sent_in_window += 1
        if not self.links[pair].send(phase.number, self.seq[pair], now):
            self.in_transit -= 1
            phase.unsendable += 1

    def delivered(self, pair: int, phase_number: int, sent: float) -> None:
        now = monotonic()
        self.in_transit -= 1
        phase = self.phase
        if phase is None or phase_number != phase.number:
            if phase is not None:
                phase.stale += 1  # left over from an earlier phase
            return
        phase.delivered += 1
        if phase.closed:
            if phase.warm <= now <= phase.end:
                phase.delivered_in_window += 1
                phase.latencies.append(now - sent)
            if now < phase.end:
                self._send(pair, phase, now)
            return
        if phase.warm <= now < phase.end:
            phase.delivered_in_window += 1
        if phase.warm <= sent < phase.end:
            phase.delivered_of_window += 1
            phase.latencies.append(now - sent)

    def failed(self, pair: int) -> None:
        """The server refused a message (it will never be delivered)."""
        self.in_transit -= 1
        phase = self.phase
        if phase is None:
            return
        phase.errors += 1
        now = monotonic()
        if phase.closed and now < phase.end:
            self._send(pair, phase, now)

    async def _drain(self, limit: float) -> None:
        """Wait until everything sent has arrived: at most ``limit`` s, or 5 s without progress."""
        deadline = monotonic() + limit
        last, last_change = self.in_transit, monotonic()
        while self.in_transit > 0 and monotonic() < deadline:
            if self.in_transit < last:
                last, last_change = self.in_transit, monotonic()
            elif monotonic() - last_change > 5.0:
                break
            await asyncio.sleep(0.01)

    async def run_phase(self, cmd: dict[str, Any], number: int) -> dict[str, Any]:
        phase = Phase(
            number,
            cmd["cmd"] == "closed",
            float(cmd["start"]),
            float(cmd["warm"]),
            float(cmd["end"]),
            in_flight=int(cmd.get("in_flight", 0)),
            rate=float(cmd.get("rate", 0.0)),
        )
        self.phase = phase
        await asyncio.sleep(max(0.0, phase.start - monotonic()))
        if phase.closed:
            now = monotonic()
            for pair in range(len(self.links)):
                for _ in range(phase.in_flight):
                    self._send(pair, phase, now)
            await asyncio.sleep(max(0.0, phase.end - monotonic()))
        else:
            await self._pace(phase)
        await self._drain(float(cmd.get("drain", 10.0)))
        window = phase.end - phase.warm
        return {
            "seconds": round(window, 3),
            "sent": phase.sent,
            "sent_in_window": phase.sent_in_window,
            "delivered_in_window": phase.delivered_in_window,
            "delivered_of_window": phase.delivered_of_window,
            "undelivered": phase.sent - phase.delivered - phase.errors - phase.unsendable,
            "errors": phase.errors,
            "unsendable": phase.unsendable,
            "connections_lost": sum(1 for c in self.connections if c.lost),
            "close_codes": sorted({c.close_code for c in self.connections if c.close_code}),
            "stale": phase.stale,
            "latencies_ms": [round(x * 1000, 3) for x in phase.latencies],
        }

    async def _pace(self, phase: Phase) -> None:
        """Offer ``phase.rate`` messages a second, round robin over the pairs."""
        pairs, done = len(self.links), 0
        while True:
            now = monotonic()
            if now >= phase.end:
                return
            due = int((now - phase.start) * phase.rate)
            while done < due:
                self._send(done % pairs, phase, now)
                done += 1
            await asyncio.sleep(0.001)


# --- Parley: a raw websocket client ---------------------------------------------------------


class WsError(RuntimeError):
    pass


class WsClient(asyncio.Protocol):
    """A minimal RFC 6455 client: text frames out (masked), text frames in, ping/pong, close."""

    def __init__(self, host: str, path: str, headers: dict[str, str]) -> None:
        self.host, self.path, self.headers = host, path, headers
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.on_text: Callable[[str], None] = lambda _text: None
        self._fragments: list[bytes] = []
        self.lost = False
        self.close_code = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport = self.transport
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.upgraded.done():
            self.upgraded.set_exception(WsError(f"connection lost before the upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[: self.buffer.find(b"\r\n")])
            del self.buffer[: end + 4]
            if b" 101 " not in status + b" ":
                self.upgraded.set_exception(WsError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf, pos, size = self.buffer, 0, len(self.buffer)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if b1 & 0x80:
                raise WsError("the server masked a frame")
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            self._frame(b0 & 0x80 != 0, b0 & 0x0F, payload)
        del buf[:pos]

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode in (0, 1, 2):
            if opcode != 0:
                self._fragments = [] if opcode == 1 else [b"binary"]
            self._fragments.append(payload)
            if fin:
                parts, self._fragments = self._fragments, []
                if parts and parts[0] != b"binary":
                    self.on_text(b"".join(parts).decode())
        elif opcode == 8:
            if len(payload) >= 2:
                self.close_code = int.from_bytes(payload[:2], "big")
            self._write(8, payload[:2])
            assert self.transport is not None
            self.transport.close()
        elif opcode == 9:
            self._write(10, payload)

    def _write(self, opcode: int, payload: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        self.transport.write(head + mask + apply_mask(payload, mask))
        return True

    def send_text(self, text: str) -> bool:
        return self._write(1, text.encode())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self._write(8, (1000).to_bytes(2, "big"))
            self.transport.close()


async def ws_connect(
    url: str, path: str, headers: dict[str, str], on_text: Callable[[str], None]
) -> WsClient:
    """Connect and upgrade; ``on_text`` gets every text frame from the first one on."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None

    def make() -> WsClient:
        client = WsClient(f"{parts.hostname}:{parts.port}", path, headers)
        client.on_text = on_text
        return client

    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(make, parts.hostname, parts.port)
    await asyncio.wait_for(client.upgraded, 30)
    return client


# --- Parley: accounts and the pair link -----------------------------------------------------


class Sms:
    """Reads verification codes from the server's ``--sms file:PATH``."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.codes: dict[str, str] = {}

    async def code(self, phone: str) -> str:
        for _ in range(3000):
            if self.path.exists():
                with open(self.path) as f:
                    f.seek(self.offset)
                    for line in f:
                        if line.endswith("\n"):
                            p, c = line.split()
                            self.codes[p] = c
                            self.offset += len(line.encode())
            if phone in self.codes:
                return self.codes.pop(phone)
            await asyncio.sleep(0.01)
        raise RuntimeError(f"no code for {phone}")


@dataclass
class ParleyAccount:
    account_id: str
    credential: str


async def register(session: Any, sms: Sms, n: int) -> ParleyAccount:
    from parley.client.api import keys_json
    from parley.protocol.keys import IdentityKeyPair, KemPreKey, SignedPreKey

    async def call(path: str, body: Any) -> Any:
        async with session.post(path, json=body) as r:
            if r.status >= 400:
                raise RuntimeError(f"POST {path}: {r.status} {await r.text()}")
            return await r.json() if r.content_type == "application/json" else None

    phone = f"+1415{3000000 + n:07d}"
    identity = IdentityKeyPair.generate(secrets.token_bytes)
    keys = keys_json(
        SignedPreKey.generate(identity, 1, secrets.token_bytes),
        KemPreKey.generate(identity, 2, secrets.token_bytes, last_resort=True),
    )
    await call("/v1/registration/code", {"phone": phone})
    r = await call(
        "/v1/registration/verify",
        {
            "phone": phone,
            "code": await sms.code(phone),
            "identity_key": base64.b64encode(identity.public.to_bytes()).decode(),
            "keys": keys,
        },
    )
    return ParleyAccount(r["account_id"], r["credential"])


async def parley_socket(url: str, account: ParleyAccount) -> WsClient:
    """The account's push websocket, once the server has sent its (empty) backlog."""
    ready = asyncio.get_running_loop().create_future()

    def until_empty(text: str) -> None:
        if orjson.loads(text).get("type") == "queue_empty" and not ready.done():
            ready.set_result(None)

    ws = await ws_connect(
        url, "/v1/websocket", {"Authorization": f"Bearer {account.credential}"}, until_empty
    )
    await asyncio.wait_for(ready, 30)
    return ws


class ParleyLink:
    def __init__(
        self, engine: Engine, sender: WsClient, receiver: WsClient, to: str, tag: str
    ) -> None:
        from parley.protocol.wire import RatchetMessage

        self.engine, self.sender, self.receiver, self.to = engine, sender, receiver, to
        self.pair = engine.add(self)
        self.tag = tag
        self.template = bytearray(
            RatchetMessage(
                secrets.token_bytes(32),
                0,
                0,
                secrets.token_bytes(32),
                secrets.token_bytes(BODY_BYTES),
            ).to_bytes()
        )
        self.request = 0
        self.acks: list[str] = []
        sender.on_text = self._sender_frame
        receiver.on_text = self._receiver_frame

    def send(self, phase: int, seq: int, now: float) -> bool:
        _STAMP.pack_into(self.template, _RATCHET_CT, now, phase, seq)
        self.request += 1
        envelope = base64.b64encode(self.template).decode()
        return self.sender.send_text(
            f'{{"type":"send","request_id":{self.request},"to":"{self.to}",'
            f'"client_id":"{self.tag}-{phase}-{seq}",'
            f'"messages":[{{"device_id":1,"envelope":"{envelope}"}}]}}'
        )

    def _sender_frame(self, text: str) -> None:
        frame = orjson.loads(text)
        if frame.get("type") == "response" and frame.get("status") != 200:
            self.engine.failed(self.pair)

    def _receiver_frame(self, text: str) -> None:
        frame = orjson.loads(text)
        if frame.get("type") != "message":
            return
        raw = base64.b64decode(frame["envelope"])
        sent, phase, _seq = _STAMP.unpack_from(raw, _RATCHET_CT)
        if not self.acks:
            asyncio.get_running_loop().call_soon(self._flush_acks)
        self.acks.append(frame["id"])
        self.engine.delivered(self.pair, phase, sent)

    def _flush_acks(self) -> None:
        ids, self.acks = self.acks, []
        self.receiver.send_text(orjson.dumps({"type": "ack", "ids": ids}).decode())


async def parley_setup(
    engine: Engine, url: str, receiver_url: str, sms_path: str, first: int, pairs: int
) -> list[WsClient]:
    import aiohttp

    sms = Sms(Path(sms_path))
    async with aiohttp.ClientSession(
        base_url=url, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        accounts = await asyncio.gather(
            *[register(session, sms, n) for n in range(2 * first, 2 * (first + pairs))]
        )
    sockets: list[WsClient] = []
    tag = secrets.token_hex(4)
    for i in range(pairs):
        sender, receiver = accounts[2 * i], accounts[2 * i + 1]
        s = await parley_socket(url, sender)
        r = await parley_socket(receiver_url, receiver)
        sockets += [s, r]
        ParleyLink(engine, s, r, receiver.account_id, f"{tag}{first + i}")
    engine.connections = sockets
    return sockets


# --- XMPP: the pair link --------------------------------------------------------------------


class XmppLink:
    def __init__(self, engine: Engine, sender: Any, to_jid: str) -> None:
        from xml.sax.saxutils import quoteattr

        self.engine, self.sender = engine, sender
        self.pair = engine.add(self)
        self.head = ("<message type='chat' to=" + quoteattr(to_jid) + "><body>").encode()

    def send(self, phase: int, seq: int, now: float) -> bool:
        body = f"{phase} {seq} {now!r} ".ljust(BODY_BYTES, "x").encode()
        return bool(self.sender.write(self.head + body + b"</body></message>"))

    def on_body(self, text: str) -> None:
        phase, _seq, sent, _pad = text.split(" ", 3)
        self.engine.delivered(self.pair, int(phase), float(sent))

    def on_error(self) -> None:
        self.engine.failed(self.pair)


async def xmpp_setup(engine: Engine, host: str, port: int, first: int, pairs: int) -> list[Any]:
    from parley.bench import xmpp

    async def login(n: int) -> xmpp.XmppClient:
        client = await xmpp.connect(host, port, XMPP_DOMAIN)
        await client.login(f"bench{n}", f"pw-{n}-bench", register=True, resource="bench")
        return client

    clients: list[xmpp.XmppClient] = []
    for batch in range(first, first + pairs, 10):
        clients += await asyncio.gather(
            *[login(n) for n in range(2 * batch, 2 * min(first + pairs, batch + 10))]
        )
    for i in range(pairs):
        sender, receiver = clients[2 * i], clients[2 * i + 1]
        link = XmppLink(engine, sender, receiver.jid)
        receiver.on_body = link.on_body
        sender.on_error = link.on_error
    engine.connections = clients
    return clients


# --- the process ----------------------------------------------------------------------------


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    engine = Engine()
    try:
        if args.protocol == "parley":
            conns: list[Any] = await parley_setup(
                engine, args.url, args.receiver_url or args.url, args.sms, args.first, args.pairs
            )
        else:
            conns = await xmpp_setup(engine, args.host, args.port, args.first, args.pairs)
    except Exception as exc:
        _say({"error": f"set-up failed: {type(exc).__name__}: {exc}"})
        return
    gc.collect()
    gc.freeze()  # the generator's own GC pauses would show up as latency
    _say({"ready": True, "pairs": len(engine.links)})
    reader, number = await _lines(), 0
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        number += 1
        _say(await engine.run_phase(cmd, number))
    for c in conns:
        c.close()
    await asyncio.sleep(0.1)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m parley.bench.load")
    p.add_argument("protocol", choices=["parley", "xmpp"])
    p.add_argument("--first", type=int, required=True, help="index of this process's first pair")
    p.add_argument("--pairs", type=int, required=True)
    p.add_argument("--url", help="parley: the node senders use (and registration)")
    p.add_argument("--receiver-url", help="parley: the node receivers use (default --url)")
    p.add_argument("--sms", help="parley: the server's --sms file")
    p.add_argument("--host", default="127.0.0.1", help="xmpp")
    p.add_argument("--port", type=int, help="xmpp")
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(parse()))
