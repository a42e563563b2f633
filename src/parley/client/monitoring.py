"""Key transparency for one's own account (self-monitoring) and prekey upkeep."""

from __future__ import annotations

import base64
import contextlib
from typing import Any

from parley.client.api import ApiClient, b64e, keys_json
from parley.client.base import (
    FOREIGN_IDENTITY,
    PRIMARY_DEVICE,
    RECHECK_MS,
    REFILL,
    RETRIES,
    Session,
    now_ms,
)
from parley.client.kt import (
    KeyTransparencyError,
    check_gossip,
    head_code,
    own_history,
    publish_device_list,
    verified_head,
    verify_history,
)
from parley.client.sending import Sending
from parley.client.state import Head, KtView, OwnEntry
from parley.errors import (
    ServerError,
)
from parley.protocol.keys import IdentityKeyPair
from parley.translog import directory


class Monitoring(Sending):
    async def keys_check(
        self, ack: bool = False, retries: int = RETRIES, quick: bool = False
    ) -> dict[str, Any]:
        """Check this account's entry in the key directory: every version published since
        the last check (a history chained to the entry now published, so a version shown
        for one epoch and reverted is seen too) against what this device knows, its
        identity key and the devices the user linked. Anything else, and any proof the
        server cannot give, is an alarm, kept and shown on every command until
        acknowledged (``ack``: unknown devices still listed are then not raised again,
        but never signed into the device list; a foreign identity key stays an alarm).
        ``quick`` (the check before every command) is skipped, answering ``skipped``,
        when a check without alarms completed less than ``RECHECK_MS`` ago."""

        async def act(s: Session) -> dict[str, Any]:
            kt = s.api.kt_view
            if quick and not kt.alarms and now_ms() - kt.checked_ms < RECHECK_MS:
                return {"ok": True, "alarms": [], "skipped": True}
            published: dict[str, Any] | None = None
            failure: str | None = None
            try:
                published = await self._check_own_entry(s)
            except KeyTransparencyError as exc:
                failure = str(exc)
                kt.alarm(failure)
            if ack:
                current = [failure] if failure else []
                if published is not None:
                    if published["identity_key"] != s.device.identity.public.to_bytes():
                        current.append(FOREIGN_IDENTITY)
                    unknown = set(published["devices"]) - set(kt.devices)
                    kt.acknowledged = sorted(set(kt.acknowledged) | unknown)
                kt.alarms = current
            head = kt.head
            return {
                "ok": not kt.alarms and published is not None,
                "alarms": list(kt.alarms),
                "devices": published["devices"] if published else None,
                "signed_devices": (
                    sorted(published["signed_devices"] or []) if published else None
                ),
                "epoch": published["epoch"] if published else None,
                "version": published["version"] if published else None,
                "head": head_code(head.size, base64.b64decode(head.root)) if head else None,
            }

        return dict(await self.run(act, retries))

    async def _check_own_entry(self, s: Session) -> dict[str, Any]:
        kt = s.api.kt_view
        me, mine = s.device.account_id, s.device.identity.public.to_bytes()
        own = kt.own
        base = own.version if own else 0
        published, versions = await own_history(s.api, me, base)
        try:
            verify_history(
                me,
                base,
                base64.b64decode(own.value) if own else directory.EMPTY,
                versions,
                published,
            )
        except KeyTransparencyError as exc:
            kt.alarm(str(exc))
            raise
        if own is None:
            # The first check: a primary reviews every version since its identity was
            # first published (its registration); a linked device starts from the entry
            # as it is now (it vouches for the devices it joined).
            ours = [i for i, v in enumerate(versions) if v["identity_key"] == mine]
            keep = ours[0] if ours and s.device.device_id == PRIMARY_DEVICE else -1
            versions = versions[keep:]
        known = set(kt.devices)
        acknowledged = set(kt.acknowledged)
        current = set(published["devices"])
        vouched = _vouched(kt, versions, mine, me)
        for v in versions:
            where = f"directory version {v['version']}, epoch {v['epoch']}"
            if v["identity_key"] != mine:
                kt.alarm(
                    f"{FOREIGN_IDENTITY} ({where}"
                    + ("" if published["identity_key"] != mine else "; reverted since")
                    + ")",
                )
            new = sorted(set(v["devices"]) - known - acknowledged)
            linked = set(new) & vouched  # each used up a link code, if one was pending
            kt.expected_links = max(0, kt.expected_links - len(linked))
            known |= linked
            new = [d for d in new if d not in vouched]
            if new and len(new) <= kt.expected_links:
                kt.expected_links -= len(new)  # devices this user linked
                known |= set(new)
                new = []
            for d in new:
                kt.alarm(
                    f"device {d} was added to your account and you did not link it ({where}"
                    + ("" if d in current else "; removed again since")
                    + ")",
                )
        if published["identity_key"] != mine:
            kt.alarm(FOREIGN_IDENTITY)
        kt.devices = sorted(known & current)
        kt.own = OwnEntry(published["version"], b64e(published["value"]))
        kt.version, kt.epoch = published["version"], published["epoch"]
        kt.checked_ms = now_ms()
        if published["identity_key"] == mine:
            await self._keep_device_list_signed(s, published)
        return published

    async def _check_gossip(self, s: Session, claim: object, sender: str) -> None:
        """A message's head against ours: a fork alarm, said at once, if the server
        cannot prove them consistent (the message itself is still shown: it is the
        sender's, end to end; the log is what the server forked)."""
        forked = await check_gossip(s.api, claim, sender)
        if forked:
            self.notify(f"ALARM: {forked}")
            self.on_alarm(forked)

    async def _keep_device_list_signed(self, s: Session, published: dict[str, Any]) -> None:
        """The signed device list should be exactly the devices this owner knows are its
        own and still listed (never one it did not link); re-sign it when it is not."""
        kt = s.api.kt_view
        want = sorted(set(kt.devices) | {s.device.device_id})
        signed = published["signed_devices"]
        if signed is not None and sorted(signed) == want:
            return
        if kt.signed == want and now_ms() - kt.signed_ms < 60_000:
            return  # uploaded a moment ago; its epoch is on its way
        with contextlib.suppress(ServerError):
            await publish_device_list(
                s.api, s.device.identity.signing, s.device.account_id, want, now_ms()
            )
            kt.signed_ms = now_ms()

    async def maintain_keys(self, retries: int = RETRIES, quick: bool = False) -> dict[str, Any]:
        """Rotate the signed and last-resort prekeys when due and refill one-time
        prekeys when the server says they run low; upload what changed. ``quick`` is
        skipped when done less than ``RECHECK_MS`` ago (the push socket also says when
        prekeys run low)."""

        async def act(s: Session) -> dict[str, Any]:
            if quick and now_ms() - s.state.maintained_ms < RECHECK_MS:
                return {"rotated": False, "one_time_added": 0, "skipped": True}
            done = await self._maintain_keys(s)
            s.state.maintained_ms = now_ms()
            return done

        return dict(await self.run(act, retries))

    async def _maintain_keys(self, s: Session) -> dict[str, Any]:
        rotated = s.device.rotate_if_due(now_ms())
        # keys rotated but not yet uploaded (a failed upload) go up next time
        unsent = s.state.prekeys_uploaded_ms < s.device.prekeys_rotated_ms
        status = await s.api.call("GET", "/v1/keys/status")
        ot, kem = s.device.new_one_time_keys(REFILL) if status["low"] else ([], [])
        if unsent or ot:
            fresh = rotated or unsent
            await s.api.call(
                "PUT",
                "/v1/keys",
                keys_json(
                    s.device.signed_prekey if fresh else None,
                    s.device.kem_last_resort if fresh else None,
                    ot,
                    kem,
                ),
            )
            s.state.prekeys_uploaded_ms = s.device.prekeys_rotated_ms
        return {"rotated": rotated, "one_time_added": len(ot)}

    async def keys_head(self) -> str:
        async def act(s: Session) -> str:
            head = await verified_head(s.api)
            return head_code(head.size, head.root)

        return str(await self.run(act))


def _vouched(kt: KtView, versions: list[dict[str, Any]], mine: bytes, me: str) -> set[int]:
    """Devices one of this account's devices signed into a device list since the last
    check: each was linked by a holder of the identity key (the server cannot sign).
    Only lists newer than every list seen before count; an older one published again
    (a replay that could bring back a device since unlinked) is an alarm."""
    vouched: set[int] = set()
    newest = kt.list_seen
    for v in versions:
        if directory.signed_devices(v["device_list"], mine, me) is None:
            continue
        signed = directory.DeviceList.from_bytes(v["device_list"])
        if signed.counter < newest:
            kt.alarm(
                "an older device list of yours was published again "
                f"(directory version {v['version']}, epoch {v['epoch']})",
            )
            continue
        newest = signed.counter
        vouched |= set(signed.devices)
    kt.list_seen = newest
    return vouched


async def _start_monitoring(
    api: ApiClient,
    identity: IdentityKeyPair,
    account_id: str,
    device_id: int,
    inherited: object,
    server_devices: list[int] | None = None,
) -> KtView:
    """The key-transparency view of a new profile. A primary pins the log's key and the
    head it sees at registration (trust on first use); a linked device takes both from
    the primary, inside the encrypted provisioning message, so a server that shows it
    another log is caught at once. The device signs the devices it vouches for into the
    account's device list: itself, and those the primary vouches for still linked."""
    view = KtView(devices=[device_id])
    if isinstance(inherited, dict):
        if isinstance(inherited.get("log_key"), str):
            view.log_key = inherited["log_key"]
        head = inherited.get("head")
        if isinstance(head, dict) and isinstance(head.get("root"), str):
            view.head = Head(int(head["size"]), head["root"])
        vouched = {d for d in inherited.get("devices") or [] if isinstance(d, int)}
        view.devices = sorted((vouched & set(server_devices or [])) | {device_id})
    api.kt_view = view
    with contextlib.suppress(ServerError):  # else the first 'keys check' signs it
        await publish_device_list(api, identity.signing, account_id, view.devices, now_ms())
    with contextlib.suppress(ServerError):  # else the first lookup pins it
        await verified_head(api)
    return view
