"""Safety numbers: a 60-digit fingerprint of two identities, equal on both sides.

Signal's "displayable fingerprint" (libsignal ``fingerprint``): for each party,
``h = SHA-512(version(2) || identity_key || stable_id)`` then 5200 times
``h = SHA-512(h || identity_key)``; the first 30 bytes, read as six 5-byte
big-endian integers each taken mod 100000, give 30 digits. The two 30-digit
halves are sorted and concatenated so both parties see the same 60 digits,
shown as 12 groups of 5.

Parley's identity key is the 64-byte Ed25519 || X25519 pair, so a change of
either key changes the number. ``stable_id`` is the account's phone number
(E.164), as Signal uses; it changes the number when a contact re-registers.
"""

from __future__ import annotations

from parley.crypto.primitives import sha512_iterated
from parley.protocol.wire import IdentityPublic

ITERATIONS = 5200
_VERSION = b"\x00\x00"


def _half(identity: IdentityPublic, stable_id: str) -> str:
    key = identity.to_bytes()
    digest = sha512_iterated(_VERSION + key + stable_id.encode("utf-8"), key, ITERATIONS)
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )


def safety_number(
    local: IdentityPublic, local_id: str, remote: IdentityPublic, remote_id: str
) -> str:
    """The 60 digits (no spaces) for a pair of identities; symmetric in the two."""
    return "".join(sorted((_half(local, local_id), _half(remote, remote_id))))


def display(number: str) -> str:
    """Group 60 digits as Signal shows them: 12 groups of 5."""
    return " ".join(number[i : i + 5] for i in range(0, len(number), 5))


def parse(text: str) -> str:
    """Accept digits with any spacing; return the 60 digits or raise ``ValueError``."""
    digits = "".join(ch for ch in text if not ch.isspace())
    if len(digits) != 60 or not digits.isdigit() or not digits.isascii():
        raise ValueError("a safety number is 60 digits")
    return digits
