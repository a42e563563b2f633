"""Key-directory state: each account's published version and value, and the key
material the directory is built from (identity keys and device lists)."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage.tables import accounts, devices, kt_state


class KtStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def key_states(self) -> dict[str, tuple[bytes, list[int]]]:
        """account id -> (identity key, device ids), as the database holds them now."""
        async with self._engine.connect() as conn:
            identities = {
                r.id: bytes(r.identity_key)
                for r in await conn.execute(select(accounts.c.id, accounts.c.identity_key))
            }
            found: dict[str, list[int]] = defaultdict(list)
            for r in await conn.execute(select(devices.c.account_id, devices.c.device_id)):
                found[r.account_id].append(int(r.device_id))
        return {a: (k, sorted(found.get(a, []))) for a, k in identities.items()}

    async def published(self) -> dict[str, tuple[int, bytes]]:
        async with self._engine.connect() as conn:
            return {
                r.account_id: (int(r.version), bytes(r.value_hash))
                for r in await conn.execute(select(kt_state))
            }

    async def save(self, changed: dict[str, tuple[int, bytes]], removed: list[str]) -> None:
        async with self._engine.begin() as conn:
            for account, (version, value) in changed.items():
                result = await conn.execute(
                    update(kt_state)
                    .where(kt_state.c.account_id == account)
                    .values(version=version, value_hash=value)
                )
                if not result.rowcount:
                    await conn.execute(
                        insert(kt_state).values(
                            account_id=account, version=version, value_hash=value
                        )
                    )
            if removed:
                await conn.execute(delete(kt_state).where(kt_state.c.account_id.in_(removed)))
