"""Server secrets (franking-tag key, credential pepper), created once, kept in the database
so that every server process on the same database shares them."""

from __future__ import annotations

import secrets

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage.tables import server_secrets


async def load_or_create(engine: AsyncEngine, name: str) -> bytes:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == name))
        ).first()
    if row is not None:
        return bytes(row.value)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(server_secrets).values(name=name, value=secrets.token_bytes(32))
            )
    except IntegrityError:
        pass  # another process created it first
    return await load_or_create(engine, name)
