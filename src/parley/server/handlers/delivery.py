"""The push protocol for one connected device, independent of the web framework.

Theory of operation (after Signal's server). Frames are JSON text.
Server -> client: ``{"type": "message", "id", "sender", "sender_device",
"group", "server_ms", "envelope", "franking_tag"}``, ``{"type":
"queue_empty"}`` once the stored backlog has been sent, ``{"type":
"prekeys_low", ...}``, and ``{"type": "response", ...}`` to sends made over
the socket (``api/websocket.py``). Client -> server: ``{"type": "ack", "ids": [...]}``.
A message stays in the database until its ack; at most ``window`` messages
are unacknowledged at once.

The session starts in *backlog* mode: a *pass* reads its queue from the
database in id order, page by page, skipping rows already queued here (by
message id). Once a page comes back short, it switches to *live* mode, where
this process's queue writer hands it freshly committed rows directly (no
database read). Rows handed over during a pass are buffered and merged at its
end. A row committed by another node (or while signals were down) arrives as
``available()``, which starts a new pass: with several writers a row may
commit after one with a higher id, so passes always start from the front of
the queue, which acks keep short. If the in-memory outbox grows past
``MAX_OUTBOX`` (a slow reader), it is dropped and a pass starts: the database
is always the record.

In live mode, what can go out at once goes out at once: ``offer``, an ack that
frees the window and a control frame push from the caller's own callback
(``Transport.try_send``), so a message costs no wake-up of the session's task.
The task runs what has to wait: backlog passes, a socket that is not writable
(back-pressure), the close. Both take frames from the same queues in order, and
the callback path stands aside while the task is inside its pump, so the order
of frames is the task's order either way.

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

import orjson

from parley.server.fanout.local import LocalFanout
from parley.server.storage.queue import MessageQueue, QueuedMessage

CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
MAX_OUTBOX = 5000
MAX_ACK_IDS = 1000


class Transport(Protocol):
    async def send_text(self, text: str) -> None: ...
    def try_send(self, text: str) -> bool:
        """Send now if the socket takes it without waiting; False (nothing sent)
        when it is not writable or closing."""
        ...

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


def message_text(row: QueuedMessage) -> str:
    return dumps(message_frame(row))


def dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


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
        self.started = time.time()  # a newer connection elsewhere replaces this one
        self._queue = queue
        self._transport = transport
        self._window = window
        self._outbox: deque[QueuedMessage] = deque()
        self._queued: set[str] = set()  # in the outbox or in flight
        self._control: deque[dict[str, Any]] = deque()
        self._inflight: set[str] = set()
        self._backlog = True
        self._cursor = 0  # a backlog pass reads on after this id
        self._again = False  # rows were signalled during a pass: read once more
        self._buffer: list[QueuedMessage] = []  # rows offered while in backlog mode
        self._reading = False
        self._acked_while_reading: set[str] = set()
        self._empty_sent = False
        self._wake = asyncio.Event()
        self._wake.set()
        self._pumping = False  # the task is inside _pump: the callback path stands aside
        self._close_code: int | None = None
        self.closed = asyncio.Event()

    # -- inputs -------------------------------------------------------------------------

    def offer(self, rows: list[QueuedMessage]) -> None:
        """Rows this process just committed for this device (from the queue writer)."""
        if self._backlog:
            self._buffer.extend(rows)
            if len(self._buffer) > MAX_OUTBOX:
                self._buffer.clear()  # committed: a pass reads them
                self._again = True
        else:
            for row in rows:
                self._add(row)
            if len(self._outbox) > MAX_OUTBOX:  # a slow reader: the database holds them
                for row in self._outbox:
                    self._queued.discard(row.guid)
                self._outbox.clear()
                self._start_pass()
        self._kick()

    def available(self) -> None:
        """Rows were committed for this device that no local commit offered (another
        node's, or any while signals were down): read the queue again."""
        if self._backlog:
            self._again = True
        else:
            self._start_pass()
        self._wake.set()

    def send_control(self, frame: dict[str, Any]) -> None:
        self._control.append(frame)
        self._kick()

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
        self.on_ack(frame)

    def on_ack(self, frame: object) -> None:
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
            self._queued.discard(i)
        if self._reading:
            self._acked_while_reading.update(mine)
        if mine:
            self._queue.delete_soon(mine)  # the read loop must not wait for a commit
        self._kick()

    # -- the sender loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Push until closed; returns after closing the transport."""
        try:
            while self._close_code is None:
                await self._wake.wait()
                self._wake.clear()
                self._pumping = True
                try:
                    await self._pump()
                finally:
                    self._pumping = False
        finally:
            code = self._close_code or 1000
            with contextlib.suppress(Exception):
                await self._transport.close(code)
            self.closed.set()

    async def _pump(self) -> None:
        send = self._transport.send_text
        while self._control and self._close_code is None:
            await send(dumps(self._control.popleft()))
        while self._close_code is None and len(self._inflight) < self._window:
            if not self._outbox:
                if not self._backlog:
                    break
                await self._read_page(self._window - len(self._inflight))
                continue  # a page may add nothing yet move the pass on
            row = self._outbox.popleft()
            self._inflight.add(row.guid)
            await send(message_text(row))
        if (
            not self._backlog
            and not self._outbox
            and not self._empty_sent
            and self._close_code is None
        ):
            self._empty_sent = True
            await send('{"type": "queue_empty"}')

    def _kick(self) -> None:
        """Push what can go now from here; wake the task for whatever cannot."""
        if self._pumping or self._backlog or self._close_code is not None or not self._push_now():
            self._wake.set()

    def _push_now(self) -> bool:
        """``_pump``'s live-mode work without waiting: False when something is left
        that only the task can do (the socket stopped taking frames)."""
        try_send = self._transport.try_send
        control = self._control
        while control:
            if not try_send(dumps(control[0])):
                return False
            control.popleft()
        outbox, inflight = self._outbox, self._inflight
        while outbox and len(inflight) < self._window:
            row = outbox[0]
            if not try_send(message_text(row)):
                return False
            outbox.popleft()
            inflight.add(row.guid)
        if not outbox and not self._empty_sent:
            if not try_send('{"type": "queue_empty"}'):
                return False
            self._empty_sent = True
        return True

    def _add(self, row: QueuedMessage) -> None:
        if row.guid not in self._queued:
            self._queued.add(row.guid)
            self._outbox.append(row)

    def _start_pass(self) -> None:
        self._backlog = True
        self._cursor = 0

    async def _read_page(self, room: int) -> None:
        """One page of a backlog pass. A pass reads the device's queue in id order
        from the start, skipping what is already queued here: with several writers
        (nodes) a row can commit after a row with a higher id, so no id is a safe
        place to resume from once a pass has ended."""
        limit = max(room, 1) + len(self._inflight)  # in-flight rows come first by id
        self._reading, self._acked_while_reading = True, set()
        try:
            rows, last = await self._queue.page(
                self.owner[0], self.owner[1], self._cursor, limit, time.time_ns() // 1_000_000
            )
        finally:
            self._reading = False
        for row in rows:
            if row.guid not in self._acked_while_reading:
                self._add(row)
        self._acked_while_reading = set()
        if last is not None:
            self._cursor = last  # a full page: the pass goes on
            return
        self._cursor = 0
        if self._again:
            self._again = False  # signalled during the pass: one more from the start
            return
        self._backlog = False
        for row in self._buffer:
            self._add(row)
        self._buffer = []


class Deliveries:
    """Push sessions: opened for a connected device and registered with the fan-out
    (which replaces an older connection of the same device, here or on another node)."""

    def __init__(self, queue: MessageQueue, window: int, fanout: LocalFanout) -> None:
        self._queue = queue
        self._window = window
        self._fanout = fanout

    async def open(self, account_id: str, device_id: int, transport: Transport) -> DeliverySession:
        session = DeliverySession(account_id, device_id, self._queue, transport, self._window)
        await self._fanout.register(session)
        return session

    def close(self, session: DeliverySession) -> None:
        self._fanout.unregister(session)
