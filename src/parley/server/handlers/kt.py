"""Key transparency: every account's identity key and device list, published in
the key directory (``translog.directory``) with a new root per epoch.

Theory of operation. An epoch reads the key material from the database,
bumps the version of every account whose state changed, updates the sparse
Merkle tree, and, if the root moved, appends ``{"kind": "kt_epoch", epoch,
root, size}`` to the public transparency log, whose signed heads make each
epoch root a public, append-only commitment. Epochs run every
``--kt-epoch-seconds`` (default 10) and right after any key change on this
server. A lookup returns the account's published state with its directory
proof and the log index of the epoch, so a client can verify it up to a signed
head. Because the epoch is built from the database itself, a key or device
slipped into the database either shows up in the directory, where its owner's
self-monitoring sees it, or it does not, and then bundles disagree with the
directory and contacts refuse them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any

from parley.errors import NotFound
from parley.server.handlers.transparency import TransparencyHandler
from parley.server.storage.kt import KtStore
from parley.translog import directory as kt
from parley.translog.directory import Directory

log = logging.getLogger(__name__)


class KtHandler:
    def __init__(
        self,
        store: KtStore,
        secret: bytes,
        transparency: TransparencyHandler,
        clock_ms: Callable[[], int],
    ) -> None:
        self._store = store
        self._secret = secret
        self._log = transparency
        self._now = clock_ms
        self._tree = Directory()
        self._published: dict[str, tuple[int, bytes, bytes, list[int]]] = {}
        self.epoch = 0
        self.root = kt.EMPTY
        self.log_index: int | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def request_epoch(self) -> None:
        """Publish soon (called after a key change)."""
        self._wake.set()

    async def publish(self) -> dict[str, Any]:
        async with self._lock:
            states = await self._store.key_states()
            stored = await self._store.published()
            changed: dict[str, tuple[int, bytes]] = {}
            for account, (identity, devices) in states.items():
                version, value = stored.get(account, (0, b""))
                current = kt.value_hash(account, version, identity, devices)
                if current != value:
                    version += 1
                    current = kt.value_hash(account, version, identity, devices)
                    changed[account] = (version, current)
                previous = self._published.get(account)
                self._published[account] = (version, current, identity, devices)
                if previous is None or previous[1] != current:  # rehash changed paths only
                    self._tree.set(kt.index_of(self._secret, account), current)
            # Deleted accounts keep their last leaf (history is append-only); they no longer resolve.
            removed = [a for a in stored if a not in states]
            for a in removed:
                self._published.pop(a, None)
            if changed:
                await self._store.save(changed, [])
            root = self._tree.commit()
            if self.log_index is None:
                await self._resume()
            if root != self.root or self.log_index is None:
                self.epoch += 1
                self.root = root
                self.log_index = await self._log.append(
                    "kt_epoch", {"epoch": self.epoch, "root": root.hex(), "size": self._tree.size}
                )
            return {
                "epoch": self.epoch,
                "root": self.root.hex(),
                "log_index": self.log_index,
                "changed": len(changed),
            }

    async def _resume(self) -> None:
        """After a restart, continue from the last logged epoch (no epoch without a change)."""
        head = await self._log.head()
        start = max(0, head.size - 1000)
        for entry in reversed(await self._log.entries(start, head.size)):
            if entry["kind"] == "kt_epoch":
                self.epoch = int(entry["body"]["epoch"])
                self.root = bytes.fromhex(entry["body"]["root"])
                self.log_index = int(entry["index"])
                return

    async def loop(self, interval_s: float) -> None:
        """Publish every ``interval_s``, or soon after a key change (the first epoch is
        published at start-up by the caller). The wake flag is cleared *before* an
        epoch reads the database, so a change made during an epoch gets the next one."""
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

    async def lookup(self, account_id: str) -> dict[str, Any]:
        """The published state of an account with its proof (no other account named).

        Taken under the epoch lock: while an epoch is being built the tree holds
        leaves of the next epoch, and a proof must match the root it is served with."""
        async with self._lock:
            return self._lookup(account_id)

    def _lookup(self, account_id: str) -> dict[str, Any]:
        state = self._published.get(account_id)
        index = kt.index_of(self._secret, account_id)
        found = self._tree.prove(index)
        if state is None or found is None or self.log_index is None:
            raise NotFound("this account is not in the key directory yet")
        version, _value, identity, devices = state
        return {
            "epoch": self.epoch,
            "root": base64.b64encode(self.root).decode(),
            "log_index": self.log_index,
            "index": base64.b64encode(index).decode(),
            "version": version,
            "identity_key": base64.b64encode(identity).decode(),
            "devices": devices,
            "proof": base64.b64encode(found[1].to_bytes()).decode(),
        }
