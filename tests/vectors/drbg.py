"""The deterministic byte stream the vectors are derived from.

``block_i = HMAC-SHA256(key=seed, msg=u64_be(i))`` for i = 0, 1, ...; the
stream is the concatenation of the blocks, and each ``rng(n)`` call takes the
next n bytes. Any implementation can rebuild it from the seed string.
"""

from __future__ import annotations

import struct

from parley.crypto.primitives import hmac_sha256


class Drbg:
    def __init__(self, seed: str) -> None:
        self._key = seed.encode()
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += hmac_sha256(self._key, struct.pack(">Q", self._counter))
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out
