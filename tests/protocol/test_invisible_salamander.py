"""Attachments are key-committing: one blob cannot open under two keys.

AES-GCM alone is not key-committing (Dodis, Grubbs, Ristenpart, Woodage,
"Fast Message Franking: From Invisible Salamanders to Encryptment", CRYPTO
2018). This test builds a real GCM ciphertext that authenticates under two
different keys, shows plain AES-GCM accepts it under both, and shows Parley's
attachment format refuses the second key.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from parley.crypto.primitives import committing_decrypt, committing_encrypt
from parley.errors import DecryptionError
from parley.protocol import attachments

from .peers import seeded

# -- GF(2^128) as GCM defines it (NIST SP 800-38D §6.3), for the attack only ----------

_R = 0xE1 << 120


def _gmul(x: int, y: int) -> int:
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _ginv(x: int) -> int:
    # x^(2^128 - 2) by square-and-multiply
    result, base, e = 1 << 127, x, (1 << 128) - 2
    while e:
        if e & 1:
            result = _gmul(result, base)
        base = _gmul(base, base)
        e >>= 1
    return result


def _aes_block(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _pow(h: int, n: int) -> int:
    r = 1 << 127
    for _ in range(n):
        r = _gmul(r, h)
    return r


def salamander(k1: bytes, k2: bytes, nonce: bytes, ad: bytes = b"", blocks: int = 2) -> bytes:
    """A GCM ciphertext+tag valid under both k1 and k2 (with associated data ``ad``).

    GHASH runs over the padded AD blocks, the ciphertext blocks and the length
    block: tag_k = E_k(J0) ^ sum_j X_j * H^(n+2-j) ^ L * H. The first
    ``blocks - 1`` ciphertext blocks are arbitrary; the last one (coefficient
    H^2) is solved so that both tags coincide.
    """
    h1, h2 = _int(_aes_block(k1, b"\x00" * 16)), _int(_aes_block(k2, b"\x00" * 16))
    j0 = nonce + b"\x00\x00\x00\x01"
    e1, e2 = _int(_aes_block(k1, j0)), _int(_aes_block(k2, j0))
    padded = ad + b"\x00" * (-len(ad) % 16)
    ad_blocks = [_int(padded[i : i + 16]) for i in range(0, len(padded), 16)]
    cts = [_int(bytes([i + 1]) * 16) for i in range(blocks - 1)]
    n = len(ad_blocks) + blocks
    length_block = (len(ad) * 8) << 64 | blocks * 128

    def partial(h: int) -> int:
        acc = 0
        for j, x in enumerate([*ad_blocks, *cts], start=1):
            acc ^= _gmul(x, _pow(h, n + 2 - j))
        return acc ^ _gmul(length_block, h)

    s1, s2 = e1 ^ partial(h1), e2 ^ partial(h2)
    c_last = _gmul(s1 ^ s2, _ginv(_pow(h1, 2) ^ _pow(h2, 2)))
    tag = s1 ^ _gmul(c_last, _pow(h1, 2))
    cts.append(c_last)
    return b"".join(c.to_bytes(16, "big") for c in cts) + tag.to_bytes(16, "big")


def test_plain_aes_gcm_is_not_key_committing() -> None:
    rng = seeded(5)
    k1, k2, nonce = rng(32), rng(32), rng(12)
    blob = salamander(k1, k2, nonce)
    p1 = AESGCM(k1).decrypt(nonce, blob, None)
    p2 = AESGCM(k2).decrypt(nonce, blob, None)
    assert p1 != p2  # one ciphertext, two valid plaintexts: the attack works on GCM
    with_ad = salamander(k1, k2, nonce, b"parley/attachment/v1")
    assert AESGCM(k1).decrypt(nonce, with_ad, b"parley/attachment/v1") != AESGCM(k2).decrypt(
        nonce, with_ad, b"parley/attachment/v1"
    )


def test_parleys_format_refuses_the_second_key() -> None:
    rng = seeded(6)
    k1, k2 = rng(32), rng(32)
    blob = committing_encrypt(k1, rng(12), b"the image the receiver saw", b"")
    assert committing_decrypt(k1, blob, b"") == b"the image the receiver saw"
    with pytest.raises(DecryptionError):
        committing_decrypt(k2, blob, b"")


def test_a_salamander_wrapped_in_parleys_format_opens_under_one_key_only() -> None:
    """Even with the GCM layer crafted to open under both derived keys, the
    key commitment in front admits only the key it was made for."""
    from parley.crypto.primitives import hkdf_expand

    rng = seeded(7)
    k1, k2, nonce = rng(32), rng(32), rng(12)
    enc1 = hkdf_expand(k1, b"parley/committing-aead/v1/enc", 32)
    enc2 = hkdf_expand(k2, b"parley/committing-aead/v1/enc", 32)
    gcm = salamander(enc1, enc2, nonce)
    commit1 = hkdf_expand(k1, b"parley/committing-aead/v1/commit", 32)
    blob = commit1 + nonce + gcm
    assert committing_decrypt(k1, blob, b"")  # the receiver's key opens it
    with pytest.raises(DecryptionError):
        committing_decrypt(k2, blob, b"")  # the reporter's claimed second key does not


def test_attachment_digest_pins_the_blob() -> None:
    rng = seeded(8)
    enc = attachments.encrypt(b"file", rng)
    assert attachments.decrypt(enc.key, enc.digest, enc.blob) == b"file"
    with pytest.raises(DecryptionError):
        attachments.decrypt(enc.key, enc.digest, enc.blob[:-1] + b"\x00")
    with pytest.raises(DecryptionError):
        attachments.decrypt(rng(32), enc.digest, enc.blob)
