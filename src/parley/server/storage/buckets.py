"""Token buckets in Redis: one set of rate limits for every node of a cluster.

Each check is one Lua script, so the read-refill-take of a bucket is atomic
however many nodes ask at once, and it uses Redis's own clock (``TIME``), so
nodes with skewed clocks share one refill rate. Buckets outlive a node's
restart and expire once full again.

Keys name no person: ``parley:rl:KIND:`` then a keyed BLAKE2b of the key (a
phone number, an IP address, an account id) under the server's pepper.

If Redis cannot be reached, the check falls back to this node's own buckets
(``RateLimiter``): limits then hold per node, never not at all, and a
Redis outage does not stop people from sending.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from parley.errors import RateLimited
from parley.server.handlers.ratelimit import RateLimiter, retry_after

log = logging.getLogger(__name__)

_TAKE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or capacity
local at = tonumber(b[2]) or t
tokens = math.min(capacity, tokens + math.max(0, t - at) * rate)
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(t))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {ok, tostring(tokens)}
"""


class RedisBuckets:
    def __init__(self, redis: Redis, pepper: bytes, fallback: RateLimiter) -> None:
        self._redis = redis
        self._pepper = pepper[:64]
        self._fallback = fallback
        self._script: Any = redis.register_script(_TAKE)
        self._degraded = False

    def _key(self, kind: str, key: str) -> str:
        tag = hashlib.blake2b(key.encode(), key=self._pepper, digest_size=16).hexdigest()
        return f"parley:rl:{kind}:{tag}"

    async def check(self, kind: str, key: str, capacity: float, per_s: float) -> None:
        try:
            ok, tokens = await self._script(
                keys=[self._key(kind, key)], args=[repr(float(capacity)), repr(float(per_s))]
            )
        except (RedisError, OSError) as exc:
            if not self._degraded:
                log.warning(
                    "rate limits: Redis unreachable (%s); per-node limits", type(exc).__name__
                )
                self._degraded = True
            self._fallback.take(kind, key, capacity, per_s)
            return
        if self._degraded:
            log.info("rate limits: Redis is back; cluster-wide limits")
            self._degraded = False
        if not int(ok):
            raise RateLimited(retry_after(float(tokens), per_s))
