"""The async client: a device's state plus the server transport.

Retries are safe: every send carries a client message id, so a retry after a
network fault is stored once (the server answers ``duplicate: true``). A
409 ``stale_devices`` refreshes the recipient's device list and retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from parley.client import groups
from parley.client.api import ApiClient, b64e, keys_json
from parley.client.device import DeviceState, Received
from parley.client.kt import (
    KeyTransparencyError,
    check_served_keys,
    publish_device_list,
    served_keys_published,
)
from parley.crypto.random import Random
from parley.errors import InvalidGroupChange, RemoteProtocolError, ServerError
from parley.protocol import group_state as gs
from parley.protocol.keys import IdentityKeyPair
from parley.protocol.wire import AttachmentPointer, Content

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


MAX_STALE_RETRIES = 3


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Messenger:
    def __init__(
        self,
        api: ApiClient,
        state: DeviceState,
        before_send: Callable[[], None] | None = None,
        verified: dict[str, tuple[tuple[str, tuple[int, ...]], float]] | None = None,
        verified_ttl: float = float("inf"),
        proofs: dict[str, tuple[float, dict[str, Any]]] | None = None,
    ) -> None:
        self.api = api
        self.state = state
        # Called after encrypting and before posting: the app commits the advanced
        # ratchet there, so a crash can never make it encrypt under the same key twice.
        self.before_send = before_send
        # Served keys already checked against the directory, and when: the app shares
        # one map between its messengers and bounds how long an entry holds.
        self._verified = {} if verified is None else verified
        self._verified_ttl = verified_ttl
        # Directory entries this process verified (``client.kt.verified_lookup``), and
        # when: the app's, filled by the contact lookup just before a send.
        self._proofs = {} if proofs is None else proofs

    @classmethod
    async def register(
        cls,
        url: str,
        phone: str,
        get_code: Callable[[str], Awaitable[str]],
        rng: Random,
        one_time: int = 20,
    ) -> Messenger:
        api = ApiClient(url)
        state = DeviceState(IdentityKeyPair.generate(rng), rng)
        await api.request_code(phone)
        code = await get_code(phone)
        ot, kem = state.new_one_time_keys(one_time)
        result = await api.verify(
            phone,
            code,
            state.identity,
            keys_json(state.signed_prekey, state.kem_last_resort, ot, kem),
        )
        state.account_id, state.device_id = result["account_id"], int(result["device_id"])
        # contacts encrypt only to devices the owner signed into its device list
        await publish_device_list(
            api, state.identity.signing, state.account_id, [state.device_id], now_ms()
        )
        return cls(api, state)

    @property
    def account_id(self) -> str:
        return self.state.account_id

    def content(
        self, text: str, attachments: tuple[AttachmentPointer, ...] = (), control: bytes = b""
    ) -> Content:
        return Content(self.state.rng(32), now_ms(), text, attachments, control)

    async def send_content(
        self, account_id: str, content: Content, client_id: str | None = None
    ) -> dict[str, Any]:
        """Encrypt for every device of the recipient and post; handles stale device lists."""
        client_id = client_id or str(uuid.uuid4())
        contact: dict[str, Any] = await self.api.call("GET", f"/v1/accounts/{account_id}")
        devices = [
            d
            for d in contact["devices"]
            if (account_id, d) != (self.account_id, self.state.device_id)
        ]
        for _ in range(MAX_STALE_RETRIES):
            await self._check_keys(account_id, contact["identity_key"], contact["devices"])
            # Before every encryption: a session encrypts only to the identity just
            # verified; a session with any other peer identity is dropped, never used.
            verified = base64.b64decode(contact["identity_key"])
            for d in devices:
                if self.state.peer_identity(account_id, d) not in (None, verified):
                    self.state.sessions.pop((account_id, d), None)
                    self.state.previous.pop((account_id, d), None)
            missing = [d for d in devices if not self.state.has_session(account_id, d)]
            if missing:
                bundles: dict[str, Any] = await self.api.call("GET", f"/v1/keys/{account_id}")
                if bundles["identity_key"] != contact["identity_key"]:
                    raise KeyTransparencyError(
                        "the server served two different identity keys for one account"
                    )
                for device in bundles["devices"]:
                    if device["device_id"] in missing:
                        self.state.start_session(account_id, bundles["identity_key"], device)
            messages = [
                {"device_id": d, "envelope": b64e(self.state.encrypt(account_id, d, content))}
                for d in devices
                if self.state.has_session(account_id, d)
            ]
            if self.before_send is not None:
                self.before_send()
            try:
                result: dict[str, Any] = await self.api.call(
                    "PUT",
                    f"/v1/messages/{account_id}",
                    {"client_id": client_id, "messages": messages},
                )
                return result
            except ServerError as exc:
                if exc.code != "stale_devices":
                    raise
                contact = await self.api.call("GET", f"/v1/accounts/{account_id}")
                extra = {int(d) for d in _int_list(exc.details.get("extra_devices"))}
                missing_now = {int(d) for d in _int_list(exc.details.get("missing_devices"))}
                for d in extra:
                    self.state.sessions.pop((account_id, d), None)
                devices = sorted((set(devices) - extra) | missing_now)
        raise ServerError(409, "stale_devices", "the recipient's devices kept changing; try again")

    async def _check_keys(self, account_id: str, identity_key: str, devices: list[int]) -> None:
        """Key transparency: only keys the directory publishes (cached per state). A
        directory entry this process verified less than ``verified_ttl`` ago (the
        contact lookup of this very send) admits the served keys when it shows exactly
        them, all signed; anything else is checked against a fresh proof, which alone
        may refuse."""
        state = (identity_key, tuple(sorted(devices)))
        now = time.monotonic()
        known = self._verified.get(account_id)
        if known is not None and known[0] == state and now - known[1] < self._verified_ttl:
            return
        identity = base64.b64decode(identity_key)
        proven = self._proofs.get(account_id)
        if (
            proven is not None
            and now - proven[0] < self._verified_ttl
            and served_keys_published(proven[1], identity, devices)
        ):
            self._verified[account_id] = (state, proven[0])
            return
        await check_served_keys(self.api, account_id, identity, list(devices))
        self._verified[account_id] = (state, time.monotonic())

    async def send_text(
        self, account_id: str, text: str, client_id: str | None = None
    ) -> dict[str, Any]:
        return await self.send_content(account_id, self.content(text), client_id)

    # -- groups ---------------------------------------------------------------------------------------
    # The library's groups work as the app's (client/groups.py): the state is a chain of
    # changes signed by an admin, stored sealed on the server and sent to members over
    # the 1:1 sessions; sender keys go to the signed roster only; and a send after any
    # removal, ours or another admin's, first rotates our key and sends the new one to
    # those who remain. (No names, no catching up from the server's copy: ``App`` does.)

    async def _add(self, account_id: str) -> gs.Add:
        info: dict[str, Any] = await self.api.call("GET", f"/v1/accounts/{account_id}")
        return gs.Add(account_id, base64.b64decode(info["identity_key"]))

    async def _store_change(self, gid: str, change: gs.GroupChange, master: bytes) -> None:
        sealed = gs.seal(master, change, self.state.rng)
        await self.api.call(
            "PUT", f"/v1/groups/{gid}/changes/{change.version}", {"change": b64e(sealed)}
        )

    async def _send_group_control(self, account_id: str, **control: Any) -> None:
        await self.send_content(account_id, self.content("", control=json.dumps(control).encode()))

    async def create_group(self, member_ids: list[str]) -> str:
        info: dict[str, Any] = await self.api.call("POST", "/v1/groups", {"members": member_ids})
        gid = str(info["group_id"])
        others = [m for m in dict.fromkeys(member_ids) if m != self.account_id]
        adds = [await self._add(m) for m in others]
        master, genesis = groups.create(self.state, gid, "", "", adds)
        await self._store_change(gid, genesis, master)
        groups.commit(self.state, gid, genesis, master)
        history = groups.info(self.state, gid, changes=[genesis], key=True)
        for member in others:
            await self._send_group_control(member, group=history)
        await self.distribute_sender_key(gid)
        return gid

    async def add_member(self, gid: str, account_id: str) -> None:
        await self.api.call("POST", f"/v1/groups/{gid}/members", {"account_id": account_id})
        await self._change(gid, [await self._add(account_id)])

    async def remove_member(self, gid: str, account_id: str) -> None:
        """Remove a member (the library does not tell it; the app does)."""
        await self._change(gid, [gs.Remove(account_id)], tell=False)
        await self.api.call("DELETE", f"/v1/groups/{gid}/members/{account_id}")
        await self.distribute_sender_key(gid)

    async def _change(self, gid: str, actions: list[gs.Action], tell: bool = True) -> None:
        log = groups.log_of(self.state, gid)
        if log is None:
            raise InvalidGroupChange("no signed state for this group")
        change = groups.propose(self.state, gid, actions)
        await self._store_change(gid, change, log.master_key)
        before = set(log.state.members)
        groups.commit(self.state, gid, change)
        after = set(log.state.members)
        for member in sorted(after - before):
            history = groups.info(self.state, gid, changes=log.changes, key=True)
            await self._send_group_control(member, group=history)
        others = (before & after) if not tell else (before | after) - (after - before)
        for member in sorted(others - {self.account_id}):
            await self._send_group_control(
                member, group=groups.info(self.state, gid, changes=[change])
            )

    async def distribute_sender_key(self, gid: str) -> None:
        """Our current key to every member of the signed roster who lacks it."""
        group = self.state.group(gid)
        for member in groups.needs_key(group):
            if member != self.account_id:
                await self._send_group_control(
                    member,
                    group=groups.info(self.state, gid),
                    sender_key=groups.sender_key(self.state, gid),
                )
            group.sent_to.add(member)

    async def send_group(self, gid: str, text: str, client_id: str | None = None) -> dict[str, Any]:
        """Encrypt once for the group under our sender key, rotated and re-sent first if
        the roster changed (someone removed or added, by us or another admin). Refused
        while a member has named a newer state this device does not have."""
        group = self.state.group(gid)
        log = group.log
        if log is None or not group.is_member:
            raise InvalidGroupChange("not a member of this group's signed state")
        if log.pending is not None or log.forked is not None:
            raise InvalidGroupChange("the group has changed and this device lacks the change")
        await self.distribute_sender_key(gid)
        control = {groups.CONTROL: {"id": gid, "head": groups.head(log)}}
        msg = group.encrypt(self.content(text, control=json.dumps(control).encode()))
        result: dict[str, Any] = await self.api.call(
            "PUT",
            f"/v1/groups/{gid}/messages",
            {"client_id": client_id or str(uuid.uuid4()), "envelope": b64e(msg.to_bytes())},
        )
        return result

    # -- receiving ------------------------------------------------------------------------------------

    async def receive(
        self, ws: ClientConnection, until_empty: bool = True, timeout: float = 10.0
    ) -> list[Received]:
        """Read pushed messages, decrypt and ack each; stop at ``queue_empty`` or on timeout.

        Messages that fail to decrypt are acknowledged and dropped (they can never
        open later), so a forged message cannot block the queue.
        """
        got: list[Received] = []
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout)
            except TimeoutError:
                return got
            frame = json.loads(raw)
            if frame.get("type") == "queue_empty":
                if until_empty:
                    return got
                continue
            if frame.get("type") != "message":
                continue
            with contextlib.suppress(RemoteProtocolError):
                got.append(self.state.open(frame))
            await ApiClient.ack(ws, [frame["id"]])


def _int_list(value: object) -> list[int]:
    return [int(v) for v in value if isinstance(v, int)] if isinstance(value, list) else []
