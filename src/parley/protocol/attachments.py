"""Attachment encryption: key-committing, and digested for franking.

The blob uploaded to the server is ``committing_encrypt(key, nonce, data)``
(see ``parley.crypto.primitives``): a 32-byte key commitment, the nonce and an
AES-256-GCM ciphertext. Its SHA-256 digest goes into the ``AttachmentPointer``
and so into the franking commitment. A receiver checks the digest, then the
key commitment, then the GCM tag: one blob cannot open under two keys to two
different files ("invisible salamanders"), so the file a receiver saw is the
file a report can prove.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.crypto.primitives import (
    GCM_NONCE_LEN,
    committing_decrypt,
    committing_encrypt,
    constant_time_equal,
    sha256,
)
from parley.crypto.random import Random
from parley.errors import DecryptionError

_AD = b"parley/attachment/v1"


@dataclass(frozen=True, slots=True)
class EncryptedAttachment:
    key: bytes
    digest: bytes
    blob: bytes


def encrypt(data: bytes, rng: Random) -> EncryptedAttachment:
    key = rng(32)
    blob = committing_encrypt(key, rng(GCM_NONCE_LEN), data, _AD)
    return EncryptedAttachment(key, sha256(blob), blob)


def decrypt(key: bytes, digest: bytes, blob: bytes) -> bytes:
    """Open a downloaded blob; ``DecryptionError`` unless digest, commitment and tag hold."""
    if not constant_time_equal(sha256(blob), digest):
        raise DecryptionError("attachment does not match its digest")
    return committing_decrypt(key, blob, _AD)
