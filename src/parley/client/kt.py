"""Client-side key transparency: verify that served keys are the published ones.

``verified_lookup`` checks an account's directory entry all the way up: the
value recomputed from the identity key and device list, the sparse-Merkle
proof to the epoch root, the epoch root as an entry of the transparency log,
and that entry's inclusion under a head signed by the log's key.
``check_served_keys`` refuses keys or devices the server serves that are not
what the directory publishes (after a short grace for an epoch in progress).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from parley.client.api import ApiClient
from parley.client.api import b64d as _b
from parley.errors import ParleyError, RemoteProtocolError
from parley.translog import directory, merkle
from parley.translog.heads import TreeHead

GRACE_S = 3.0


class KeyTransparencyError(ParleyError):
    code = "key_transparency"


async def signed_head(api: ApiClient) -> tuple[TreeHead, bytes]:
    raw = await api.call("GET", "/v1/transparency/head")
    head = TreeHead(
        int(raw["size"]), _b(raw["root"]), int(raw["timestamp_ms"]), _b(raw["signature"])
    )
    head.verify(_b(raw["public_key"]))
    return head, _b(raw["public_key"])


async def verified_lookup(api: ApiClient, account_id: str) -> dict[str, Any]:
    entry = await api.call("GET", f"/v1/kt/lookup/{account_id}")
    try:
        identity, devices = _b(entry["identity_key"]), [int(d) for d in entry["devices"]]
        value = directory.value_hash(account_id, int(entry["version"]), identity, devices)
        root, index = _b(entry["root"]), _b(entry["index"])
        directory.verify(root, index, value, directory.Proof.from_bytes(_b(entry["proof"])))
        head, _ = await signed_head(api)
        log_index = int(entry["log_index"])
        logged = (
            await api.call("GET", f"/v1/transparency/entries?start={log_index}&end={log_index + 1}")
        )["entries"][0]
        leaf = _b(logged["leaf"])
        body = json.loads(leaf)
        if (
            body.get("kind") != "kt_epoch"
            or body.get("root") != root.hex()
            or body.get("epoch") != entry["epoch"]
        ):
            raise KeyTransparencyError("the directory root is not the one logged for its epoch")
        proof = await api.call(
            "GET", f"/v1/transparency/inclusion?index={log_index}&size={head.size}"
        )
        merkle.verify_inclusion(
            merkle.leaf_hash(leaf), log_index, head.size, [_b(p) for p in proof["proof"]], head.root
        )
    except (RemoteProtocolError, KeyError, IndexError, ValueError) as exc:
        raise KeyTransparencyError(
            f"the key directory proof for {account_id} does not verify"
        ) from exc
    return {
        "identity_key": identity,
        "devices": devices,
        "version": int(entry["version"]),
        "epoch": int(entry["epoch"]),
    }


async def check_served_keys(
    api: ApiClient, account_id: str, identity_key: bytes, devices: list[int]
) -> None:
    """Refuse an identity key or device list that the directory does not publish."""
    deadline = asyncio.get_running_loop().time() + GRACE_S
    while True:
        try:
            published = await verified_lookup(api, account_id)
        except ParleyError as exc:
            if (
                getattr(exc, "code", "") != "not_found"
                or asyncio.get_running_loop().time() > deadline
            ):
                raise
            await asyncio.sleep(0.3)
            continue
        if published["identity_key"] == identity_key and sorted(published["devices"]) == sorted(
            devices
        ):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise KeyTransparencyError(
                f"the server's keys for {account_id} are not the ones in the key directory: refusing them"
            )
        await asyncio.sleep(0.3)  # an epoch may be in progress right after a change


def head_code(head: TreeHead) -> str:
    """Short code of a signed head, to compare with another user out of band."""
    return f"{head.size}-{head.root[:10].hex()}"
