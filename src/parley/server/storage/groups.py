"""Group membership (the server keeps it, as Telegram does, to fan messages out).

Each membership has the time it began; when it ends (removed, or left) its
span moves to ``group_departures`` and is kept until pruned, so a report can
ask whether the reporter was a member when a message was delivered.
"""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage.tables import group_changes, group_departures, group_members, groups


class GroupStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, group_id: str, admin: str, members: list[str], now_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(groups).values(id=group_id, created_ms=now_ms))
            await conn.execute(
                insert(group_members),
                [
                    {
                        "group_id": group_id,
                        "account_id": m,
                        "admin": m == admin,
                        "joined_ms": now_ms,
                    }
                    for m in dict.fromkeys([admin, *members])
                ],
            )

    async def members(self, group_id: str) -> dict[str, bool]:
        """account id -> is admin; empty if the group does not exist."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(group_members.c.account_id, group_members.c.admin).where(
                    group_members.c.group_id == group_id
                )
            )
            return {r.account_id: bool(r.admin) for r in rows}

    async def add(self, group_id: str, account_id: str, now_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(group_members).values(
                    group_id=group_id, account_id=account_id, admin=False, joined_ms=now_ms
                )
            )

    async def remove(self, group_id: str, account_id: str, now_ms: int) -> None:
        """End a membership, keeping its span; the group goes with its last member."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(group_members.c.joined_ms).where(
                        group_members.c.group_id == group_id,
                        group_members.c.account_id == account_id,
                    )
                )
            ).first()
            if row is None:
                return
            await conn.execute(
                delete(group_members).where(
                    group_members.c.group_id == group_id, group_members.c.account_id == account_id
                )
            )
            await conn.execute(
                insert(group_departures).values(
                    group_id=group_id,
                    account_id=account_id,
                    joined_ms=row.joined_ms,
                    left_ms=now_ms,
                )
            )
            left = (
                await conn.execute(
                    select(group_members.c.account_id).where(group_members.c.group_id == group_id)
                )
            ).first()
            if left is None:
                await conn.execute(delete(groups).where(groups.c.id == group_id))
                await conn.execute(
                    delete(group_changes).where(group_changes.c.group_id == group_id)
                )

    async def spans(self, group_id: str, account_id: str) -> list[tuple[int, int | None]]:
        """Every kept membership of ``account_id`` in the group as (joined_ms, left_ms),
        ``left_ms`` None for the current one."""
        async with self._engine.connect() as conn:
            current = await conn.execute(
                select(group_members.c.joined_ms).where(
                    group_members.c.group_id == group_id,
                    group_members.c.account_id == account_id,
                )
            )
            spans: list[tuple[int, int | None]] = [(r.joined_ms, None) for r in current]
            ended = await conn.execute(
                select(group_departures.c.joined_ms, group_departures.c.left_ms).where(
                    group_departures.c.group_id == group_id,
                    group_departures.c.account_id == account_id,
                )
            )
            spans += [(r.joined_ms, r.left_ms) for r in ended]
        return spans

    async def prune_departures(self, before_ms: int) -> int:
        """Forget memberships that ended before ``before_ms``."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(group_departures).where(group_departures.c.left_ms < before_ms)
            )
        return int(result.rowcount or 0)

    async def append_change(
        self, group_id: str, version: int, blob: bytes, now_ms: int
    ) -> int | None:
        """Store a sealed change if ``version`` is the next one; else the next version."""
        try:
            async with self._engine.begin() as conn:
                current = (
                    await conn.execute(
                        select(func.max(group_changes.c.version)).where(
                            group_changes.c.group_id == group_id
                        )
                    )
                ).scalar_one()
                expected = 0 if current is None else int(current) + 1
                if version != expected:
                    return expected
                await conn.execute(
                    insert(group_changes).values(
                        group_id=group_id, version=version, blob=blob, created_ms=now_ms
                    )
                )
        except IntegrityError:  # another change took this version first
            return await self.next_version(group_id)
        return None

    async def next_version(self, group_id: str) -> int:
        async with self._engine.connect() as conn:
            current = (
                await conn.execute(
                    select(func.max(group_changes.c.version)).where(
                        group_changes.c.group_id == group_id
                    )
                )
            ).scalar_one()
        return 0 if current is None else int(current) + 1

    async def changes(self, group_id: str, since: int, limit: int) -> list[tuple[int, bytes]]:
        """Sealed changes from version ``since`` on, in order."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(group_changes.c.version, group_changes.c.blob)
                .where(group_changes.c.group_id == group_id, group_changes.c.version >= since)
                .order_by(group_changes.c.version)
                .limit(limit)
            )
            return [(int(r.version), bytes(r.blob)) for r in rows]

    async def groups_of(self, account_id: str) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(group_members.c.group_id).where(group_members.c.account_id == account_id)
            )
            return [r.group_id for r in rows]
