"""Auditing a Parley server's transparency log, as any outsider can.

``audit`` pins the log's public key on first use, checks the signed tree head,
recomputes the Merkle root from every entry, checks that the new head is
consistent with the last one it saw (RFC 9162 consistency proof: the log was
only appended to), spot-checks an inclusion proof, checks that the served
privacy policy is the latest one the log commits to, and remembers the head.
Heads can also be compared between users: the same size with a different root
proves the server showed two different logs (a fork).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from parley.client.api import ApiClient
from parley.client.api import b64d as _b
from parley.errors import InvalidSignature, ParleyError, ServerError
from parley.translog import merkle
from parley.translog.heads import TreeHead


class AuditFailed(ParleyError):
    code = "audit_failed"


def head_code(size: int, root: bytes) -> str:
    """A short code to compare a head out of band (size and the first 10 bytes of the root)."""
    return f"{size}-{root[:10].hex()}"


async def fetch_entries(api: ApiClient, size: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while len(entries) < size:
        page = await api.call(
            "GET",
            f"/v1/transparency/entries?start={len(entries)}&end={min(size, len(entries) + 1000)}",
        )
        if not page["entries"]:
            break
        entries += page["entries"]
    return entries[:size]


async def audit(server: str, state_file: Path) -> dict[str, Any]:  # noqa: PLR0912, PLR0915 - the audit, step by step
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    api = ApiClient(server, retries=3)
    try:
        raw = await api.call("GET", "/v1/transparency/head")
        key = _b(raw["public_key"])
        pinned = state.get("public_key")
        if pinned and _b(pinned) != key:
            raise AuditFailed("the log's signing key changed since the last audit")
        head = TreeHead(
            int(raw["size"]), _b(raw["root"]), int(raw["timestamp_ms"]), _b(raw["signature"])
        )
        try:
            head.verify(key)
        except InvalidSignature as exc:
            raise AuditFailed("the tree head's signature does not verify") from exc
        entries = await fetch_entries(api, head.size)
        leaves = [merkle.leaf_hash(_b(e["leaf"])) for e in entries]
        if len(leaves) != head.size or merkle.root(leaves) != head.root:
            raise AuditFailed("the log's entries do not add up to its signed head")
        previous = state.get("head")
        if previous:
            p_size, p_root = int(previous["size"]), _b(previous["root"])
            if p_size > head.size:
                raise AuditFailed(f"the log shrank from {p_size} to {head.size} entries")
            if p_size > 0:
                proof = await api.call(
                    "GET", f"/v1/transparency/consistency?first={p_size}&second={head.size}"
                )
                try:
                    merkle.verify_consistency(
                        p_size, head.size, p_root, head.root, [_b(x) for x in proof["proof"]]
                    )
                except merkle.ProofError as exc:
                    raise AuditFailed(
                        f"the log was rewritten: it is not an extension of the head seen before ({p_size} entries)"
                    ) from exc
        if head.size:
            i = head.size - 1
            proof = await api.call("GET", f"/v1/transparency/inclusion?index={i}&size={head.size}")
            try:
                merkle.verify_inclusion(
                    leaves[i], i, head.size, [_b(x) for x in proof["proof"]], head.root
                )
            except merkle.ProofError as exc:
                raise AuditFailed("the server's inclusion proof does not verify") from exc
        policies = [e for e in entries if e["kind"] == "privacy_policy"]
        if policies:
            try:
                served = await api.call("GET", "/v1/policy")
            except ServerError as exc:
                raise AuditFailed(
                    "the log has a privacy policy but the server does not serve it"
                ) from exc
            latest = policies[-1]["body"]
            if hashlib.sha256(served["text"].encode()).hexdigest() != latest["sha256"]:
                raise AuditFailed("the served privacy policy is not the latest one in the log")
    finally:
        await api.close()
    state.update(
        public_key=raw["public_key"],
        head={"size": head.size, "root": raw["root"], "timestamp_ms": head.timestamp_ms},
        audited_ms=int(time.time() * 1000),
    )
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state))
    kinds: dict[str, int] = {}
    for e in entries:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    return {
        "ok": True,
        "size": head.size,
        "root": head.root.hex(),
        "head_code": head_code(head.size, head.root),
        "previous_size": int(previous["size"]) if previous else None,
        "entries": kinds,
    }
