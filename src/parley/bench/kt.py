"""Key-directory benchmark: epoch publication, proof size and client verification.

For each directory size: a full build (first epoch), then an epoch in which
10,000 accounts change (a new device each), then proofs for 1,000 random
accounts (serialized size) and their verification as a client does it
(``translog.directory.verify``: the leaf and ~log2(N) node hashes).
"""

from __future__ import annotations

import os
import platform
import random
import secrets
import time
from typing import Any

from parley.translog import directory as kt
from parley.translog.directory import Directory, Proof


def _value(account: str, version: int, identity: bytes, devices: list[int]) -> bytes:
    return kt.value_hash(account, version, version, identity, devices, b"", kt.EMPTY)


def _run(accounts: int, changed: int = 10_000, samples: int = 1_000) -> dict[str, Any]:
    ids = [f"account-{i}" for i in range(accounts)]
    identity = secrets.token_bytes(64)
    tree = Directory()
    start = time.perf_counter()
    for account in ids:
        tree.set(kt.index_of(account), _value(account, 1, identity, [1]))
    tree.commit()
    full_build = time.perf_counter() - start

    rng = random.Random(accounts)
    start = time.perf_counter()
    for account in rng.sample(ids, min(changed, accounts)):
        tree.set(kt.index_of(account), _value(account, 2, identity, [1, 2]))
    root = tree.commit()
    epoch = time.perf_counter() - start

    sizes, proofs = [], []
    for account in rng.sample(ids, samples):
        index = kt.index_of(account)
        found = tree.prove(index)
        assert found is not None
        raw = found[1].to_bytes()
        sizes.append(len(raw) + 32 + 32)  # the proof, the index and the value hash
        proofs.append((index, found[0], raw))
    start = time.perf_counter()
    for index, value, raw in proofs:
        kt.verify(root, index, value, Proof.from_bytes(raw))
    verify_ms = (time.perf_counter() - start) / samples * 1000
    return {
        "accounts": accounts,
        "epoch_publish_s": round(epoch, 3),
        "changed_accounts": min(changed, accounts),
        "first_epoch_full_build_s": round(full_build, 2),
        "proof_bytes": round(sum(sizes) / len(sizes)),
        "proof_bytes_max": max(sizes),
        "verify_ms": round(verify_ms, 4),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    sizes = [10_000, 100_000] if quick else [100_000, 1_000_000]
    runs = [_run(n) for n in sizes]
    big = runs[-1]
    return {
        **big,
        "runs": runs,
        "targets": {"verify_ms": 2, "proof_bytes": 2048, "epoch_publish_s_for_10000_changed": 2},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "note": "verify_ms is the directory proof; a client also checks one RFC 6962 inclusion proof of the epoch root and one signed head per lookup",
    }
