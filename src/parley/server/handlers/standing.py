"""Moderation status of accounts, enforced on every request.

The set of accounts under an action is small, so every server process keeps
it in memory and reloads it once a second (``refresh_loop``): an action taken
by ``parley-admin`` from another process takes effect within a second, and
a banned account's sockets are closed when the ban is seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from parley.errors import Forbidden
from parley.server.storage.moderation import StatusStore

REFRESH_S = 1.0


class AccountSuspended(Forbidden):
    code = "account_suspended"


class AccountBanned(Forbidden):
    code = "account_banned"


class AccountRestricted(Forbidden):
    code = "account_restricted"


class Standing:
    def __init__(self, store: StatusStore, clock_ms: Callable[[], int]) -> None:
        self._store = store
        self._now = clock_ms
        self._status: dict[str, tuple[str, int | None]] = {}
        self.on_banned: Callable[[str], None] = lambda _a: None

    def _current(self, account_id: str) -> str:
        status, until = self._status.get(account_id, ("active", None))
        if until is not None and until < self._now():
            return "active"
        return status

    def check_login(self, account_id: str) -> None:
        if self._current(account_id) == "banned":
            raise AccountBanned("this account is banned")

    def check_send(self, account_id: str) -> None:
        status = self._current(account_id)
        if status == "banned":
            raise AccountBanned("this account is banned")
        if status == "suspended":
            raise AccountSuspended("this account is suspended and cannot send")

    def check_grow_groups(self, account_id: str) -> None:
        self.check_send(account_id)
        if self._current(account_id) == "restricted":
            raise AccountRestricted(
                "this account is restricted: it cannot create groups or add members"
            )

    async def refresh(self) -> None:
        fresh = await self._store.all()
        newly_banned = [
            a
            for a, (s, _) in fresh.items()
            if s == "banned" and self._status.get(a, ("",))[0] != "banned"
        ]
        self._status = fresh
        for account in newly_banned:
            self.on_banned(account)

    async def refresh_loop(self, interval_s: float = REFRESH_S) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                logging.getLogger(__name__).warning(
                    "standing refresh failed: %s", type(exc).__name__
                )
            await asyncio.sleep(interval_s)
