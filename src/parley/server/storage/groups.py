"""Group membership (the server keeps it, as Telegram does, to fan messages out)."""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage.tables import group_members, groups


class GroupStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, group_id: str, admin: str, members: list[str], now_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(groups).values(id=group_id, created_ms=now_ms))
            await conn.execute(
                insert(group_members),
                [
                    {"group_id": group_id, "account_id": m, "admin": m == admin}
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

    async def add(self, group_id: str, account_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(group_members).values(group_id=group_id, account_id=account_id, admin=False)
            )

    async def remove(self, group_id: str, account_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(group_members).where(
                    group_members.c.group_id == group_id, group_members.c.account_id == account_id
                )
            )
            left = (
                await conn.execute(
                    select(group_members.c.account_id).where(group_members.c.group_id == group_id)
                )
            ).first()
            if left is None:
                await conn.execute(delete(groups).where(groups.c.id == group_id))

    async def groups_of(self, account_id: str) -> list[str]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(group_members.c.group_id).where(group_members.c.account_id == account_id)
            )
            return [r.group_id for r in rows]
