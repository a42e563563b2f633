"""Token-bucket rate limits (as Signal's server uses).

One bucket per key (e.g. ``("code", phone)``); ``capacity`` requests at
once, refilled at ``per_s`` tokens a second. A refused request raises
``RateLimited`` with the seconds until a token is back (429 + Retry-After).

``RateLimiter`` keeps the buckets in this process: the embedded single-node
server. A cluster uses ``storage/buckets.py`` (the same buckets in Redis,
shared by every node and kept across restarts); handlers see only ``Limiter``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from parley.errors import RateLimited

MAX_KEYS = 100_000


class Limiter(Protocol):
    async def check(self, kind: str, key: str, capacity: float, per_s: float) -> None: ...

    def check_now(self, kind: str, key: str, capacity: float, per_s: float) -> bool:
        """``check`` without waiting, where this limiter can decide without I/O: True
        once a token is taken (``RateLimited`` if refused); False, with nothing taken,
        where only ``check`` can decide (the cluster's buckets are in Redis)."""
        ...


def retry_after(tokens: float, per_s: float) -> int:
    return max(1, math.ceil((1 - tokens) / per_s))


class RateLimiter:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    async def check(self, kind: str, key: str, capacity: float, per_s: float) -> None:
        self.take(kind, key, capacity, per_s)

    def check_now(self, kind: str, key: str, capacity: float, per_s: float) -> bool:
        self.take(kind, key, capacity, per_s)
        return True

    def take(self, kind: str, key: str, capacity: float, per_s: float) -> None:
        now = self._clock()
        tokens, last = self._buckets.get((kind, key), (capacity, now))
        tokens = min(capacity, tokens + (now - last) * per_s)
        if tokens < 1:
            raise RateLimited(retry_after(tokens, per_s))
        if len(self._buckets) >= MAX_KEYS:
            self._buckets.clear()  # bounded memory; a reset only ever favours the client
        self._buckets[(kind, key)] = (tokens - 1, now)
