"""Signed tree heads: what a log operator commits to, and how an outsider checks it.

A head is ``(size, root, timestamp_ms)`` signed with the log's Ed25519 key over
``"parley/tree-head/v1" || u64 size || root(32) || u64 timestamp_ms``. Two
heads of the same log must always be consistent (RFC 9162 consistency
proof); two different roots for one size are proof of a forked log.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from parley.crypto.primitives import SigningKey, VerifyKey

_LABEL = b"parley/tree-head/v1"


@dataclass(frozen=True, slots=True)
class TreeHead:
    size: int
    root: bytes
    timestamp_ms: int
    signature: bytes

    def message(self) -> bytes:
        return signed_message(self.size, self.root, self.timestamp_ms)

    def verify(self, public_key: bytes) -> None:
        """``InvalidSignature`` unless the log's key signed this head."""
        VerifyKey(public_key).verify(self.signature, self.message())


def signed_message(size: int, root: bytes, timestamp_ms: int) -> bytes:
    return _LABEL + struct.pack(">Q", size) + root + struct.pack(">Q", timestamp_ms)


def sign_head(key: SigningKey, size: int, root: bytes, timestamp_ms: int) -> TreeHead:
    return TreeHead(size, root, timestamp_ms, key.sign(signed_message(size, root, timestamp_ms)))
