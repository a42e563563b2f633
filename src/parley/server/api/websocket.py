"""The push websocket (``/v1/websocket``): raw ASGI glue around ``DeliverySession``.

Besides acknowledgements, a connected client may send messages over the same
socket (as Signal's clients do), which avoids an HTTP request per message:

    {"type": "send", "request_id": R, "to": ACCOUNT, "client_id": C,
     "messages": [{"device_id": D, "envelope": B64}, ...]}
    {"type": "send_group", "request_id": R, "group": GID, "client_id": C, "envelope": B64}

Each is answered, possibly out of order, by ``{"type": "response",
"request_id": R, "status": S, "body": {...}}`` with the same body and status
the HTTP routes give (``{"server_ms", "duplicate"}``, or ``{"error": ...}``).
Up to ``MAX_REQUESTS_IN_FLIGHT`` requests per socket run concurrently, so
their commits share group commits. The session logic lives in
``handlers/delivery.py`` and talks to a two-method transport.

This is the hot path (four frames per message: send, response, push, ack),
so it skips the framework: ``PushSocket`` takes the websocket scope for this
path before FastAPI routing and speaks ASGI directly (no Starlette
``WebSocket`` state machine, no per-send wrappers). The HTTP API keeps the
framework. An error inside is logged by type only, as ``InternalErrors`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
from parley.server.handlers.messages import MessagesHandler

log = logging.getLogger("parley.server")
MAX_REQUESTS_IN_FLIGHT = 64
MAX_ENVELOPE_B64 = 400_000


class Socket:
    """One websocket as ASGI gives it: the transport ``DeliverySession`` talks to."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.receive = receive
        self._send = send
        self.headers = {k.lower(): v for k, v in scope.get("headers", [])}
        client = scope.get("client")
        self.ip = str(client[0]) if client else "unknown"

    async def accept(self) -> bool:
        """Take the handshake; False if the client went away first."""
        if (await self.receive())["type"] != "websocket.connect":
            return False
        await self._send({"type": "websocket.accept"})
        return True

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int) -> None:
        await self._send({"type": "websocket.close", "code": code})


def _text(frame: dict[str, Any], name: str, max_len: int) -> str:
    value = frame.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise BadRequest(f"{name} must be a string of 1..{max_len} characters", "invalid_request")
    return value


async def _send(messages: MessagesHandler, who: Principal, frame: dict[str, Any]) -> dict[str, Any]:
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
        result = await messages.send_direct(
            who, _text(frame, "to", 64), _text(frame, "client_id", 64), envelopes
        )
    else:
        envelope = b64(_text(frame, "envelope", MAX_ENVELOPE_B64), "envelope", max_length=300_000)
        result = await messages.send_group(
            who, _text(frame, "group", 64), _text(frame, "client_id", 64), envelope
        )
    return {"server_ms": result.server_ms, "duplicate": result.duplicate}


class _Connection:
    """One authenticated socket: reads frames, runs sends, hands acks to the session."""

    def __init__(
        self,
        websocket: Socket,
        who: Principal,
        messages: MessagesHandler,
        session: DeliverySession,
    ) -> None:
        self.websocket = websocket
        self.who = who
        self.messages = messages
        self.session = session
        self.slots = asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)
        self.requests: set[asyncio.Task[None]] = set()

    async def answer(self, frame: dict[str, Any]) -> None:
        try:
            body, status = await _send(self.messages, self.who, frame), 200
        except ApiError as exc:
            body = {"error": {"code": exc.code, "message": exc.message, **exc.details()}}
            status = exc.http_status
        finally:
            self.slots.release()
        self.session.send_control(
            {"type": "response", "request_id": frame["request_id"], "status": status, "body": body}
        )

    async def handle(self, frame: object) -> None:
        """One parsed frame; ``FrameError`` closes the socket."""
        if isinstance(frame, dict) and frame.get("type") in ("send", "send_group"):
            request_id = frame.get("request_id")
            if (
                not isinstance(request_id, int | str)
                or isinstance(request_id, bool)
                or len(str(request_id)) > 64
            ):
                raise FrameError(CLOSE_POLICY, "request_id must be an integer or a short string")
            await self.slots.acquire()
            task = asyncio.create_task(self.answer(frame))
            self.requests.add(task)
            task.add_done_callback(self.requests.discard)
        else:
            await self.session.on_message(frame)

    async def read(self) -> None:
        while not self.session.closed.is_set():
            message: Message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                raise FrameError(CLOSE_POLICY, "binary frames are not part of the protocol")
            try:
                frame = edge.loads(text)  # the same rules as HTTP bodies
            except BadRequest as exc:
                raise FrameError(CLOSE_INVALID_DATA, exc.message) from exc
            await self.handle(frame)

    async def drain(self) -> None:
        """A message acknowledged to its sender is committed: let requests finish."""
        if self.requests:
            await asyncio.gather(*self.requests, return_exceptions=True)


Endpoint = Callable[[Socket], Awaitable[None]]


def websocket_endpoint(
    accounts: AccountsHandler,
    messages: MessagesHandler,
    deliveries: Deliveries,
) -> Endpoint:
    async def endpoint(websocket: Socket) -> None:
        authorization = websocket.headers.get(b"authorization")
        try:
            who = await accounts.authenticate(
                authorization.decode("latin-1") if authorization else None, websocket.ip
            )
        except ApiError:
            await websocket.close(CLOSE_POLICY)  # before the handshake: HTTP 403
            return
        if not await websocket.accept():
            return
        session = await deliveries.open(who.account_id, who.device_id, websocket)
        pusher = asyncio.create_task(session.run())
        connection = _Connection(websocket, who, messages, session)
        try:
            await connection.read()
        except FrameError as exc:
            session.close_soon(exc.code)
        except OSError:  # the client went away mid-frame
            pass
        finally:
            deliveries.close(session)
            await connection.drain()
            session.close_soon(1000)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pusher, 5)

    return endpoint


class PushSocket:
    """ASGI middleware: the push websocket path goes to ``endpoint`` directly."""

    PATH = "/v1/websocket"

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state  # "push": the endpoint, once start-up has built it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or scope["path"] != self.PATH:
            await self.app(scope, receive, send)
            return
        socket = Socket(scope, receive, send)
        endpoint: Endpoint | None = self.state.get("push")
        if endpoint is None:  # still starting
            await socket.close(1013)
            return
        try:
            await endpoint(socket)
        except Exception as exc:
            log.error("internal error: %s", type(exc).__name__)
