"""The randomness type every sans-I/O function takes as an argument."""

from __future__ import annotations

from collections.abc import Callable

Random = Callable[[int], bytes]
"""``rng(n)`` returns ``n`` uniformly random bytes.

Production code passes ``secrets.token_bytes``; tests pass a seeded generator
so that transcripts replay byte for byte.
"""
