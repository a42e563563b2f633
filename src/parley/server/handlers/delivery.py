"""The push protocol for one connected device, independent of the web framework.

Theory of operation (after Signal's server). Frames are JSON text.
Server -> client: ``{"type": "message", "id", "sender", "sender_device",
"group", "server_ms", "envelope", "franking_tag"}``, ``{"type":
"queue_empty"}`` once the stored backlog has been sent, ``{"type":
"prekeys_low", ...}``, and ``{"type": "response", ...}`` to sends made over
the socket (``api/websocket.py``). Client -> server: ``{"type": "ack", "ids": [...]}``.
A message stays in the database until its ack; at most ``window`` messages
are unacknowledged at once.

The session starts in *backlog* mode and reads its queue from the database
in id order. Once a read comes back short, it switches to *live* mode, where
the queue writer hands it freshly committed rows directly (no database read).
Rows handed over while a backlog read is in flight are buffered and merged by
id, so nothing committed during the read is skipped. If the in-memory outbox
grows past ``MAX_OUTBOX`` (a slow reader), it is dropped and the session goes
back to backlog mode: the database is always the record.

Malformed client frames close the socket: 1007 for bytes that are not UTF-8
JSON, 1008 for JSON that is not a valid frame.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import deque
from typing import Any, Protocol

from parley.server.storage.queue import MessageQueue, QueuedMessage

CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_REPLACED = 4409
CLOSE_REVOKED = 4403
MAX_OUTBOX = 5000
MAX_ACK_IDS = 1000


class Transport(Protocol):
    async def send_text(self, text: str) -> None: ...
    async def close(self, code: int) -> None: ...


class FrameError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def message_frame(row: QueuedMessage) -> dict[str, Any]:
    return {
        "type": "message",
        "id": row.guid,
        "sender": row.sender_account,
        "sender_device": row.sender_device,
        "group": row.group_id,
        "server_ms": row.server_ms,
        "envelope": base64.b64encode(row.envelope).decode(),
        "franking_tag": base64.b64encode(row.franking_tag).decode(),
    }


class DeliverySession:
    def __init__(
        self,
        account_id: str,
        device_id: int,
        queue: MessageQueue,
        transport: Transport,
        window: int,
    ) -> None:
        self.owner = (account_id, device_id)
        self._queue = queue
        self._transport = transport
        self._window = window
        self._outbox: deque[QueuedMessage] = deque()
        self._control: deque[dict[str, Any]] = deque()
        self._inflight: set[str] = set()
        self._backlog = True
        self._reading = False
        self._read_buffer: list[QueuedMessage] = []
        self._known_id = 0  # highest id pushed or waiting in the outbox
        self._last_pushed = 0
        self._empty_sent = False
        self._wake = asyncio.Event()
        self._wake.set()
        self._close_code: int | None = None
        self.closed = asyncio.Event()

    # -- inputs -------------------------------------------------------------------------

    def offer(self, rows: list[QueuedMessage]) -> None:
        """Freshly committed rows for this device, in id order (from the queue writer)."""
        if self._backlog:
            if self._reading:
                self._read_buffer.extend(rows)
            return  # committed: the next backlog read will find them
        for row in rows:
            if row.id > self._known_id:
                self._outbox.append(row)
                self._known_id = row.id
        if len(self._outbox) > MAX_OUTBOX:
            self._outbox.clear()
            self._known_id = self._last_pushed
            self._backlog = True
        self._wake.set()

    def send_control(self, frame: dict[str, Any]) -> None:
        self._control.append(frame)
        self._wake.set()

    def close_soon(self, code: int) -> None:
        """Close with ``code``; the first reason given wins."""
        if self._close_code is None:
            self._close_code = code
        self._wake.set()

    async def on_frame(self, text: str) -> None:
        """Handle one client frame; ``FrameError`` means close with its code."""
        try:
            frame = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FrameError(CLOSE_INVALID_DATA, "frame is not JSON") from exc
        await self.on_message(frame)

    async def on_message(self, frame: object) -> None:
        """Handle one parsed client frame (only acks belong to the session itself)."""
        if not isinstance(frame, dict) or frame.get("type") != "ack":
            raise FrameError(CLOSE_POLICY, "unknown frame type")
        ids = frame.get("ids")
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_ACK_IDS
            or not all(isinstance(i, str) for i in ids)
        ):
            raise FrameError(CLOSE_POLICY, "ack needs a list of message ids")
        mine = [i for i in ids if i in self._inflight]  # only what was pushed to this device
        for i in mine:
            self._inflight.discard(i)
        if mine:
            self._queue.delete_soon(mine)  # the read loop must not wait for a commit
        self._wake.set()

    # -- the sender loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Push until closed; returns after closing the transport."""
        try:
            while self._close_code is None:
                await self._wake.wait()
                self._wake.clear()
                await self._pump()
        finally:
            code = self._close_code or 1000
            with contextlib.suppress(Exception):
                await self._transport.close(code)
            self.closed.set()

    async def _pump(self) -> None:
        while self._control and self._close_code is None:
            await self._transport.send_text(json.dumps(self._control.popleft()))
        while self._close_code is None and len(self._inflight) < self._window:
            if not self._outbox and self._backlog:
                await self._read_backlog(self._window - len(self._inflight))
            if not self._outbox:
                break
            row = self._outbox.popleft()
            self._inflight.add(row.guid)
            self._last_pushed = row.id
            await self._transport.send_text(json.dumps(message_frame(row)))
        if (
            not self._backlog
            and not self._outbox
            and not self._empty_sent
            and self._close_code is None
        ):
            self._empty_sent = True
            await self._transport.send_text('{"type": "queue_empty"}')

    async def _read_backlog(self, room: int) -> None:
        limit = max(room, 1)
        self._reading, self._read_buffer = True, []
        try:
            rows, last = await self._queue.page(
                self.owner[0], self.owner[1], self._known_id, limit, time.time_ns() // 1_000_000
            )
        finally:
            self._reading = False
        self._outbox.extend(rows)
        if last is not None:
            self._known_id = last  # a full page: more may follow, read on from here
        else:
            if rows:
                self._known_id = rows[-1].id
            self._backlog = False
            for row in self._read_buffer:
                if row.id > self._known_id:
                    self._outbox.append(row)
                    self._known_id = row.id
        self._read_buffer = []
