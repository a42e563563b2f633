"""Client-side key transparency: keys are used only as the directory proves them,
in a log this client has seen grow and never fork.

Theory of operation. A client keeps a *view* of the transparency log (a
``state.KtView`` in the profile, reached through ``ApiClient.kt_view``):

- ``log_key``: the log's signing key, pinned at registration (a linked device
  gets it from the primary, inside the encrypted provisioning message). Every
  head must verify under it; a head under any other key is a forged log.
- ``head``: the last signed head this client verified (size, root). A new head
  must be an RFC 9162 extension of it (consistency proof); the same size with
  another root, a smaller size, or a failed proof is a fork. Every lookup
  carries the proof, so this holds on every lookup, not only in ``parley audit``.
- ``seen``: per account, the latest version and value this client accepted:
  versions only grow, and one version has one value.
- ``own``: the owner's last checked version of its own entry; the next check
  reads every version since (``verify_history``), so a version published for
  one epoch and replaced before the owner looked is still seen.
- ``alarms``: one line each, shown on every command until acknowledged.

A lookup (``verify_entry``) checks, in order: the head (pinned key,
consistency), the leaf value recomputed from what is served, the directory
proof at the index anyone computes (``directory.index_of``), the epoch's log
entry and every entry after it up to the head (``merkle.verify_tail``): the
epoch is the latest under that head (*freshness*), so an old epoch cannot serve
a replaced key. ``check_served_keys`` then refuses identity keys or devices the
server serves that the directory does not publish, and devices the owner did
not sign into its device list (a ghost device). Messages carry the sender's
head (``gossip``); ``check_gossip`` asks for a consistency proof between it and
the receiver's own, and raises a fork alarm when the server cannot give one.

Evidence that the server lied (a bad proof, another log key, a fork, a stale
epoch, a version going back) is kept as an alarm as well as refused; a state
that may be an epoch in progress is only refused, after a short grace.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, NoReturn

from parley.client.api import ApiClient, b64e
from parley.client.api import b64d as _b
from parley.client.state import Head, KtView, Seen
from parley.crypto.primitives import SigningKey
from parley.errors import ParleyError, RemoteProtocolError, ServerError
from parley.translog import directory, merkle
from parley.translog.directory import DeviceList
from parley.translog.heads import TreeHead

GRACE_S = 10.0
MAX_GOSSIP_OK = 32


class KeyTransparencyError(ParleyError):
    code = "key_transparency"


def _refuse(view: KtView, text: str, evidence: bool = True) -> NoReturn:
    if evidence:
        view.alarm(text)
    raise KeyTransparencyError(text)


def head_code(size: int, root: bytes) -> str:
    """Short code of a signed head, to compare with another user out of band."""
    return f"{size}-{root[:10].hex()}"


def gossip(view: KtView) -> dict[str, Any]:
    """What a message carries (inside the encryption): the sender's verified head."""
    if view.head is None:
        return {}
    return {"head": [view.head.size, _b(view.head.root).hex()]}


# -- heads -------------------------------------------------------------------------------------


def _fork(size: int, new_size: int) -> str:
    if size == new_size:
        return (
            f"FORK: the server signed two different transparency logs of {size} entries, "
            "one shown to you before and another now: it is showing different logs to different people"
        )
    return (
        f"FORK: the transparency log the server signed now ({new_size} entries) is not an "
        f"extension of the one it showed you before ({size} entries): it is showing different "
        "logs to different people"
    )


async def accept_head(
    api: ApiClient, head: TreeHead, served_key: bytes, consistency: list[bytes] | None
) -> None:
    """Accept ``head`` into the view: signed by the pinned key, an extension of the last
    head verified (``consistency`` from it, fetched if not given). Otherwise refuse."""
    view = api.kt_view
    pinned = view.log_key
    if pinned is None:
        view.log_key = b64e(served_key)  # first use: registration (or a library client)
        key = served_key
    else:
        key = _b(pinned)
        if served_key != key:
            _refuse(
                view,
                "the server's transparency log is signed with another key than the one pinned "
                "at registration: it is serving a different log (a forged key directory?)",
            )
    try:
        head.verify(key)
    except RemoteProtocolError:
        _refuse(view, "a head of the transparency log does not verify under the pinned log key")
    stored = view.head
    if stored is not None:
        size, root = stored.size, _b(stored.root)
        if head.size < size:
            _refuse(
                view,
                f"the server shows a transparency log of {head.size} entries after showing you "
                f"{size}: a rolled-back or split view",
            )
        if head.size == size and head.root != root:
            _refuse(view, _fork(size, size))
        if head.size > size > 0:
            if consistency is None:
                raw = await api.call(
                    "GET", f"/v1/transparency/consistency?first={size}&second={head.size}"
                )
            try:
                if consistency is None:
                    consistency = [_b(p) for p in raw["proof"]]
                merkle.verify_consistency(size, head.size, root, head.root, consistency)
            except (merkle.ProofError, KeyError, TypeError, ValueError):
                _refuse(view, _fork(size, head.size))
    view.head = Head(head.size, b64e(head.root), head.timestamp_ms)


def _size(view: KtView) -> int:
    return view.head.size if view.head is not None else 0


def _head(raw: dict[str, Any]) -> TreeHead:
    return TreeHead(
        int(raw["size"]), _b(raw["root"]), int(raw["timestamp_ms"]), _b(raw["signature"])
    )


async def verified_head(api: ApiClient) -> TreeHead:
    """The log's current head, accepted into the view (pinned key, consistent)."""
    raw = await api.call("GET", "/v1/transparency/head")
    try:
        head, key = _head(raw), _b(raw["public_key"])
    except (KeyError, TypeError, ValueError):
        _refuse(api.kt_view, "the server's transparency-log head is malformed")
    await accept_head(api, head, key, None)
    return head


# -- lookups -----------------------------------------------------------------------------------


async def verified_lookup(
    api: ApiClient, account_id: str, label: str | None = None
) -> dict[str, Any]:
    """An account's entry as the directory proves it under the client's view of the log
    (a ``ServerError`` ``not_found`` while the account is not published yet)."""
    since = _size(api.kt_view)
    entry = await api.call("GET", f"/v1/kt/lookup/{account_id}?since={since}")
    return await verify_entry(api, account_id, entry, label)


async def verify_entry(
    api: ApiClient, account_id: str, entry: Any, label: str | None = None
) -> dict[str, Any]:
    view = api.kt_view
    who = label or account_id
    try:
        head = _head(entry["head"])
        served_key = _b(entry["public_key"])
        consistency = (
            None if entry.get("consistency") is None else [_b(p) for p in entry["consistency"]]
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        _refuse(view, f"the server's key-directory answer for {who} is malformed")
    await accept_head(api, head, served_key, consistency)
    try:
        version, version_epoch = int(entry["version"]), int(entry["version_epoch"])
        epoch, log_index = int(entry["epoch"]), int(entry["log_index"])
        identity, devices = _b(entry["identity_key"]), [int(d) for d in entry["devices"]]
        device_list, prev, root = _b(entry["device_list"]), _b(entry["prev"]), _b(entry["root"])
        value = directory.value_hash(
            account_id, version, version_epoch, identity, devices, device_list, prev
        )
        directory.verify(
            root,
            directory.index_of(account_id),
            value,
            directory.Proof.from_bytes(_b(entry["proof"])),
        )
        tail = [_b(t) for t in entry["tail"]]
        merkle.verify_tail(
            log_index,
            head.size,
            [_b(p) for p in entry["inclusion"]],
            [merkle.leaf_hash(t) for t in tail],
            head.root,
        )
        bodies = [json.loads(t) for t in tail]
    except (RemoteProtocolError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        _refuse(view, f"the key directory's proof for {who} does not verify")
    first = bodies[0]
    if (
        not isinstance(first, dict)
        or first.get("kind") != "kt_epoch"
        or first.get("epoch") != epoch
        or first.get("root") != root.hex()
    ):
        _refuse(
            view, f"the key-directory root for {who} is not the one the log holds for its epoch"
        )
    later = [b for b in bodies[1:] if isinstance(b, dict) and b.get("kind") == "kt_epoch"]
    if later:
        _refuse(
            view,
            f"stale epoch: the server proved {who}'s keys in directory epoch {epoch}, but the log "
            f"it signed holds a later epoch ({later[-1].get('epoch')}): it served an old entry",
        )
    if version < 1 or not 0 < version_epoch <= epoch:
        _refuse(view, f"the key directory's entry for {who} names an impossible version")
    signed = directory.signed_devices(device_list, identity, account_id)
    counter = DeviceList.from_bytes(device_list).counter if signed is not None else 0
    before = view.seen.get(account_id)
    same_identity = (
        before is not None
        and before.counter is not None
        and before.identity is not None
        and identity == _b(before.identity)
    )
    if before is not None:
        if signed is not None and same_identity and counter < int(before.counter or 0):
            _refuse(
                view,
                f"the key directory shows an older device list of {who} than it showed "
                "you before: a device since unlinked could be slipped back in",
            )
        if version < before.version:
            _refuse(
                view,
                f"the key directory went back from version {before.version} to {version} of {who}'s "
                "keys: it is hiding a change",
            )
        if version == before.version and b64e(value) != before.value:
            _refuse(
                view,
                f"the key directory showed two different entries for version {version} of "
                f"{who}'s keys",
            )
    if before is not None and same_identity:
        counter = max(
            counter, int(before.counter or 0)
        )  # a list dropped for a while resets nothing
    view.seen[account_id] = Seen(version, b64e(value), counter, b64e(identity))
    return {
        "identity_key": identity,
        "devices": devices,
        "signed_devices": signed,
        "device_list": device_list,
        "version": version,
        "version_epoch": version_epoch,
        "epoch": epoch,
        "value": value,
    }


def served_keys_published(
    published: dict[str, Any], identity_key: bytes, devices: list[int]
) -> bool:
    """Whether a verified directory entry (``verify_entry``) publishes exactly this
    identity key and these devices, each signed into the owner's device list."""
    signed = set(published["signed_devices"] or ())
    return (
        published["identity_key"] == identity_key
        and sorted(published["devices"]) == sorted(devices)
        and set(devices) <= signed
    )


async def check_served_keys(
    api: ApiClient, account_id: str, identity_key: bytes, devices: list[int]
) -> None:
    """Refuse an identity key or device list that the directory does not publish, and
    any device the account's owner did not sign into its device list (a ghost)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GRACE_S
    while True:
        try:
            published = await verified_lookup(api, account_id)
        except ServerError as exc:
            if exc.code != "not_found" or loop.time() > deadline:
                raise
            await asyncio.sleep(0.3)
            continue
        if served_keys_published(published, identity_key, devices):
            return
        signed = set(published["signed_devices"] or ())
        same = published["identity_key"] == identity_key and sorted(published["devices"]) == sorted(
            devices
        )
        if loop.time() > deadline:
            if not same:
                raise KeyTransparencyError(
                    f"the server's keys for {account_id} are not the ones in the key directory: "
                    "refusing them"
                )
            if published["signed_devices"] is None:
                raise KeyTransparencyError(
                    f"{account_id} has no device list signed with its identity key in the key "
                    "directory: refusing to encrypt to devices only the server vouches for"
                )
            ghosts = ", ".join(str(d) for d in sorted(set(devices) - signed))
            raise KeyTransparencyError(
                f"device {ghosts} of {account_id} is in the key directory but its owner never "
                "signed it into its device list (a device the server added?): not encrypting to it"
            )
        await asyncio.sleep(0.3)  # an epoch may be in progress right after a change


# -- the owner's own entry ---------------------------------------------------------------------


async def own_history(
    api: ApiClient, account_id: str, since_version: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The owner's published entry and every version after ``since_version``."""
    versions: list[dict[str, Any]] = []
    after: Any = since_version
    while True:
        since = _size(api.kt_view)
        raw = await api.call("GET", f"/v1/kt/history?since_version={after}&since={since}")
        if not isinstance(raw, dict):
            _refuse(api.kt_view, "the server's history of your key-directory entry is malformed")
        published = await verify_entry(api, account_id, raw.get("lookup"), "your account")
        try:
            page = [
                {
                    "version": int(v["version"]),
                    "epoch": int(v["version_epoch"]),
                    "identity_key": _b(v["identity_key"]),
                    "devices": [int(d) for d in v["devices"]],
                    "device_list": _b(v["device_list"]),
                }
                for v in raw["versions"]
            ]
        except (KeyError, TypeError, ValueError):
            _refuse(api.kt_view, "the server's history of your key-directory entry is malformed")
        versions += page
        if not raw.get("more") or not page:
            return published, versions
        after = page[-1]["version"]


def verify_history(
    account_id: str,
    base_version: int,
    base_value: bytes,
    versions: list[dict[str, Any]],
    published: dict[str, Any],
) -> None:
    """``KeyTransparencyError`` unless ``versions`` are every version after the base,
    in order, chained (each leaf names the previous one's value) up to the published
    entry: no version can be left out of an owner's history."""
    prev, expected, last_epoch = base_value, base_version + 1, 0
    for v in versions:
        if v["version"] != expected:
            raise KeyTransparencyError(
                f"the history of your key-directory entry skips from version {expected - 1} "
                f"to {v['version']}"
            )
        if v["epoch"] < last_epoch or v["epoch"] > published["epoch"]:
            raise KeyTransparencyError("the history of your key-directory entry is out of order")
        prev = directory.value_hash(
            account_id,
            v["version"],
            v["epoch"],
            v["identity_key"],
            v["devices"],
            v["device_list"],
            prev,
        )
        last_epoch, expected = v["epoch"], expected + 1
    if published["version"] != expected - 1 or published["value"] != prev:
        raise KeyTransparencyError(
            "the history of your key-directory entry does not lead to the published entry: "
            "a version is being hidden from you"
        )


async def publish_device_list(
    api: ApiClient, key: SigningKey, account_id: str, devices: list[int], now_ms: int
) -> list[int]:
    """Sign the devices this owner vouches for and upload them (the counter only grows)."""
    view = api.kt_view
    counter = max(now_ms, view.list_counter + 1)
    signed = DeviceList.sign(key, account_id, counter, devices)
    await api.call(
        "PUT",
        "/v1/kt/device-list",
        {
            "counter": signed.counter,
            "devices": list(signed.devices),
            "signature": b64e(signed.signature),
        },
    )
    view.list_counter = counter
    view.signed = list(signed.devices)
    return list(signed.devices)


# -- gossip ------------------------------------------------------------------------------------


def _claimed_head(claim: object) -> tuple[int, bytes] | None:
    """``[size, root hex]`` from a message, or None (a sender's garbage is not evidence)."""
    if not (
        isinstance(claim, list)
        and len(claim) == 2
        and isinstance(claim[0], int)
        and isinstance(claim[1], str)
        and claim[0] >= 1
    ):
        return None
    try:
        root = bytes.fromhex(claim[1])
    except ValueError:
        return None
    return (claim[0], root) if len(root) == merkle.HASH_LEN else None


async def _consistent(api: ApiClient, a: tuple[int, bytes], b: tuple[int, bytes]) -> bool | None:
    """Whether the server proves two heads of one log (None: it could not be asked)."""
    (first, r1), (second, r2) = sorted([a, b], key=lambda h: h[0])
    if first == second:
        return r1 == r2
    try:
        raw = await api.call("GET", f"/v1/transparency/consistency?first={first}&second={second}")
        merkle.verify_consistency(first, second, r1, r2, [_b(p) for p in raw["proof"]])
    except (merkle.ProofError, KeyError, TypeError, ValueError):
        return False
    except ServerError as exc:
        # 400: the server cannot show a log of the size it signed for the sender
        return False if exc.status == 400 else None
    return True


async def check_gossip(api: ApiClient, claim: object, sender: str) -> str | None:
    """Check a head a message carried against this client's own: the same size must
    have the same root, and the server must prove the smaller a prefix of the larger.
    Returns the fork alarm (also kept in the view) or None."""
    view = api.kt_view
    theirs, stored = _claimed_head(claim), view.head
    if theirs is None or stored is None or stored.size < 1:
        return None
    ours = (stored.size, _b(stored.root))
    key = f"{theirs[0]}:{theirs[1].hex()}"
    if key in view.gossip_ok:
        return None
    ok = await _consistent(api, ours, theirs)
    if ok is None:
        return None
    if ok:
        view.gossip_ok.append(key)
        del view.gossip_ok[:-MAX_GOSSIP_OK]
        return None
    text = (
        f"FORK: a message from {sender} carried a transparency-log head ({theirs[0]} entries) "
        f"that the server cannot prove consistent with yours ({ours[0]} entries): it is "
        f"showing you and {sender} different logs"
    )
    view.alarm(text)
    return text
