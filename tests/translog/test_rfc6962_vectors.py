"""Every published RFC 6962 inclusion and consistency case (transparency-dev/merkle
testdata, vendored in tests/vectors/rfc6962/, see tests/vectors/README.md): wantErr
false accepted, wantErr true rejected."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from parley.translog import merkle
from parley.translog.merkle import ProofError

# Vendored in the repository, so every clone runs them (they never skip).
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rfc6962"


def _cases(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json"))


def _b(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


@pytest.mark.parametrize("path", _cases("inclusion"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_inclusion_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [_b(p) for p in case["proof"] or []]

    def verify():
        return merkle.verify_inclusion(
            _b(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b(case["root"])
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify()
    else:
        verify()


@pytest.mark.parametrize("path", _cases("consistency"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_consistency_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [_b(p) for p in case["proof"] or []]

    def verify():
        return merkle.verify_consistency(
            case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]), proof
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify()
    else:
        verify()


def test_the_vendored_vectors_are_all_there() -> None:
    """A missing or emptied vector folder fails instead of silently running nothing."""
    inclusion, consistency = _cases("inclusion"), _cases("consistency")
    assert len(inclusion) == 98 and len(consistency) == 98, (len(inclusion), len(consistency))
    assert (VECTORS / "LICENSE").read_text().split()[:2] == ["Apache", "License"]
    for path in inclusion + consistency:
        assert isinstance(json.loads(path.read_text())["wantErr"], bool), path


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 31, 64])
def test_our_proofs_verify_for_every_leaf_and_every_prefix(size: int) -> None:
    leaves = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(size)]
    top = merkle.root(leaves)
    for i in range(size):
        merkle.verify_inclusion(leaves[i], i, size, merkle.inclusion_proof(leaves, i), top)
    for m in range(1, size + 1):
        merkle.verify_consistency(
            m, size, merkle.root(leaves[:m]), top, merkle.consistency_proof(leaves, m)
        )
    if size > 1:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(leaves[0], 1, size, merkle.inclusion_proof(leaves, 0), top)
