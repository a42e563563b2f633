"""A named lease in the database, with a fencing token.

Theory of operation. Singleton work (key-directory epochs, maintenance, user
notices) must run on exactly one node of a cluster. Each node tries to take
or renew the ``leader`` row every ``RENEW_S``: it holds the lease while its
row is unexpired, and a node takes over an expired row by bumping ``token``.

Holding a lease is not enough for a write that must never happen twice (a
key-directory epoch): a node paused past its expiry (GC, a stalled disk, a
lost connection) may still believe it leads. Such writes call ``fence`` in
their own transaction: it locks the lease row (``FOR UPDATE`` on PostgreSQL;
SQLite has one writer) and checks that this node still holds it with the
token it acquired. A stale leader's transaction fails and rolls back, and a
new leader cannot take the row while a fenced write is in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.server.storage.tables import leases

log = logging.getLogger(__name__)

TTL_MS = 10_000
RENEW_S = 2.0


class LeaseLost(Exception):
    """This node no longer holds the lease: its fenced write was refused."""


class Lease:
    def __init__(
        self, engine: AsyncEngine, name: str, holder: str, clock_ms: Callable[[], int]
    ) -> None:
        self._engine = engine
        self._name = name
        self._holder = holder
        self._now = clock_ms
        self.token: int | None = None
        self._until = 0

    @property
    def held(self) -> bool:
        # Stop acting a little before the row expires, so a successor never overlaps.
        return self.token is not None and self._now() < self._until - RENEW_S * 1000

    async def renew(self) -> bool:
        """Take or renew the lease; True while this node holds it."""
        try:
            self.token = await self._take()
        except IntegrityError:  # another node created the row first
            self.token = None
        if self.token is not None:
            self._until = self._now() + TTL_MS
        return self.held

    async def _take(self) -> int | None:
        now = self._now()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(leases.c.holder, leases.c.token, leases.c.expires_ms)
                    .where(leases.c.name == self._name)
                    .with_for_update()
                )
            ).first()
            if row is None:
                await conn.execute(
                    insert(leases).values(
                        name=self._name, holder=self._holder, token=1, expires_ms=now + TTL_MS
                    )
                )
                return 1
            mine = row.holder == self._holder and row.token == self.token
            if not mine and row.expires_ms > now:
                return None
            token = int(row.token) if mine else int(row.token) + 1
            await conn.execute(
                update(leases)
                .where(leases.c.name == self._name)
                .values(holder=self._holder, token=token, expires_ms=now + TTL_MS)
            )
            if not mine:
                log.info("this node now holds the lease")
            return token

    async def fence(self, conn: AsyncConnection) -> None:
        """Inside a write transaction: lock the lease row and check it is still ours."""
        row = (
            await conn.execute(
                select(leases.c.token)
                .where(
                    leases.c.name == self._name,
                    leases.c.holder == self._holder,
                    leases.c.expires_ms > self._now(),
                )
                .with_for_update()
            )
        ).first()
        if row is None or self.token is None or int(row.token) != self.token:
            self.token = None
            raise LeaseLost(self._name)

    async def release(self) -> None:
        """On shutdown: let another node take over at once instead of after the TTL."""
        if self.token is None:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                update(leases)
                .where(
                    leases.c.name == self._name,
                    leases.c.holder == self._holder,
                    leases.c.token == self.token,
                )
                .values(expires_ms=0)
            )
        self.token = None
