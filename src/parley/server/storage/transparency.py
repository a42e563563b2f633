"""The transparency log's entries (append-only by construction: no update or delete path).

Several nodes may append at once: on PostgreSQL every append first takes one
transaction-scoped advisory lock, so appends are serialised on the head (the
next index is read and written under it); SQLite has one writer anyway, and a
unique ``seq`` refuses a second entry at an index in both.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.server.storage.tables import translog_entries

LOG_LOCK = 0x7061726C  # "parl": the advisory lock serialising appends on PostgreSQL
Within = Callable[[AsyncConnection], Awaitable[None]]


class TransparencyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(
        self, kind: str, body: bytes, leaf_hash: bytes, now_ms: int, within: Within | None = None
    ) -> int:
        """Append at the next index (retried if another writer took it first).
        ``within`` runs first in the same transaction: writes that must commit
        with the entry or not at all (a key-directory epoch and its fence)."""
        for _ in range(20):
            try:
                async with self._engine.begin() as conn:
                    if conn.dialect.name == "postgresql":
                        await conn.execute(
                            text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOG_LOCK}
                        )
                    if within is not None:
                        await within(conn)
                    count = (
                        await conn.execute(select(func.count()).select_from(translog_entries))
                    ).scalar_one()
                    await conn.execute(
                        insert(translog_entries).values(
                            seq=count, kind=kind, body=body, leaf_hash=leaf_hash, at_ms=now_ms
                        )
                    )
                    return int(count)
            except IntegrityError:
                continue
        raise RuntimeError("could not append to the transparency log")

    async def size(self) -> int:
        async with self._engine.connect() as conn:
            return int(
                (
                    await conn.execute(select(func.count()).select_from(translog_entries))
                ).scalar_one()
            )

    async def leaf_hashes(self, start: int = 0) -> list[bytes]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(translog_entries.c.leaf_hash)
                .where(translog_entries.c.seq >= start)
                .order_by(translog_entries.c.seq)
            )
            return [bytes(r.leaf_hash) for r in rows]

    async def entries(self, start: int, end: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(translog_entries)
                .where(translog_entries.c.seq >= start, translog_entries.c.seq < end)
                .order_by(translog_entries.c.seq)
            )
            return [
                {"index": r.seq, "kind": r.kind, "body": json.loads(r.body), "raw": bytes(r.body)}
                for r in rows
            ]
