"""The in-process registry of connected devices.

``deliver`` is called by the queue writer right after a commit, in id order;
it only appends to each session's outbox and wakes it, so one slow socket
never holds up the others (no sequential awaits across sockets). The registry
knows sessions only as ``Subscriber``: the push protocol itself lives in
``handlers/delivery.py``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable
from typing import Any, Protocol

from parley.server.storage.queue import QueuedMessage

CLOSE_REPLACED = 4409  # the same device connected again
CLOSE_REVOKED = 4403  # the device was unlinked, or the account banned or deleted


class Subscriber(Protocol):
    owner: tuple[str, int]
    started: float

    def offer(self, rows: list[QueuedMessage]) -> None: ...
    def available(self) -> None: ...
    def send_control(self, frame: dict[str, Any]) -> None: ...
    def close_soon(self, code: int) -> None: ...


class LocalFanout:
    def __init__(self) -> None:
        self.sessions: dict[tuple[str, int], Subscriber] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    async def register(self, session: Subscriber) -> None:
        """A new connection from the same device replaces the old one (close 4409)."""
        old = self.sessions.get(session.owner)
        self.sessions[session.owner] = session
        if old is not None:
            old.close_soon(CLOSE_REPLACED)

    def unregister(self, session: Subscriber) -> None:
        if self.sessions.get(session.owner) is session:
            del self.sessions[session.owner]

    def deliver(
        self, rows: list[QueuedMessage], again: list[tuple[str, int]]
    ) -> Awaitable[None] | None:
        """After a commit: ``rows`` were just stored; ``again`` are the recipients of a
        duplicate send, whose first attempt this process may never have seen. Nothing
        here waits, so it returns None (the queue then answers the senders at once;
        a cluster's may return a signal to await)."""
        for owner, device_rows in by_device(rows).items():
            session = self.sessions.get(owner)
            if session is not None:
                session.offer(device_rows)
        for owner in again:
            session = self.sessions.get(owner)
            if session is not None:
                session.available()
        return None

    def notify(self, account_id: str, device_id: int, frame: dict[str, Any]) -> None:
        session = self.sessions.get((account_id, device_id))
        if session is not None:
            session.send_control(frame)

    def disconnect(self, account_id: str, device_id: int) -> None:
        session = self.sessions.pop((account_id, device_id), None)
        if session is not None:
            session.close_soon(CLOSE_REVOKED)

    def disconnect_account(self, account_id: str) -> None:
        for owner in [o for o in self.sessions if o[0] == account_id]:
            self.disconnect(*owner)

    def all_available(self) -> None:
        for session in list(self.sessions.values()):
            session.available()

    async def close_all(self) -> None:
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for session in sessions:
            session.close_soon(1001)
        await asyncio.sleep(0)


def by_device(rows: list[QueuedMessage]) -> dict[tuple[str, int], list[QueuedMessage]]:
    found: dict[tuple[str, int], list[QueuedMessage]] = defaultdict(list)
    for row in rows:
        found[(row.account_id, row.device_id)].append(row)
    return found
