"""The push socket's own websocket protocol, driven byte for byte by websockets'
sans-I/O client: keepalive, back-pressure, fragments, bad UTF-8, and the client
address behind a proxy. (End-to-end behaviour is in tests/e2e: delivery, bad
input, durability.)"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from parley.errors import BadRequest, NotFound
from parley.server.api import websocket as push
from parley.server.handlers.accounts import Principal
from parley.server.handlers.delivery import DeliverySession
from parley.server.storage.queue import QueuedMessage, Stored


class FakeTransport:
    def __init__(self, protocol: push.PushProtocol) -> None:
        self.protocol = protocol
        self.written = bytearray()
        self.closed = False
        self.reading = True
        self.pauses = 0

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)


class FakeQueue:
    async def page(self, *_args: Any) -> tuple[list[Any], None]:
        return [], None

    def delete_soon(self, guids: list[str]) -> None:
        pass


class Service:
    """Stands in for the handlers; ``release`` holds every send until set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sends = 0
        self.seen_ip = ""
        self.accounts = SimpleNamespace(authenticate=self.authenticate)
        self.messages = SimpleNamespace(send_direct=self.send_direct)
        self.deliveries = SimpleNamespace(open=self.open, close=lambda _s: None)

    async def authenticate(self, header: str | None, ip: str) -> Principal:
        self.seen_ip = ip
        if header != "Bearer good":
            from parley.errors import Unauthorized

            raise Unauthorized("invalid credentials")
        return Principal("alice", 1)

    def send_direct(self, *_args: Any) -> Any:
        self.sends += 1
        return asyncio.ensure_future(self._stored())

    async def _stored(self) -> Any:
        await self.release.wait()
        return SimpleNamespace(server_ms=1, duplicate=False)

    async def open(self, account: str, device: int, transport: Any) -> DeliverySession:
        return DeliverySession(account, device, FakeQueue(), transport, window=10)  # type: ignore[arg-type]


def _config(**kw: Any) -> SimpleNamespace:
    base = {
        "ws_max_size": 64 * 1024,
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        "proxy_headers": True,
        "forwarded_allow_ips": "127.0.0.1",
    }
    return SimpleNamespace(**{**base, **kw})


class Peer:
    """A client on the other end of a ``PushProtocol``."""

    def __init__(self, service: Service, auth: str = "Bearer good", **config: Any) -> None:
        self.server = push.PushProtocol(
            _config(**config), SimpleNamespace(connections=set()), {"push": service}
        )
        self.transport = FakeTransport(self.server)
        self.client = ClientProtocol(parse_uri("ws://127.0.0.1/v1/websocket"))
        self.server.connection_made(self.transport)  # type: ignore[arg-type]
        request = self.client.connect()
        request.headers["Authorization"] = auth
        request.headers["X-Forwarded-For"] = "203.0.113.9"
        self.client.send_request(request)
        self.pump_to_server()

    def pump_to_server(self) -> None:
        for chunk in self.client.data_to_send():
            if chunk:
                self.server.data_received(chunk)

    def events(self) -> list[Any]:
        data, self.transport.written = bytes(self.transport.written), bytearray()
        if data:
            self.client.receive_data(data)
        if self.transport.closed:
            self.client.receive_eof()
        return self.client.events_received()

    def frames(self) -> list[Frame]:
        return [e for e in self.events() if isinstance(e, Frame)]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_the_handshake_checks_credentials_first_and_honours_a_trusted_proxy() -> None:
    service = Service()
    refused = Peer(service, auth="Bearer bad")
    await _settle()
    answer = [e for e in refused.events() if isinstance(e, Response)]
    assert answer and answer[0].status_code == 403
    assert service.seen_ip == "203.0.113.9"  # the peer is 127.0.0.1, a trusted proxy

    accepted = Peer(service)
    await _settle()
    answer = [e for e in accepted.events() if isinstance(e, Response)]
    assert answer and answer[0].status_code == 101


def test_a_forwarded_address_counts_only_from_a_trusted_proxy() -> None:
    headers = {"x-forwarded-for": "198.51.100.4, 10.0.0.2"}
    trusted = _config(forwarded_allow_ips="127.0.0.1,10.0.0.0/8")
    assert push._client_ip(trusted, "127.0.0.1", headers) == "198.51.100.4"  # type: ignore[arg-type]
    assert push._client_ip(trusted, "192.0.2.1", headers) == "192.0.2.1"  # type: ignore[arg-type]
    assert push._client_ip(_config(proxy_headers=False), "127.0.0.1", headers) == "127.0.0.1"  # type: ignore[arg-type]
    assert push._client_ip(trusted, "127.0.0.1", {}) == "127.0.0.1"  # type: ignore[arg-type]


async def test_a_silent_peer_is_pinged_then_closed_with_1011() -> None:
    peer = Peer(Service(), ws_ping_interval=0.05, ws_ping_timeout=0.05)
    await _settle()
    peer.events()  # the 101
    await asyncio.sleep(0.3)
    frames = peer.frames()
    assert any(f.opcode is Opcode.PING for f in frames)
    closes = [Close.parse(f.data).code for f in frames if f.opcode is Opcode.CLOSE]
    assert closes == [1011]


async def test_a_peer_that_answers_pings_stays_open() -> None:
    peer = Peer(Service(), ws_ping_interval=0.05, ws_ping_timeout=0.05)
    await _settle()
    peer.events()
    for _ in range(8):
        await asyncio.sleep(0.03)
        peer.frames()  # the sans-I/O client queues a pong for each ping
        peer.pump_to_server()
    assert not peer.transport.closed


async def test_reading_stops_while_the_requests_in_flight_are_full() -> None:
    service = Service()
    peer = Peer(service)
    await _settle()
    peer.events()
    total = push.MAX_REQUESTS_IN_FLIGHT + 5
    for i in range(total):
        frame = {
            "type": "send",
            "request_id": i,
            "to": "bob",
            "client_id": f"c{i}",
            "messages": [{"device_id": 1, "envelope": "AAAA"}],
        }
        peer.client.send_text(json.dumps(frame).encode())
    peer.pump_to_server()
    await _settle()
    assert service.sends == push.MAX_REQUESTS_IN_FLIGHT
    assert not peer.transport.reading and peer.transport.pauses >= 1
    service.release.set()
    await _settle()
    assert service.sends == total and peer.transport.reading
    answers = [json.loads(f.data) for f in peer.frames() if f.opcode is Opcode.TEXT]
    assert sorted(a["request_id"] for a in answers if a["type"] == "response") == list(range(total))


async def test_each_send_is_answered_with_its_own_outcome_and_the_socket_stays_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A send is answered from its commit's callback: a refusal raised at once, one
    that comes through the future (after a lookup), a commit that failed (500, and
    the log names only the error's type) and a stored one, each under its own
    request id."""
    loop = asyncio.get_running_loop()

    def send_direct(_who: Any, _to: str, client_id: str, _envelopes: Any) -> Any:
        if client_id == "refused-now":
            raise BadRequest("malformed envelope: truncated input", "malformed_envelope")
        pending = loop.create_future()
        if client_id == "refused-later":
            pending.set_exception(NotFound("no such account"))
        elif client_id == "commit-failed":
            pending.set_exception(RuntimeError("queue commit failed: canary-4711"))
        else:
            pending.set_result(Stored(1234, False))
        return pending

    service = Service()
    service.messages = SimpleNamespace(send_direct=send_direct)
    peer = Peer(service)
    await _settle()
    peer.events()
    for i, client_id in enumerate(["refused-now", "refused-later", "commit-failed", "stored"]):
        frame = {
            "type": "send",
            "request_id": f"r{i}",
            "to": "bob",
            "client_id": client_id,
            "messages": [{"device_id": 1, "envelope": "AAAA"}],
        }
        peer.client.send_text(json.dumps(frame).encode())
    peer.pump_to_server()
    await _settle()
    answers = {
        a["request_id"]: (a["status"], a["body"])
        for a in (json.loads(f.data) for f in peer.frames() if f.opcode is Opcode.TEXT)
        if a["type"] == "response"
    }
    assert answers["r0"][0] == 400 and answers["r0"][1]["error"]["code"] == "malformed_envelope"
    assert answers["r1"][0] == 404 and answers["r1"][1]["error"]["code"] == "not_found"
    assert answers["r2"] == (
        500,
        {"error": {"code": "internal", "message": "internal server error"}},
    )
    assert answers["r3"] == (200, {"server_ms": 1234, "duplicate": False})
    assert not peer.transport.closed
    assert "RuntimeError" in caplog.text and "canary-4711" not in caplog.text


async def test_a_fragmented_frame_is_one_frame_and_bad_utf8_closes_with_1007() -> None:
    peer = Peer(Service())
    await _settle()
    peer.events()
    peer.client.send_text(b'{"type": "ack", ', fin=False)
    peer.client.send_continuation(b'"ids": []}', fin=True)
    peer.pump_to_server()
    await _settle()
    assert not peer.transport.closed
    assert not [f for f in peer.frames() if f.opcode is Opcode.CLOSE]

    peer.client.send_text(b'{"type": "ack", "ids": ["\xff"]}')
    peer.pump_to_server()
    await _settle()
    closes = [Close.parse(f.data).code for f in peer.frames() if f.opcode is Opcode.CLOSE]
    assert closes == [1007]


async def test_a_push_to_a_socket_the_peer_is_closing_raises_nowhere() -> None:
    """The queue writer offers a commit's rows to every recipient's session in turn:
    one socket in its closing handshake must not make the offer raise (the sessions
    after it would miss their rows). Its session leaves the row to its task."""
    peer = Peer(Service())
    await _settle()
    peer.events()
    connection = peer.server.connection
    assert connection is not None
    # a real transport reports the loss on a later loop turn, not inside close()
    peer.transport.close = lambda: setattr(peer.transport, "closed", True)  # type: ignore[method-assign]
    peer.client.send_close(1000)
    peer.server.data_received(b"".join(peer.client.data_to_send()))
    assert not peer.server.lost and peer.server.conn.state.name != "OPEN"
    assert peer.server.try_send('{"type": "x"}') is False
    row = QueuedMessage(1, "g1", "alice", 1, "bob", 1, None, b"e", b"t" * 32, 1)
    connection.session.offer([row])  # does not raise
    peer.server.connection_lost(None)  # the loss, reported a turn later
    await _settle()
    assert connection.session.closed.is_set()
