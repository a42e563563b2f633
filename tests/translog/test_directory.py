"""The key directory's sparse Merkle tree: proofs, updates, tampering, privacy."""

from __future__ import annotations

import random

import pytest

from parley.translog import directory as kt
from parley.translog.directory import Directory, DirectoryProofError, Proof


def _index(i: int) -> bytes:
    return kt.index_of(b"s" * 32, f"account-{i}")


@pytest.mark.parametrize("size", [1, 2, 3, 17, 500])
def test_every_account_proves_and_nothing_else_does(size: int) -> None:
    tree = Directory()
    values = {}
    for i in range(size):
        values[_index(i)] = kt.value_hash(f"account-{i}", 1, b"k" * 64, [1])
        tree.set(_index(i), values[_index(i)])
    root = tree.commit()
    assert tree.size == size
    for index, value in values.items():
        got = tree.prove(index)
        assert got is not None and got[0] == value
        proof = Proof.from_bytes(got[1].to_bytes())
        kt.verify(root, index, value, proof)
        with pytest.raises(DirectoryProofError):
            kt.verify(root, index, kt.value_hash("someone else", 1, b"k" * 64, [1]), proof)
    assert tree.prove(_index(size + 1)) is None


def test_updates_change_the_root_and_old_proofs_stop_verifying() -> None:
    tree = Directory()
    for i in range(100):
        tree.set(_index(i), kt.value_hash(f"account-{i}", 1, b"k" * 64, [1]))
    old_root = tree.commit()
    value, proof = tree.prove(_index(7))  # type: ignore[misc]
    tree.set(_index(7), kt.value_hash("account-7", 2, b"k" * 64, [1, 2]))  # a device added
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
            state[i] = kt.value_hash(f"account-{i}", step, b"k" * 64, [1])
            tree.set(_index(i), state[i])
        fresh = Directory()
        for i, v in state.items():
            fresh.set(_index(i), v)
        assert tree.commit() == fresh.commit()


def test_proofs_are_small_and_name_no_account() -> None:
    tree = Directory()
    for i in range(20_000):
        tree.set(_index(i), kt.value_hash(f"account-{i}", 1, b"k" * 64, [1]))
    tree.commit()
    _, proof = tree.prove(_index(123))  # type: ignore[misc]
    raw = proof.to_bytes()
    assert len(raw) < 1200
    assert b"account-" not in raw


def test_malformed_proofs_are_refused() -> None:
    for bad in (b"", b"\x00", b"\x01\x01" + b"\x00" * 32, b"\x00\x01" + b"\x80" + b"\x00" * 31):
        with pytest.raises(DirectoryProofError):
            Proof.from_bytes(bad)
