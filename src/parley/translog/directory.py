"""The key directory: a sparse Merkle tree from private indexes to account key states.

Theory of operation (after CONIKS and WhatsApp's AKD). Every account has a
256-bit *index*, a keyed hash of its account id under a server secret, so a
proof names no account and the tree's shape leaks no ids (``privacy``
below). The leaf at an index commits to the account's current *value*: its
id, a version counter, its identity key and its device list
(``value_hash``). Nodes: ``leaf = H(0x00 || index || value_hash)``,
``node = H(0x01 || left || right)``, an empty subtree is 32 zero bytes, and a
subtree holding one leaf *is* that leaf (so depth is about log2(N), not 256).

A lookup proof lists the sibling hashes from the root down to the leaf; empty
siblings are omitted and marked in a bitmap, so a proof in a tree of a million
accounts is about 20 hashes (~700 bytes). Updates mark the path dirty and
rehash only dirty nodes, so an epoch costs ~log2(N) hashes per changed account.

Privacy: a proof reveals sibling hashes, which are hashes of hashes of other
accounts' states under indexes only the server can compute; it reveals no
phone number or account id, only (roughly) how many accounts share the path's
prefix, i.e. the directory's size. What the server still learns: who looks
up whom (as any directory server does). Unlike a VRF, a keyed hash cannot be
checked by clients: pyca/cryptography has no VRF and hand-rolled curve code is
not allowed here. A server could give one account two indexes to two users;
the leaf value names the account id, so each view is still self-consistent,
and forks between users are caught by comparing epoch heads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from parley.crypto.primitives import hmac_sha256, sha256
from parley.errors import RemoteProtocolError

EMPTY = b"\x00" * 32
DEPTH = 256


class DirectoryProofError(RemoteProtocolError):
    code = "invalid_directory_proof"


def index_of(secret: bytes, account_id: str) -> bytes:
    return hmac_sha256(secret, b"parley/kt/index/v1\x00" + account_id.encode())


def value_hash(account_id: str, version: int, identity_key: bytes, devices: list[int]) -> bytes:
    """What a leaf commits to: the account's keys and devices at a version."""
    encoded = account_id.encode()
    body = struct.pack(">H", len(encoded)) + encoded + struct.pack(">Q", version) + identity_key
    body += struct.pack(">H", len(devices)) + b"".join(
        struct.pack(">I", d) for d in sorted(devices)
    )
    return sha256(b"parley/kt/value/v1" + body)


def leaf_hash(index: bytes, value: bytes) -> bytes:
    return sha256(b"\x00" + index + value)


def _node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def _bit(index: bytes, depth: int) -> int:
    return (index[depth >> 3] >> (7 - (depth & 7))) & 1


class _Leaf:
    __slots__ = ("hash", "index", "value")

    def __init__(self, index: bytes, value: bytes) -> None:
        self.index, self.value = index, value
        self.hash = leaf_hash(index, value)


class _Inner:
    __slots__ = ("dirty", "hash", "left", "right")

    def __init__(self) -> None:
        self.left: _Leaf | _Inner | None = None
        self.right: _Leaf | _Inner | None = None
        self.hash = EMPTY
        self.dirty = True


def _h(n: _Leaf | _Inner | None) -> bytes:
    return EMPTY if n is None else n.hash


@dataclass(frozen=True, slots=True)
class Proof:
    """Siblings from the root down (None = empty), ending at the leaf's depth."""

    siblings: tuple[bytes | None, ...]

    def to_bytes(self) -> bytes:
        depth = len(self.siblings)
        bitmap = bytearray(32)
        for d, s in enumerate(self.siblings):
            if s is not None:
                bitmap[d >> 3] |= 0x80 >> (d & 7)
        return (
            struct.pack(">H", depth)
            + bytes(bitmap)
            + b"".join(s for s in self.siblings if s is not None)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Proof:
        if len(data) < 34:
            raise DirectoryProofError("truncated proof")
        (depth,) = struct.unpack_from(">H", data)
        if depth > DEPTH:
            raise DirectoryProofError("proof deeper than the tree")
        bitmap, rest = data[2:34], data[34:]
        siblings: list[bytes | None] = []
        for d in range(depth):
            if bitmap[d >> 3] & (0x80 >> (d & 7)):
                if len(rest) < 32:
                    raise DirectoryProofError("truncated proof")
                siblings.append(rest[:32])
                rest = rest[32:]
            else:
                siblings.append(None)
        if rest:
            raise DirectoryProofError("trailing bytes in proof")
        return cls(tuple(siblings))


def verify(root: bytes, index: bytes, value: bytes, proof: Proof) -> None:
    """``DirectoryProofError`` unless ``value`` is the leaf at ``index`` under ``root``."""
    if len(index) != 32 or len(value) != 32 or len(root) != 32:
        raise DirectoryProofError("hashes and indexes are 32 bytes")
    h = leaf_hash(index, value)
    for depth in range(len(proof.siblings) - 1, -1, -1):
        sibling = proof.siblings[depth] or EMPTY
        h = _node(sibling, h) if _bit(index, depth) else _node(h, sibling)
    if h != root:
        raise DirectoryProofError("the directory proof does not lead to the epoch's root")


class Directory:
    """The server's tree. ``set`` many values, then ``commit`` rehashes what changed."""

    def __init__(self) -> None:
        self._root: _Leaf | _Inner | None = None
        self.size = 0

    def set(self, index: bytes, value: bytes) -> None:
        leaf = _Leaf(index, value)
        if self._root is None:
            self._root = leaf
            self.size = 1
            return
        self._root = self._insert(self._root, leaf, 0)

    def _insert(self, node: _Leaf | _Inner, leaf: _Leaf, depth: int) -> _Leaf | _Inner:
        if isinstance(node, _Leaf):
            if node.index == leaf.index:
                return leaf
            self.size += 1
            return self._split(node, leaf, depth)
        node.dirty = True
        if _bit(leaf.index, depth):
            node.right = leaf if node.right is None else self._insert(node.right, leaf, depth + 1)
            if node.right is leaf:
                self.size += 1
        else:
            node.left = leaf if node.left is None else self._insert(node.left, leaf, depth + 1)
            if node.left is leaf:
                self.size += 1
        return node

    def _split(self, a: _Leaf, b: _Leaf, depth: int) -> _Inner:
        inner = _Inner()
        ba, bb = _bit(a.index, depth), _bit(b.index, depth)
        if ba == bb:
            child = self._split(a, b, depth + 1)
            if ba:
                inner.right = child
            else:
                inner.left = child
        else:
            inner.left, inner.right = (a, b) if bb else (b, a)
        return inner

    def commit(self) -> bytes:
        """Rehash dirty nodes; return the root."""
        return EMPTY if self._root is None else _rehash(self._root)

    @property
    def root(self) -> bytes:
        return _h(self._root)

    def prove(self, index: bytes) -> tuple[bytes, Proof] | None:
        """(value, proof) for an index in the tree, or None."""
        node = self._root
        siblings: list[bytes | None] = []
        depth = 0
        while isinstance(node, _Inner):
            if _bit(index, depth):
                siblings.append(None if node.left is None else node.left.hash)
                node = node.right
            else:
                siblings.append(None if node.right is None else node.right.hash)
                node = node.left
            depth += 1
        if node is None or node.index != index:
            return None
        return node.value, Proof(tuple(siblings))


def _rehash(node: _Leaf | _Inner) -> bytes:
    if isinstance(node, _Leaf):
        return node.hash
    if node.dirty:
        left = EMPTY if node.left is None else _rehash(node.left)
        right = EMPTY if node.right is None else _rehash(node.right)
        node.hash = _node(left, right)
        node.dirty = False
    return node.hash
