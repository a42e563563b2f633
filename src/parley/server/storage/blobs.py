"""Attachment blobs: encrypted bytes on disk under DATA_DIR/attachments, metadata in the database.

The server stores what the client uploaded (a key-committing ciphertext) and
never sees the key. Files are written to a temporary name, fsynced, then
renamed, so a crash never leaves a half-written blob under a valid id.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage.tables import attachments


class BlobStore:
    def __init__(self, engine: AsyncEngine, directory: Path) -> None:
        self._engine = engine
        self._dir = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, blob_id: str) -> Path:
        return self._dir / blob_id

    async def put(self, blob_id: str, data: bytes, expires_ms: int) -> None:
        await asyncio.to_thread(self._write, blob_id, data)
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(attachments).values(id=blob_id, size=len(data), expires_ms=expires_ms)
            )

    def _write(self, blob_id: str, data: bytes) -> None:
        tmp = self._path(blob_id + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        tmp.rename(self._path(blob_id))

    async def get(self, blob_id: str, now_ms: int) -> bytes | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(attachments).where(attachments.c.id == blob_id))
            ).first()
        if row is None or row.expires_ms < now_ms:
            return None
        return await asyncio.to_thread(self._path(blob_id).read_bytes)

    async def prune(self, now_ms: int) -> int:
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(attachments.c.id).where(attachments.c.expires_ms < now_ms)
                )
            ).all()
            await conn.execute(delete(attachments).where(attachments.c.expires_ms < now_ms))
        for row in rows:
            self._path(row.id).unlink(missing_ok=True)
        return len(rows)
