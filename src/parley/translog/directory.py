"""The key directory: a sparse Merkle tree from account indexes to account key states.

Theory of operation (after CONIKS, SEEMless/Parakeet and WhatsApp's AKD). Every
account has a 256-bit *index* that anyone can compute:
``SHA-256("parley/kt/index/v1" || account id)`` (``index_of``). So one account
has one index, the same for its owner and for every contact, and a server
cannot keep the owner's real leaf for the owner's own checks and a forged leaf
for the same account shown to contacts: both would sit at the same index of
the same tree. A VRF would hide which index belongs to whom; pyca/cryptography
has no VRF and hand-written curve code is not allowed here, and a plain hash is
safe because account ids are random (UUID4, 122 random bits) issued by the
server, so the index reveals nothing that the account id does not. The server
*could* choose ids, but whatever id it gives an account, that id has exactly
one index, and contacts and owner all look it up there.

The leaf at an index commits to the account's current *version*
(``value_hash``): its id, a version counter that grows by one at every change,
the epoch that version was first published in, its identity key, its device
list, the device list its owner signed (``DeviceList``), and the value of the
previous version. Each version thus names the one before it, so an owner
holding version ``v`` can check any later version against a chain of all the
versions between (the *history*: a version published for one epoch and
replaced before the owner looked is still in the chain).

Nodes: ``leaf = H(0x00 || index || value_hash)``, ``node = H(0x01 || left ||
right)``, an empty subtree is 32 zero bytes, and a subtree holding one leaf
*is* that leaf (so depth is about log2(N), not 256).

A lookup proof lists the sibling hashes from the root down to the leaf; empty
siblings are omitted and marked in a bitmap, so a proof in a tree of a million
accounts is about 20 hashes (~700 bytes). Updates mark the path dirty and
rehash only dirty nodes, so an epoch costs ~log2(N) hashes per changed account.

Privacy: a proof reveals sibling hashes, which are hashes of other accounts'
leaves; it reveals no phone number or account id, only (roughly) how many
accounts share the path's prefix, i.e. the directory's size. What the server
still learns: who looks up whom (as any directory server does).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from parley.crypto.primitives import SigningKey, VerifyKey, sha256
from parley.errors import RemoteProtocolError

EMPTY = b"\x00" * 32
DEPTH = 256
INDEX_LABEL = b"parley/kt/index/v1"
MAX_DEVICES = 64
_DEVICE_LIST_LABEL = b"parley/kt/device-list/v1"
_SIGNATURE_LEN = 64


class DirectoryProofError(RemoteProtocolError):
    code = "invalid_directory_proof"


def index_of(account_id: str) -> bytes:
    """Where an account's leaf sits: ``SHA-256("parley/kt/index/v1" || account id)``."""
    return sha256(INDEX_LABEL + account_id.encode())


def _u16_prefixed(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _devices(devices: list[int] | tuple[int, ...]) -> bytes:
    ordered = sorted(devices)
    return struct.pack(">H", len(ordered)) + b"".join(struct.pack(">I", d) for d in ordered)


def value_hash(
    account_id: str,
    version: int,
    epoch: int,
    identity_key: bytes,
    devices: list[int] | tuple[int, ...],
    device_list: bytes,
    prev: bytes,
) -> bytes:
    """What a leaf commits to: the account's keys and devices at a version, the epoch
    that version was first published in, the device list its owner signed (empty if
    none), and the previous version's value (``EMPTY`` for version 1)."""
    if len(prev) != 32:
        raise ValueError("prev is a 32-byte value hash")
    body = (
        _u16_prefixed(account_id.encode())
        + struct.pack(">QQ", version, epoch)
        + _u16_prefixed(identity_key)
        + _devices(devices)
        + struct.pack(">I", len(device_list))
        + device_list
        + prev
    )
    return sha256(b"parley/kt/value/v2" + body)


@dataclass(frozen=True, slots=True)
class DeviceList:
    """The devices an account's owner vouches for, signed with its identity key.

    The server keeps the device table and could add a row of its own (a *ghost*
    device, as a Matrix homeserver could); it cannot sign. Contacts encrypt only
    to devices in the owner's signed list. ``counter`` only grows (the signer uses
    its clock), so an older list cannot be presented as newer.
    Signed message: ``"parley/kt/device-list/v1" || u16 len || account id ||
    u64 counter || u16 n || u32 device ids (ascending)``."""

    counter: int
    devices: tuple[int, ...]
    signature: bytes

    @staticmethod
    def message(account_id: str, counter: int, devices: list[int] | tuple[int, ...]) -> bytes:
        return (
            _DEVICE_LIST_LABEL
            + _u16_prefixed(account_id.encode())
            + struct.pack(">Q", counter)
            + _devices(devices)
        )

    @classmethod
    def sign(
        cls, key: SigningKey, account_id: str, counter: int, devices: list[int] | tuple[int, ...]
    ) -> DeviceList:
        ordered = tuple(sorted(set(devices)))
        return cls(counter, ordered, key.sign(cls.message(account_id, counter, ordered)))

    def verify(self, signing_key: bytes, account_id: str) -> None:
        """``InvalidSignature`` unless the identity's Ed25519 key signed this list."""
        VerifyKey(signing_key).verify(
            self.signature, self.message(account_id, self.counter, self.devices)
        )

    def to_bytes(self) -> bytes:
        return struct.pack(">Q", self.counter) + _devices(self.devices) + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceList:
        if len(data) < 10:
            raise DirectoryProofError("truncated device list")
        counter, count = struct.unpack_from(">QH", data)
        if count > MAX_DEVICES or len(data) != 10 + 4 * count + _SIGNATURE_LEN:
            raise DirectoryProofError("malformed device list")
        devices = struct.unpack_from(f">{count}I", data, 10)
        if list(devices) != sorted(set(devices)):
            raise DirectoryProofError("device list not in ascending order")
        return cls(counter, tuple(devices), data[10 + 4 * count :])


def signed_devices(
    device_list: bytes, identity_key: bytes, account_id: str
) -> tuple[int, ...] | None:
    """The devices an owner signed, or None if there is no valid list for this identity."""
    if not device_list:
        return None
    try:
        parsed = DeviceList.from_bytes(device_list)
        parsed.verify(identity_key[:32], account_id)
    except (RemoteProtocolError, ValueError):
        return None
    return parsed.devices


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

    def remove(self, index: bytes) -> None:
        """Take an index's leaf out. A subtree left holding one leaf collapses to that
        leaf, so the tree is exactly the one built without it (the same root)."""
        if self._root is not None:
            self._root, removed = self._remove(self._root, index, 0)
            self.size -= removed

    def _remove(
        self, node: _Leaf | _Inner, index: bytes, depth: int
    ) -> tuple[_Leaf | _Inner | None, bool]:
        if isinstance(node, _Leaf):
            return (None, True) if node.index == index else (node, False)
        right = bool(_bit(index, depth))
        child = node.right if right else node.left
        if child is None:
            return node, False
        child, removed = self._remove(child, index, depth + 1)
        if not removed:
            return node, False
        if right:
            node.right = child
        else:
            node.left = child
        node.dirty = True
        if node.left is None and (node.right is None or isinstance(node.right, _Leaf)):
            return node.right, True
        if node.right is None and isinstance(node.left, _Leaf):
            return node.left, True
        return node, True

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
