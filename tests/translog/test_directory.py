"""The key directory's sparse Merkle tree: proofs, updates, tampering, privacy."""

from __future__ import annotations

import random

import pytest

from parley.translog import directory as kt
from parley.translog.directory import Directory, DirectoryProofError, Proof


def _index(i: int) -> bytes:
    return kt.index_of(f"account-{i}")


def _value(account: str, version: int, devices: list[int]) -> bytes:
    return kt.value_hash(account, version, version, b"k" * 64, devices, b"", kt.EMPTY)


@pytest.mark.parametrize("size", [1, 2, 3, 17, 500])
def test_every_account_proves_and_nothing_else_does(size: int) -> None:
    tree = Directory()
    values = {}
    for i in range(size):
        values[_index(i)] = _value(f"account-{i}", 1, [1])
        tree.set(_index(i), values[_index(i)])
    root = tree.commit()
    assert tree.size == size
    for index, value in values.items():
        got = tree.prove(index)
        assert got is not None and got[0] == value
        proof = Proof.from_bytes(got[1].to_bytes())
        kt.verify(root, index, value, proof)
        with pytest.raises(DirectoryProofError):
            kt.verify(root, index, _value("someone else", 1, [1]), proof)
    assert tree.prove(_index(size + 1)) is None


def test_updates_change_the_root_and_old_proofs_stop_verifying() -> None:
    tree = Directory()
    for i in range(100):
        tree.set(_index(i), _value(f"account-{i}", 1, [1]))
    old_root = tree.commit()
    value, proof = tree.prove(_index(7))  # type: ignore[misc]
    tree.set(_index(7), _value("account-7", 2, [1, 2]))  # a device added
    new_root = tree.commit()
    assert new_root != old_root
    kt.verify(old_root, _index(7), value, proof)
    with pytest.raises(DirectoryProofError):
        kt.verify(new_root, _index(7), value, proof)


def test_incremental_commit_equals_a_fresh_build() -> None:
    rng = random.Random(1)
    tree = Directory()
    state = {}
    for step in range(5):
        for _ in range(50):
            i = rng.randrange(200)
            state[i] = _value(f"account-{i}", step, [1])
            tree.set(_index(i), state[i])
        fresh = Directory()
        for i, v in state.items():
            fresh.set(_index(i), v)
        assert tree.commit() == fresh.commit()


def test_proofs_are_small_and_name_no_account() -> None:
    tree = Directory()
    for i in range(20_000):
        tree.set(_index(i), _value(f"account-{i}", 1, [1]))
    tree.commit()
    _, proof = tree.prove(_index(123))  # type: ignore[misc]
    raw = proof.to_bytes()
    assert len(raw) < 1200
    assert b"account-" not in raw


def test_malformed_proofs_are_refused() -> None:
    for bad in (b"", b"\x00", b"\x01\x01" + b"\x00" * 32, b"\x00\x01" + b"\x80" + b"\x00" * 31):
        with pytest.raises(DirectoryProofError):
            Proof.from_bytes(bad)


def test_the_index_is_a_hash_anyone_computes() -> None:
    """One account, one index: the owner and every contact look it up at the same leaf."""
    import hashlib

    account = "5f0e8f0e-3b0c-4c53-9d43-4f5cbe2f8a11"
    assert kt.index_of(account) == hashlib.sha256(b"parley/kt/index/v1" + account.encode()).digest()
    assert kt.index_of(account) != kt.index_of(account.upper())


def test_each_version_names_the_one_before() -> None:
    v1 = kt.value_hash("a", 1, 1, b"k" * 64, [1], b"", kt.EMPTY)
    v2 = kt.value_hash("a", 2, 5, b"k" * 64, [1, 2], b"", v1)
    assert v2 != kt.value_hash("a", 2, 5, b"k" * 64, [1, 2], b"", kt.EMPTY)
    assert v2 != kt.value_hash("a", 2, 6, b"k" * 64, [1, 2], b"", v1)  # the epoch is committed


def test_device_lists_verify_only_under_their_owner_and_account() -> None:
    from parley.crypto.primitives import SigningKey

    key, other = SigningKey.generate(random.randbytes), SigningKey.generate(random.randbytes)
    signed = kt.DeviceList.sign(key, "alice", 7, [2, 1])
    blob = signed.to_bytes()
    identity = key.public + b"x" * 32
    assert kt.signed_devices(blob, identity, "alice") == (1, 2)
    assert kt.signed_devices(blob, other.public + b"x" * 32, "alice") is None
    assert kt.signed_devices(blob, identity, "bob") is None  # bound to the account
    tampered = kt.DeviceList(7, (1, 2, 9), signed.signature).to_bytes()  # a ghost device
    assert kt.signed_devices(tampered, identity, "alice") is None
    assert kt.signed_devices(b"", identity, "alice") is None
    for bad in (blob[:-1], blob + b"\x00", b"\x00" * 9):
        assert kt.signed_devices(bad, identity, "alice") is None


@pytest.mark.parametrize("seed", range(8))
def test_removing_leaves_gives_the_tree_built_without_them(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([1, 2, 3, 40, 300])
    tree = Directory()
    for i in range(size):
        tree.set(_index(i), _value(f"account-{i}", 1, [1]))
    tree.commit()
    gone = set(rng.sample(range(size), rng.randint(1, size)))
    for i in gone:
        tree.remove(_index(i))
    tree.remove(_index(size + 1))  # an index that was never there changes nothing
    fresh = Directory()
    for i in range(size):
        if i not in gone:
            fresh.set(_index(i), _value(f"account-{i}", 1, [1]))
    assert tree.commit() == fresh.commit()
    assert tree.size == fresh.size == size - len(gone)
    for i in range(size):
        assert (tree.prove(_index(i)) is None) == (i in gone)
