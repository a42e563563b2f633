"""Encrypted attachment blobs: upload and fetch by an unguessable id, with a size limit and expiry."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from parley.errors import NotFound, PayloadTooLarge
from parley.server.handlers.accounts import Principal
from parley.server.handlers.ratelimit import Limiter
from parley.server.storage.blobs import BlobStore


class AttachmentsHandler:
    def __init__(
        self,
        blobs: BlobStore,
        limiter: Limiter,
        max_bytes: int,
        ttl_ms: int,
        clock_ms: Callable[[], int],
    ) -> None:
        self._blobs = blobs
        self._limiter = limiter
        self.max_bytes = max_bytes
        self._ttl = ttl_ms
        self._now = clock_ms

    async def upload(self, who: Principal, data: bytes) -> tuple[str, int]:
        await self._limiter.check("attachment", who.account_id, 50, 1)
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(f"attachments are limited to {self.max_bytes} bytes")
        blob_id = secrets.token_hex(16)
        expires = self._now() + self._ttl
        await self._blobs.put(blob_id, data, expires)
        return blob_id, expires

    async def download(self, who: Principal, blob_id: str) -> bytes:
        await self._limiter.check("attachment-get", who.account_id, 200, 5)
        if len(blob_id) != 32 or not all(c in "0123456789abcdef" for c in blob_id):
            raise NotFound("no such attachment")
        data = await self._blobs.get(blob_id, self._now())
        if data is None:
            raise NotFound("no such attachment")
        return data
