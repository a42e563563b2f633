"""``merkle.verify_tail``: every entry after an epoch, proved complete (freshness)."""

from __future__ import annotations

import pytest

from parley.translog import merkle


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_every_tail_of_every_tree_up_to_70_verifies() -> None:
    for size in range(1, 71):
        leaves = _leaves(size)
        root = merkle.root(leaves)
        for first in range(size):
            merkle.verify_tail(
                first, size, merkle.inclusion_proof(leaves, first), leaves[first:], root
            )


@pytest.mark.parametrize(("size", "first"), [(2, 0), (7, 3), (16, 5), (33, 31), (64, 1)])
def test_a_tail_missing_hiding_or_changing_an_entry_is_refused(size: int, first: int) -> None:
    leaves = _leaves(size)
    root, proof, tail = merkle.root(leaves), merkle.inclusion_proof(leaves, first), leaves[first:]
    hidden = merkle.leaf_hash(b"a later epoch, left out")
    for bad in (
        tail[:-1],  # the last entry left out
        [*tail[:-1], hidden],  # replaced
        [*tail, hidden],  # one too many
        [tail[0], *tail[2:], tail[1]] if len(tail) > 2 else [hidden, *tail[1:]],  # reordered
    ):
        with pytest.raises(merkle.ProofError):
            merkle.verify_tail(first, size, proof, bad, root)
    with pytest.raises(merkle.ProofError):  # a proof for another position
        merkle.verify_tail(first, size, merkle.inclusion_proof(leaves, size - 1), tail, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_tail(first, size, proof, tail, merkle.leaf_hash(b"another root"))


def test_the_cached_log_answers_as_the_definitions() -> None:
    """``MerkleLog`` (subtree roots memoized) gives the RFC 6962 roots and proofs."""
    log = merkle.MerkleLog()
    log.CACHED = 4  # small, so cached subtrees are exercised
    leaves: list[bytes] = []
    for size in range(1, 140):
        leaf = merkle.leaf_hash(size.to_bytes(4, "big"))
        leaves.append(leaf)
        log.extend([leaf])
        assert log.root(size) == merkle.root(leaves)
        for i in range(0, size, max(1, size // 9)):
            assert log.inclusion_proof(i, size) == merkle.inclusion_proof(leaves, i)
            assert log.consistency_proof(i + 1, size) == merkle.consistency_proof(leaves, i + 1)
    assert log.root(0) == merkle.root([])
    with pytest.raises(ValueError):
        log.consistency_proof(0, 5)
