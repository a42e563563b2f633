"""The push websocket (``/v1/websocket``): the connection glue around ``DeliverySession``.

Besides acknowledgements, a connected client may send messages over the same
socket (as Signal's clients do), which avoids an HTTP request per message:

    {"type": "send", "request_id": R, "to": ACCOUNT, "client_id": C,
     "messages": [{"device_id": D, "envelope": B64}, ...]}
    {"type": "send_group", "request_id": R, "group": GID, "client_id": C, "envelope": B64}

Each is answered, possibly out of order, by ``{"type": "response",
"request_id": R, "status": S, "body": {...}}`` with the same body and status
the HTTP routes give (``{"server_ms", "duplicate"}``, or ``{"error": ...}``).
Up to ``MAX_REQUESTS_IN_FLIGHT`` requests per socket run concurrently, so
their commits share group commits; past that the socket is not read until
one finishes. The session logic lives in ``handlers/delivery.py`` and talks
to a two-method transport.

This is the hot path (four frames per message: send, response, push, ack),
so it does not go through ASGI: ``PushProtocol`` is the websocket protocol
uvicorn hands every upgrade to (``ws=PushProtocol``), built on the sans-I/O
``websockets.ServerProtocol`` (handshake, framing, masking, size limit,
ping/pong and close handshake). It reads frames in the transport's callback
(no queue and no task per frame) and writes every frame produced in one
event-loop turn with one ``write`` (measured on the benchmark: uvicorn's
ASGI websocket path spent about 20% of the event loop on per-frame sends,
half of it one ``send`` system call per frame). The HTTP API keeps the
framework. Rules kept from the ASGI path: only ``/v1/websocket`` upgrades
(404 otherwise); credentials are checked before the handshake (403);
``X-Forwarded-For`` is honoured only from uvicorn's ``forwarded_allow_ips``;
a ping every ``ws_ping_interval`` seconds, and the socket is closed with 1011
if nothing at all arrives within ``ws_ping_timeout`` after it. An error
inside is logged by type only, as ``InternalErrors`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from parley.errors import ApiError, BadRequest
from parley.server.api import edge
from parley.server.api.schemas import b64
from parley.server.handlers.accounts import AccountsHandler, Principal
from parley.server.handlers.delivery import (
    CLOSE_INVALID_DATA,
    CLOSE_POLICY,
    Deliveries,
    DeliverySession,
    FrameError,
)
from parley.server.handlers.messages import MessagesHandler, SendResult

log = logging.getLogger("parley.server")
# websockets' own log lines carry no address, but its parser logs a traceback on
# an internal error: keep only the type, as everywhere else.
_ws_log = logging.getLogger("parley.server.websocket")
_ws_log.setLevel(logging.CRITICAL)
PATH = "/v1/websocket"
MAX_REQUESTS_IN_FLIGHT = 64
MAX_ENVELOPE_B64 = 400_000
CLOSE_TIMEOUT_S = 5.0
CLOSE_KEEPALIVE = 1011
CLOSE_GOING_AWAY = 1001


def _text(frame: dict[str, Any], name: str, max_len: int) -> str:
    value = frame.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise BadRequest(f"{name} must be a string of 1..{max_len} characters", "invalid_request")
    return value


def _send(
    messages: MessagesHandler, who: Principal, frame: dict[str, Any]
) -> asyncio.Future[SendResult]:
    if frame["type"] == "send":
        items = frame.get("messages")
        if not isinstance(items, list) or len(items) > 16:
            raise BadRequest("messages must be a list of at most 16", "invalid_request")
        envelopes: dict[int, bytes] = {}
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("device_id"), int):
                raise BadRequest(
                    "each message needs a device_id and an envelope", "invalid_request"
                )
            envelopes[item["device_id"]] = b64(
                _text(item, "envelope", MAX_ENVELOPE_B64), "envelope", max_length=300_000
            )
        return messages.send_direct(
            who, _text(frame, "to", 64), _text(frame, "client_id", 64), envelopes
        )
    envelope = b64(_text(frame, "envelope", MAX_ENVELOPE_B64), "envelope", max_length=300_000)
    return messages.send_group(
        who, _text(frame, "group", 64), _text(frame, "client_id", 64), envelope
    )


def _response(request_id: int | str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response", "request_id": request_id, "status": status, "body": body}


def _error(exc: ApiError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, **exc.details()}}


def _outcome(pending: asyncio.Future[SendResult]) -> tuple[int, dict[str, Any]]:
    """A finished send's status and body. A failed commit is a 500 naming nothing:
    not stored, or not known to be, so the client sends it again under its key."""
    exc = pending.exception()
    if exc is None:
        result = pending.result()
        return 200, {"server_ms": result.server_ms, "duplicate": result.duplicate}
    if isinstance(exc, ApiError):
        return exc.http_status, _error(exc)
    log.error("internal error: %s", type(exc).__name__)
    return 500, {"error": {"code": "internal", "message": "internal server error"}}


@dataclass(frozen=True)
class PushService:
    """What a push socket needs, built once the application has started; the
    lifespan hands it to every ``PushProtocol`` as ``app_state["push"]``."""

    accounts: AccountsHandler
    messages: MessagesHandler
    deliveries: Deliveries


class _Connection:
    """One authenticated socket: runs sends, hands acks to the session.

    A send is answered from its commit's callback: the handler checks it and
    submits it within the frame's own callback (a task only when it must wait for
    a lookup), so a message costs no task here."""

    def __init__(
        self,
        protocol: PushProtocol,
        who: Principal,
        messages: MessagesHandler,
        session: DeliverySession,
    ) -> None:
        self.protocol = protocol
        self.who = who
        self.messages = messages
        self.session = session
        self.requests: set[asyncio.Future[SendResult]] = set()

    @property
    def full(self) -> bool:
        return len(self.requests) >= MAX_REQUESTS_IN_FLIGHT

    def _answered(self, request_id: int | str, pending: asyncio.Future[SendResult]) -> None:
        self.requests.discard(pending)
        if not pending.cancelled():  # cancelled: the server is stopping; the client re-sends
            self.session.send_control(_response(request_id, *_outcome(pending)))
        self.protocol.request_finished()

    def handle(self, text: str) -> None:
        """One text frame; ``FrameError`` closes the socket."""
        try:
            frame = edge.loads(text)  # the same rules as HTTP bodies
        except BadRequest as exc:
            raise FrameError(CLOSE_INVALID_DATA, exc.message) from exc
        if isinstance(frame, dict) and frame.get("type") in ("send", "send_group"):
            request_id = frame.get("request_id")
            if (
                not isinstance(request_id, int | str)
                or isinstance(request_id, bool)
                or len(str(request_id)) > 64
            ):
                raise FrameError(CLOSE_POLICY, "request_id must be an integer or a short string")
            try:
                pending = _send(self.messages, self.who, frame)
            except ApiError as exc:
                self.session.send_control(_response(request_id, exc.http_status, _error(exc)))
                return
            self.requests.add(pending)
            pending.add_done_callback(partial(self._answered, request_id))
        else:
            self.session.on_ack(frame)

    async def drain(self) -> None:
        """A message acknowledged to its sender is committed: let requests finish."""
        if self.requests:
            await asyncio.gather(*self.requests, return_exceptions=True)


def _client_ip(config: Any, peer: str, headers: Headers) -> str:
    """The client's address, as uvicorn's ``ProxyHeadersMiddleware`` gives it to the
    HTTP routes: ``X-Forwarded-For`` counts only when the peer is a trusted proxy,
    and then the nearest address that is not one."""
    forwarded = headers.get("x-forwarded-for")
    if not getattr(config, "proxy_headers", False) or not forwarded:
        return peer
    allowed = config.forwarded_allow_ips
    if allowed is None:
        allowed = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
    if isinstance(allowed, str):
        allowed = [item.strip() for item in allowed.split(",")]

    def trusted(host: str) -> bool:
        if "*" in allowed:
            return True
        for item in allowed:
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(item, strict=False):
                    return True
            except ValueError:
                if host == item:
                    return True
        return False

    if not trusted(peer):
        return peer
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer


class PushProtocol(asyncio.Protocol):
    """The websocket protocol uvicorn runs for every upgrade (see the module docstring).

    Also the ``Transport`` its ``DeliverySession`` writes to."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = _loop or asyncio.get_event_loop()
        self.config = config
        self.service: PushService | None = app_state.get("push")
        self.connections = server_state.connections
        self.conn = ServerProtocol(max_size=config.ws_max_size, logger=_ws_log)
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.connection: _Connection | None = None
        self.pusher: asyncio.Task[None] | None = None
        self.handshake: asyncio.Task[None] | None = None
        self.pending: deque[Frame] = deque()  # read, not yet handled (requests full)
        self.fragments: list[bytes] = []
        self.flush_handle: asyncio.Handle | None = None
        self.paused_reading = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.closing = False
        self.lost = False
        self.timers: dict[str, asyncio.TimerHandle] = {}

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "unknown"

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._after_receive()

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        self._after_receive()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.connections.discard(self)
        self.writable.set()
        for timer in self.timers.values():
            timer.cancel()
        if self.flush_handle is not None:
            self.flush_handle.cancel()
        # A running handshake is not cancelled: it sees the loss itself, after
        # ``deliveries.open`` if it got that far, and unregisters the session.
        if self.connection is not None:
            self.loop.create_task(self._finish())

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def shutdown(self) -> None:
        """uvicorn is stopping: close with 1001 (the session ends, requests finish)."""
        if self.connection is not None:
            self.connection.session.close_soon(CLOSE_GOING_AWAY)
        elif self.transport is not None:
            self.transport.close()

    # -- Transport (what DeliverySession writes to) -------------------------------------

    async def send_text(self, text: str) -> None:
        if not self.writable.is_set():
            await self.writable.wait()
        if self.lost or self.closing:
            raise ConnectionError("socket closed")
        self.conn.send_text(text.encode())
        self._flush_soon()

    def try_send(self, text: str) -> bool:
        # Called from other sessions' paths too (the queue writer's hand-over offers
        # rows to every recipient in turn), so it never raises: a socket the peer is
        # closing answers False, and the session's task meets that state itself.
        if self.lost or self.closing or not self.writable.is_set():
            return False
        try:
            self.conn.send_text(text.encode())
        except InvalidState:
            return False
        self._flush_soon()
        return True

    async def close(self, code: int) -> None:
        if self.lost or self.closing:
            return
        self.closing = True
        with contextlib.suppress(InvalidState):
            self.conn.send_close(code)
        self._flush()
        self._close_transport_later()

    # -- inside --------------------------------------------------------------------------

    def _flush_soon(self) -> None:
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_handle = None
        data = self.conn.data_to_send()
        if self.transport is None or self.lost or not data:
            return
        if data[-1] == b"":  # SEND_EOF: the sans-I/O layer wants the connection closed
            data.pop()
            if data:
                self.transport.write(b"".join(data))
            self.transport.close()
            return
        self.transport.write(b"".join(data))

    def _close_transport_later(self) -> None:
        if "close" not in self.timers and self.transport is not None:
            self.timers["close"] = self.loop.call_later(CLOSE_TIMEOUT_S, self.transport.close)

    def _after_receive(self) -> None:
        events = self.conn.events_received()
        for event in events:
            if isinstance(event, Request):
                self._start_handshake(event)
            elif isinstance(event, Frame):
                self.pending.append(event)
        self._alive()
        self._handle_pending()
        self._flush()  # pongs, the close reply
        if self.conn.close_expected():
            self._close_transport_later()

    def _handle_pending(self) -> None:
        connection = self.connection
        if connection is None:
            return  # the handshake is still running; frames wait
        try:
            while self.pending and not self.closing:
                if connection.full:
                    if not self.paused_reading and self.transport is not None:
                        self.paused_reading = True
                        self.transport.pause_reading()
                    return
                self._frame(connection, self.pending.popleft())
        except FrameError as exc:
            self.pending.clear()
            connection.session.close_soon(exc.code)
        except Exception as exc:
            self.pending.clear()
            log.error("internal error: %s", type(exc).__name__)
            connection.session.close_soon(CLOSE_KEEPALIVE)
        if self.paused_reading and self.transport is not None and not self.pending:
            self.paused_reading = False
            self.transport.resume_reading()

    def _frame(self, connection: _Connection, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or (opcode is Opcode.CONT and self.fragments):
            self.fragments.append(bytes(frame.data))
            if not frame.fin:
                return
            raw, self.fragments = b"".join(self.fragments), []
            try:
                text = raw.decode()
            except UnicodeDecodeError as exc:
                raise FrameError(CLOSE_INVALID_DATA, "frame is not UTF-8") from exc
            connection.handle(text)
        elif opcode is Opcode.BINARY or opcode is Opcode.CONT:
            raise FrameError(CLOSE_POLICY, "binary frames are not part of the protocol")
        # PING, PONG and CLOSE: the sans-I/O layer answers them itself

    def request_finished(self) -> None:
        if self.pending and self.connection is not None and not self.connection.full:
            self._handle_pending()

    def _start_handshake(self, request: Request) -> None:
        if self.transport is not None:
            self.transport.pause_reading()
        self.handshake = self.loop.create_task(self._handshake(request))

    async def _handshake(self, request: Request) -> None:
        service = self.service
        try:
            if service is None:
                self._reject(503, "Starting\n")
                return
            if request.path != PATH:
                self._reject(404, "Not Found\n")
                return
            authorization = request.headers.get("authorization")
            ip = _client_ip(self.config, self.peer, request.headers)
            try:
                who = await service.accounts.authenticate(authorization, ip)
            except ApiError:
                self._reject(403, "Forbidden\n")
                return
            response = self.conn.accept(request)
            self.conn.send_response(response)
            self._flush()
            if response.status_code != 101 or self.lost:
                self._close_transport_later()
                return
            session = await service.deliveries.open(who.account_id, who.device_id, self)
            self.connection = _Connection(self, who, service.messages, session)
            self.pusher = self.loop.create_task(session.run())
            if self._gone():
                await self._finish()
                return
            self._keepalive()
            self.transport.resume_reading()  # type: ignore[union-attr]
            self._handle_pending()
            self._flush()
        except Exception as exc:
            log.error("internal error: %s", type(exc).__name__)
            if self.transport is not None:
                self.transport.close()

    def _gone(self) -> bool:
        return self.lost  # (a method: the connection may be lost during an await)

    def _reject(self, status: int, text: str) -> None:
        self.conn.send_response(self.conn.reject(status, text))
        self._flush()
        self._close_transport_later()

    async def _finish(self) -> None:
        """The socket is gone: unregister, let requests commit, end the pusher."""
        connection = self.connection
        assert connection is not None
        service = self.service
        assert service is not None
        service.deliveries.close(connection.session)
        await connection.drain()
        connection.session.close_soon(1000)
        if self.pusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pusher, 5)

    # -- keepalive -------------------------------------------------------------------------

    def _keepalive(self) -> None:
        interval = self.config.ws_ping_interval
        if interval:
            self.timers["ping"] = self.loop.call_later(interval, self._ping)

    def _ping(self) -> None:
        if self.lost or self.closing:
            return
        with contextlib.suppress(InvalidState):
            self.conn.send_ping(os.urandom(4))
        self._flush()
        timeout = self.config.ws_ping_timeout
        if timeout:
            self.timers["pong"] = self.loop.call_later(timeout, self._ping_timed_out)
        self._keepalive()

    def _alive(self) -> None:
        """Anything received proves the peer alive (a pong may queue behind frames)."""
        timer = self.timers.pop("pong", None)
        if timer is not None:
            timer.cancel()

    def _ping_timed_out(self) -> None:
        self.timers.pop("pong", None)
        if self.connection is not None:
            self.connection.session.close_soon(CLOSE_KEEPALIVE)
        elif self.transport is not None:
            self.transport.close()
