"""The in-process registry of connected devices.

``deliver`` is called by the queue writer right after a commit, in id order;
it only appends to each session's outbox and wakes it, so one slow socket
never holds up the others (no sequential awaits across sockets).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from parley.server.handlers.delivery import CLOSE_REPLACED, CLOSE_REVOKED, DeliverySession
from parley.server.storage.queue import QueuedMessage


class LocalFanout:
    def __init__(self) -> None:
        self._sessions: dict[tuple[str, int], DeliverySession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def register(self, session: DeliverySession) -> None:
        """A new connection from the same device replaces the old one (close 4409)."""
        old = self._sessions.get(session.owner)
        self._sessions[session.owner] = session
        if old is not None:
            old.close_soon(CLOSE_REPLACED)

    def unregister(self, session: DeliverySession) -> None:
        if self._sessions.get(session.owner) is session:
            del self._sessions[session.owner]

    def deliver(self, rows: list[QueuedMessage]) -> None:
        by_device: dict[tuple[str, int], list[QueuedMessage]] = defaultdict(list)
        for row in rows:
            by_device[(row.account_id, row.device_id)].append(row)
        for owner, device_rows in by_device.items():
            session = self._sessions.get(owner)
            if session is not None:
                session.offer(device_rows)

    def notify(self, account_id: str, device_id: int, frame: dict[str, Any]) -> None:
        session = self._sessions.get((account_id, device_id))
        if session is not None:
            session.send_control(frame)

    def disconnect(self, account_id: str, device_id: int) -> None:
        session = self._sessions.pop((account_id, device_id), None)
        if session is not None:
            session.close_soon(CLOSE_REVOKED)

    def disconnect_account(self, account_id: str) -> None:
        for owner in [o for o in self._sessions if o[0] == account_id]:
            self.disconnect(*owner)

    async def close_all(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            session.close_soon(1001)
        await asyncio.sleep(0)
