"""Every published RFC 6962 inclusion and consistency case (transparency-dev/merkle
testdata, in ../shared/vectors/rfc6962/): wantErr false accepted, wantErr true rejected."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from parley.translog import merkle
from parley.translog.merkle import ProofError

# shared/ lies beside the repository (in the workspace and in CI's clone).
VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "rfc6962"


def _cases(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json")) if VECTORS.is_dir() else []


def _b(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


skip = pytest.mark.skipif(
    not VECTORS.is_dir(),
    reason=f"RFC 6962 vectors not found at {VECTORS} (shared/ is laid beside the repository)",
)


@skip
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


@skip
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


def test_the_vectors_are_there_in_this_workspace() -> None:
    if not VECTORS.is_dir():
        pytest.skip(f"RFC 6962 vectors not found at {VECTORS}")
    assert len(_cases("inclusion")) > 50 and len(_cases("consistency")) > 50


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
