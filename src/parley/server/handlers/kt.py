"""Key transparency: every account's identity key and device list, published in
the key directory (``translog.directory``) with a new root per epoch.

Theory of operation. An epoch reads the key material from the database
(identity keys, device rows, and the device list each owner signed), and for
every account whose state differs from its latest published version writes a
new version (version + 1, this epoch's number, the previous version's value),
updates the sparse Merkle tree, and appends ``{"kind": "kt_epoch", epoch, root,
size}`` to the public transparency log, whose signed heads make each epoch
root a public, append-only commitment. Epochs run every ``--kt-epoch-seconds``
(default 10) and right after any key change on this server; an epoch is also
logged when more than ``MAX_TAIL`` other entries were appended since the last
one, so a lookup's proof of freshness stays short.

A lookup is self-contained: the account's latest version with its directory
proof, the signed head of the log at that moment, the inclusion proof of the
epoch's entry under it, every log entry from the epoch's to the head's end (the
client checks none is a later epoch: *freshness*), and, if the client names the
size of the head it verified last, the consistency proof from it. The owner's
history is every version after the one it checked last, with a lookup taken
under the same lock. Because the epoch is built from the database itself, a key
or device slipped into the database shows up in the directory, where its
owner's monitoring sees it, or it does not, and then contacts refuse the keys.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from parley.errors import BadRequest, Conflict, NotFound, Unavailable
from parley.server.handlers.transparency import TransparencyHandler
from parley.server.storage.kt import KtStore, Version
from parley.server.storage.leases import Lease
from parley.translog import directory as kt
from parley.translog.directory import DeviceList, Directory, DirectoryProofError
from parley.translog.heads import TreeHead

log = logging.getLogger(__name__)

MAX_TAIL = 64  # log entries after the latest epoch before an epoch is logged anyway
MAX_HISTORY = 1000  # versions per history answer
MAX_CATCH_UP = 5  # epochs a lookup follows before it gives up for now


class StaleDeviceList(Conflict):
    code = "stale_device_list"


def _e(data: bytes) -> str:
    return base64.b64encode(data).decode()


class KtHandler:
    def __init__(
        self,
        store: KtStore,
        transparency: TransparencyHandler,
        clock_ms: Callable[[], int],
        lease: Lease | None = None,
    ) -> None:
        self._store = store
        self._log = transparency
        self._now = clock_ms
        self._lease = lease  # None: a single node, always the one that publishes
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        # Called when other nodes should look at the directory (cluster signal).
        self.notify_cluster: Callable[[], None] = lambda: None
        self._reset()

    def _reset(self) -> None:
        """Forget the in-memory directory; the next call rebuilds it from the log and
        the database (after a failed epoch, or when this node lost the lease)."""
        self._tree = Directory()
        self._latest: dict[str, Version] | None = None
        self._present: set[str] = set()
        self._raw: dict[str, tuple[bytes, tuple[int, ...], bytes]] = {}
        self._in_sync = True
        self.epoch = 0
        self.root = kt.EMPTY
        self.log_index: int | None = None

    def request_epoch(self) -> None:
        """A key changed on this node: publish soon (the lease holder does)."""
        self._wake.set()
        self.notify_cluster()

    def wake(self) -> None:
        """Another node changed a key or logged an epoch."""
        self._wake.set()

    async def _last_logged(self) -> tuple[int, bytes, int] | None:
        """The newest ``kt_epoch`` entry in the log: (epoch, root, index)."""
        end = await self._log.size()
        stop = self.log_index or 0
        while end > stop:
            start = max(stop, end - 1000)
            for entry in reversed(await self._log.entries(start, end)):
                if entry["kind"] == "kt_epoch":
                    body = entry["body"]
                    return int(body["epoch"]), bytes.fromhex(body["root"]), int(entry["index"])
            end = start
        return None

    async def _follow(self) -> None:
        """Catch up with the newest epoch in the log, whichever node logged it. An
        epoch's versions commit with its log entry, so the database holds exactly
        the versions and removals of every logged epoch; a follower applies the
        new ones and checks the root it gets against the logged one (and rebuilds
        from the database if they differ)."""
        last = await self._last_logged()
        if self._latest is None and last is None:
            self._latest = {}
        if last is None or last[2] == self.log_index:
            return
        epoch, root, at = last
        got: bytes | None = None
        if self._latest is not None and self.log_index is not None and epoch > self.epoch:
            # A removed account may stay in ``_latest``: with no leaf it never proves
            # (lookups answer not found), and ``_publish`` skips it.
            for removed in await self._store.removed_between(self.epoch, epoch):
                self._tree.remove(removed)
            for account, v in await self._store.published_between(self.epoch, epoch):
                self._latest[account] = v
                self._tree.set(kt.index_of(account), v.value)
            got = self._tree.commit()
        if got != root:
            self._latest = await self._store.latest(epoch)
            self._tree = _tree_of(self._latest)
            got = self._tree.commit()
        self._present = set(self._latest or {})
        self._raw = {}
        self.epoch, self.root, self.log_index = epoch, root, at
        self._in_sync = got == root
        if not self._in_sync:
            log.warning("key directory: the logged epoch does not rebuild from the database")

    async def publish(self) -> dict[str, Any] | None:
        """Follow the log, then, on the lease holder, publish an epoch if anything
        changed. None on a node that does not hold the lease."""
        async with self._lock:
            await self._follow()
            if self._lease is not None and not self._lease.held:
                return None
            try:
                return await self._publish()
            except Exception:
                self._reset()
                raise

    async def _publish(self) -> dict[str, Any]:
        latest = self._latest if self._latest is not None else {}
        epoch = self.epoch + 1
        states = await self._store.key_states()
        added: list[tuple[str, Version]] = []
        for account, raw in states.items():
            current = latest.get(account)
            if self._raw.get(account) == raw and current is not None:
                continue
            self._raw[account] = raw
            identity, devices, device_list = raw
            if kt.signed_devices(device_list, identity, account) is None:
                device_list = b""  # not signed by this identity (e.g. before re-registration)
            if current is not None and (
                current.identity_key,
                current.devices,
                current.device_list,
            ) == (identity, devices, device_list):
                continue
            number = 1 if current is None else current.version + 1
            prev = kt.EMPTY if current is None else current.value
            value = kt.value_hash(account, number, epoch, identity, devices, device_list, prev)
            v = Version(number, epoch, identity, devices, device_list, prev, value)
            added.append((account, v))
            latest[account] = v
            self._tree.set(kt.index_of(account), value)
        gone = [(a, kt.index_of(a)) for a in latest if a not in states]
        for a, _index in gone:
            latest.pop(a)
            self._raw.pop(a, None)
        # Only leaves still in the tree are removals of this epoch (a follower that
        # became the holder may keep accounts an earlier epoch already removed).
        gone = [(a, index) for a, index in gone if self._tree.prove(index) is not None]
        for _, index in gone:
            self._tree.remove(index)  # the tree is what the database rebuilds
        self._latest = latest
        self._present = set(latest)
        root = self._tree.commit()
        size = await self._log.size()
        if (
            root != self.root
            or self.log_index is None
            or size - self.log_index > MAX_TAIL
            or added
            or gone
        ):

            async def write(conn: AsyncConnection) -> None:
                if self._lease is not None:
                    await self._lease.fence(conn)  # a stale leader's epoch never commits
                await KtStore.write_epoch(conn, epoch, added, gone)

            self.log_index = await self._log.append(
                "kt_epoch", {"epoch": epoch, "root": root.hex(), "size": self._tree.size}, write
            )
            self.epoch, self.root, self._in_sync = epoch, root, True
            self.notify_cluster()
        return {
            "epoch": self.epoch,
            "root": self.root.hex(),
            "log_index": self.log_index,
            "changed": len(added),
        }

    async def loop(self, interval_s: float) -> None:
        """Publish (or, off the lease, follow) every ``interval_s``, or soon after a key
        change (the first epoch is published at start-up by the caller). The wake flag
        is cleared *before* an epoch reads the database, so a change made during an
        epoch gets the next one."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval_s)
                await asyncio.sleep(0.05)  # gather a burst of changes into one epoch
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.publish()
            except Exception as exc:
                log.warning("key directory epoch failed: %s", type(exc).__name__)

    async def lookup(self, account_id: str, since: int = 0) -> dict[str, Any]:
        """The published state of an account with every proof a client needs (no other
        account named). Taken under the epoch lock: while an epoch is being built the
        tree holds leaves of the next epoch, and a proof must match its root."""
        async with self._lock:
            return await self._lookup(account_id, since)

    async def history(self, account_id: str, since_version: int, since: int) -> dict[str, Any]:
        """The owner's versions after ``since_version``, and its lookup, under one lock."""
        async with self._lock:
            found = await self._store.history(account_id, since_version, MAX_HISTORY)
            return {
                "versions": [_version_json(v) for v in found],
                "more": len(found) == MAX_HISTORY,
                "lookup": await self._lookup(account_id, since),
            }

    async def _tail(self) -> tuple[TreeHead, list[dict[str, Any]]]:
        """A signed head and the log entries from the current epoch's to its end."""
        head = await self._log.head()
        if self.log_index is None:
            return head, []
        return head, await self._log.entries(self.log_index, head.size)

    async def _lookup(self, account_id: str, since: int) -> dict[str, Any]:
        head, tail = await self._tail()
        rounds = 0
        while any(e["kind"] == "kt_epoch" for e in tail[1:]):
            # Another node logged a newer epoch: never answer from a stale one.
            rounds += 1
            if rounds > MAX_CATCH_UP:
                raise Unavailable("the key directory is changing fast; retry in a moment")
            await self._follow()
            head, tail = await self._tail()
        if not self._in_sync:
            raise Unavailable("the key directory is catching up; retry in a few seconds")
        latest = self._latest or {}
        state = latest.get(account_id) if account_id in self._present else None
        found = self._tree.prove(kt.index_of(account_id))
        if state is None or found is None or self.log_index is None or found[0] != state.value:
            raise NotFound("this account is not in the key directory yet")
        return {
            "epoch": self.epoch,
            "root": _e(self.root),
            "log_index": self.log_index,
            **_version_json(state),
            "proof": _e(found[1].to_bytes()),
            "head": {
                "size": head.size,
                "root": _e(head.root),
                "timestamp_ms": head.timestamp_ms,
                "signature": _e(head.signature),
            },
            "public_key": _e(self._log.key.public),
            "inclusion": [_e(p) for p in await self._log.inclusion(self.log_index, head.size)],
            "tail": [_e(e["raw"]) for e in tail],
            "consistency": (
                [_e(p) for p in await self._log.consistency(since, head.size)]
                if 0 < since <= head.size
                else None
            ),
        }

    async def put_device_list(
        self, account_id: str, counter: int, devices: list[int], signature: bytes
    ) -> None:
        """Store the device list an owner signed; the signature must verify under the
        account's identity key and the counter must be newer than the stored one's."""
        identity = await self._store.identity(account_id)
        if identity is None:
            raise NotFound("no such account")
        if devices != sorted(set(devices)) or len(devices) > kt.MAX_DEVICES:
            raise BadRequest("devices must be distinct and in ascending order", "invalid_request")
        signed = DeviceList(counter, tuple(devices), signature)
        try:
            blob = signed.to_bytes()
            DeviceList.from_bytes(blob)
        except DirectoryProofError as exc:
            raise BadRequest("malformed device list", "invalid_request") from exc
        if kt.signed_devices(blob, identity, account_id) is None:
            raise BadRequest(
                "the device list is not signed by this account's identity key", "invalid_request"
            )
        if not await self._store.put_device_list(account_id, counter, blob):
            raise StaleDeviceList("a newer device list is already stored")
        self.request_epoch()


def _tree_of(latest: dict[str, Version]) -> Directory:
    tree = Directory()
    for account, v in latest.items():
        tree.set(kt.index_of(account), v.value)
    return tree


def _version_json(v: Version) -> dict[str, Any]:
    return {
        "version": v.version,
        "version_epoch": v.epoch,
        "identity_key": _e(v.identity_key),
        "devices": list(v.devices),
        "device_list": _e(v.device_list),
        "prev": _e(v.prev),
    }
