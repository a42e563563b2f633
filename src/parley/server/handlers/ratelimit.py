"""Token-bucket rate limits (as Signal's server uses), kept in memory.

One bucket per key (e.g. ``("code", phone)``); ``capacity`` requests at
once, refilled at ``per_s`` tokens a second. A refused request raises
``RateLimited`` with the seconds until a token is back (429 + Retry-After).
In-memory buckets are per process: a multi-process deployment would move
them to Redis (the fan-out's broker), which this interface allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from parley.errors import RateLimited

MAX_KEYS = 100_000


class RateLimiter:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def check(self, kind: str, key: str, capacity: float, per_s: float) -> None:
        now = self._clock()
        tokens, last = self._buckets.get((kind, key), (capacity, now))
        tokens = min(capacity, tokens + (now - last) * per_s)
        if tokens < 1:
            raise RateLimited(max(1, math.ceil((1 - tokens) / per_s)))
        if len(self._buckets) >= MAX_KEYS:
            self._buckets.clear()  # bounded memory; a reset only ever favours the client
        self._buckets[(kind, key)] = (tokens - 1, now)
