"""The public transparency log: every lawful request, every staff decision on
one, and every privacy-policy version, as RFC 6962 leaves with signed heads.

An entry's leaf is ``leaf_hash(canonical JSON (RFC 8785) of {"kind", ...})``;
entries hold no personal data (jurisdiction, category, dates, outcome, counts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import rfc8785

from parley.crypto.primitives import SigningKey
from parley.errors import BadRequest
from parley.server.storage.transparency import TransparencyStore, Within
from parley.translog import merkle
from parley.translog.heads import TreeHead, sign_head


def canonical(value: Any) -> bytes:
    return bytes(rfc8785.dumps(value))


class TransparencyHandler:
    def __init__(
        self, store: TransparencyStore, key: SigningKey, clock_ms: Callable[[], int]
    ) -> None:
        self._store = store
        self.key = key
        self._now = clock_ms
        self._log = merkle.MerkleLog()

    async def _sync(self) -> merkle.MerkleLog:
        """Leaves in memory, topped up from the database (another process may append)."""
        start = len(self._log)
        if await self._store.size() > start:
            fresh = await self._store.leaf_hashes(start)
            # Another request may have topped up meanwhile: add only what is still new.
            self._log.extend(fresh[len(self._log) - start :])
        return self._log

    async def append(self, kind: str, fields: dict[str, Any], within: Within | None = None) -> int:
        body = canonical({"kind": kind, **fields})
        index = await self._store.append(kind, body, merkle.leaf_hash(body), self._now(), within)
        await self._sync()
        return index

    async def size(self) -> int:
        return len(await self._sync())

    async def head(self) -> TreeHead:
        log = await self._sync()
        return sign_head(self.key, len(log), log.root(len(log)), self._now())

    async def inclusion(self, index: int, size: int) -> list[bytes]:
        log = await self._sync()
        if not 0 <= index < size <= len(log):
            raise BadRequest("need 0 <= index < size <= the log's size", "invalid_request")
        return log.inclusion_proof(index, size)

    async def consistency(self, first: int, second: int) -> list[bytes]:
        log = await self._sync()
        if not 0 < first <= second <= len(log):
            raise BadRequest("need 0 < first <= second <= the log's size", "invalid_request")
        return log.consistency_proof(first, second)

    async def entries(self, start: int, end: int) -> list[dict[str, Any]]:
        if start < 0 or end < start or end - start > 1000:
            raise BadRequest("ask for at most 1000 entries, start <= end", "invalid_request")
        return await self._store.entries(start, end)
