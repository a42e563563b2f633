"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs, and their verification.

Hashing (RFC 9162 §2.1.1): leaf = SHA-256(0x00 || data), node =
SHA-256(0x01 || left || right), and the root of the empty tree is SHA-256("").
Proofs are built with the recursive definitions of RFC 6962 §2.1.1-2.1.2 and
checked with the iterative algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2.
Every verifier raises ``ProofError``; following the published vectors
(``../shared/vectors/rfc6962``), a consistency proof from size 0 is an error.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley.crypto.primitives import sha256
from parley.errors import RemoteProtocolError

HASH_LEN = 32


class ProofError(RemoteProtocolError):
    code = "invalid_proof"


def leaf_hash(data: bytes) -> bytes:
    return sha256(b"\x00" + data)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) (RFC 6962 §2.1.1)."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError("leaf index out of range")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(leaves[:k], index), root(leaves[k:])]
    return [*inclusion_proof(leaves[k:], index - k), root(leaves[:k])]


def consistency_proof(leaves: Sequence[bytes], size1: int) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 6962 §2.1.2)."""
    if not 0 < size1 <= len(leaves):
        raise ValueError("size out of range")
    return _subproof(size1, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


def _check_hashes(*hashes: bytes) -> None:
    if any(len(h) != HASH_LEN for h in hashes):
        raise ProofError("hashes must be 32 bytes")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """RFC 9162 §2.1.3.2."""
    _check_hashes(leaf, expected_root, *proof)
    if index < 0 or index >= size:
        raise ProofError("leaf index is not in the tree")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != expected_root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(  # noqa: PLR0912 - RFC 9162 §2.1.4.2, step by step
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2."""
    if size1 < 1 or size2 < size1:
        raise ProofError("consistency needs 0 < size1 <= size2")
    if size1 == size2:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        if root1 != root2:
            raise ProofError("equal sizes but different roots")
        return
    _check_hashes(root1, root2, *proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is the first node
        path.insert(0, root1)
    if not path:
        raise ProofError("empty consistency proof")
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != root1 or sr != root2:
        raise ProofError("consistency proof does not match the roots")


def verify_tail(
    first: int, size: int, proof: Sequence[bytes], leaves: Sequence[bytes], expected_root: bytes
) -> None:
    """Check that ``leaves`` are *all* the leaf hashes from index ``first`` to ``size - 1``.

    ``proof`` is the inclusion proof of leaf ``first`` in the tree of ``size``
    (RFC 9162 §2.1.3.1). Its left siblings are the roots of the complete subtrees
    that cover ``[0, first)`` (the tree's "frontier" there: ``first`` written in
    binary, largest block first). From them and the tail the whole tree hash is
    recomputed (RFC 9162 §2.1.1); it must equal ``expected_root``. This proves
    more than inclusion: nothing was left out after ``first``, which is how a
    client checks that an epoch is the latest one in the log."""
    if not 0 <= first < size or len(leaves) != size - first:
        raise ProofError("the tail must hold every leaf from first to size")
    verify_inclusion(leaves[0], first, size, proof, expected_root)
    left: list[bytes] = []  # left siblings, bottom-up (as verify_inclusion meets them)
    fn, sn = first, size - 1
    for p in proof:
        if fn & 1 or fn == sn:
            left.append(p)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
    blocks: dict[tuple[int, int], bytes] = {}
    lo = 0
    widths = [1 << b for b in range(first.bit_length() - 1, -1, -1) if first >> b & 1]
    if len(widths) != len(left):
        raise ProofError("the proof does not cover the tree before the tail")
    for width, node in zip(widths, reversed(left), strict=True):
        blocks[(lo, lo + width)] = node
        lo += width

    def mth(lo: int, hi: int) -> bytes:
        if hi <= first:
            found = blocks.get((lo, hi))
            if found is None:
                raise ProofError("the proof does not cover the tree before the tail")
            return found
        if hi - lo == 1:
            return leaves[lo - first]
        k = _split(hi - lo)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    if mth(0, size) != expected_root:
        raise ProofError("the tail does not add up to the root")


class MerkleLog:
    """An append-only list of leaf hashes that answers roots and proofs of any prefix
    (the definitions of RFC 6962 §2.1) in O(log n) hashes once warm: the root of every
    complete subtree of at least ``CACHED`` leaves is kept, since an append-only log
    never changes one. A server asked for a head, an inclusion and a consistency proof
    on every key lookup would otherwise rehash the whole log each time."""

    CACHED = 64

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self._subtrees: dict[tuple[int, int], bytes] = {}

    def __len__(self) -> int:
        return len(self.leaves)

    def extend(self, leaves: Sequence[bytes]) -> None:
        self.leaves.extend(leaves)

    def _root(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 1:
            return self.leaves[lo]
        complete = n & (n - 1) == 0 and n >= self.CACHED
        if complete and (lo, hi) in self._subtrees:
            return self._subtrees[(lo, hi)]
        k = _split(n)
        h = node_hash(self._root(lo, lo + k), self._root(lo + k, hi))
        if complete:
            self._subtrees[(lo, hi)] = h
        return h

    def root(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves."""
        if not 0 <= size <= len(self.leaves):
            raise ValueError("size out of range")
        return sha256(b"") if size == 0 else self._root(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size])."""
        if not 0 <= index < size <= len(self.leaves):
            raise ValueError("leaf index out of range")
        path: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._root(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._root(lo, lo + k))
                lo += k
        return path[::-1]

    def consistency_proof(self, first: int, size: int) -> list[bytes]:
        """PROOF(first, D[size])."""
        if not 0 < first <= size <= len(self.leaves):
            raise ValueError("size out of range")
        proof: list[bytes] = []
        lo, hi, m, complete = 0, size, first, True
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                proof.append(self._root(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._root(lo, lo + k))
                lo, m, complete = lo + k, m - k, False
        if not complete:
            proof.append(self._root(lo, hi))
        return proof[::-1]
