"""Groups as the user drives them: create, change, send, list, and keeping this
device's signed state in step with the other members'."""

from __future__ import annotations

import base64
import contextlib
import re
import uuid
from typing import Any

from parley.client import groups as grp
from parley.client.api import b64e
from parley.client.base import (
    MAX_NAME,
    ClientError,
    Session,
    check_name,
    check_text,
    now_ms,
)
from parley.client.monitoring import Monitoring
from parley.client.state import GroupRecord, ProfileState
from parley.errors import (
    InvalidGroupChange,
    ParleyError,
    RemoteProtocolError,
    ServerError,
)
from parley.protocol import group_state as gs
from parley.protocol.sender_keys import GroupSession


class GroupFlow(Monitoring):
    # A group's members, admins and name are its signed state (protocol/group_state.py,
    # client/groups.py): a chain of changes each signed by an admin, carried over the
    # 1:1 sessions and kept sealed by the server. Sender keys go to that roster only.
    # The server's own membership routes messages, and where it disagrees the user is
    # told; nothing it says changes the roster.

    def _group(self, s: Session, ref: str) -> tuple[str, GroupSession]:
        gid = self.group_id(s.state, ref)
        group = s.device.groups.get(gid)
        if group is None or group.log is None:
            raise ClientError(
                f"this device holds no signed state for group {ref!r} yet "
                "(run 'parley receive'; a group made before signed groups must be created again)"
            )
        return gid, group

    @staticmethod
    def _group_name(s: Session, gid: str) -> str:
        log = grp.log_of(s.device, gid)
        if log is not None and log.state.name:
            return log.state.name
        return s.state.group_name(gid)

    @staticmethod
    def _sync_group_record(s: Session, gid: str) -> None:
        """The profile's record of a group (its name, for lines and names on the
        command line) follows the signed state."""
        log = grp.log_of(s.device, gid)
        if log is None:
            return
        record = s.state.groups.setdefault(gid, GroupRecord(gid))
        record.name = log.state.name[:MAX_NAME] or gid
        record.left = s.device.account_id not in log.state.members

    async def _store_change(
        self, s: Session, gid: str, change: gs.GroupChange, master: bytes
    ) -> None:
        sealed = gs.seal(master, change, s.device.rng)
        await s.api.call(
            "PUT", f"/v1/groups/{gid}/changes/{change.version}", {"change": b64e(sealed)}
        )

    async def _make_change(
        self, s: Session, gid: str, actions: list[gs.Action]
    ) -> tuple[gs.GroupChange, set[str]]:
        """Sign the next change, have the server store it as the next version (after
        catching up if another admin changed the group first), then apply it.
        Returns it with the members before it."""
        for _ in range(3):
            log = grp.log_of(s.device, gid)
            assert log is not None
            try:
                change = grp.propose(s.device, gid, actions)
            except InvalidGroupChange as exc:
                raise ClientError(
                    f"that change to the group is not possible: {exc.message}"
                ) from exc
            try:
                await self._store_change(s, gid, change, log.master_key)
            except ServerError as exc:
                if exc.code != "version_conflict":
                    raise
                await self._catch_up(s, gid)
                continue
            before = set(log.state.members)
            events = grp.commit(s.device, gid, change)
            self._sync_group_record(s, gid)
            for i, event in enumerate(events):
                self._record(s, **await self._event_entry(s, gid, event, i, now_ms()))
            return change, before
        raise ClientError("the group kept changing while this change was made; try again")

    async def _deliver_change(
        self, s: Session, gid: str, change: gs.GroupChange, before: set[str]
    ) -> None:
        """Send a change to every member before and after it (a removed member learns
        it), new members first and with the whole history and the master key (so no
        member's key can reach them before the state that makes it acceptable), and
        to our other devices."""
        log = grp.log_of(s.device, gid)
        assert log is not None
        me = s.device.account_id
        after = set(log.state.members)
        new = sorted(after - before - {me})
        for member in new:
            await self._send_control(
                s, member, group=grp.info(s.device, gid, changes=log.changes, key=True)
            )
        for member in sorted((before | after) - set(new) - {me}):
            await self._send_control(s, member, group=grp.info(s.device, gid, changes=[change]))
        if await self._has_other_devices(s):
            await self._send_control(
                s, me, group=grp.info(s.device, gid, changes=log.changes, key=True)
            )

    async def _roster_identity_ok(self, s: Session, gid: str, member: str) -> bool:
        """The key directory must give a member the identity the admin who added them
        signed; otherwise that account gets no sender key (and the user is told)."""
        log = grp.log_of(s.device, gid)
        assert log is not None
        try:
            published = await self._published(s, member)
        except ParleyError:
            published = None
        if (
            published is not None
            and published["identity_key"] == log.state.members[member].identity
        ):
            return True
        who = await self._member_phone(s, gid, member)
        self.notify(
            f"ALARM: the key directory does not give {who} the identity key with which "
            f"{self._group_name(s, gid)!r} lists them; they get no key from you"
        )
        return False

    async def _announce(self, s: Session, gid: str) -> None:
        """Our current sender key (with our state) to every member of the signed roster
        who lacks it, and to our other devices (with the history and master key)."""
        group = s.device.groups[gid]
        log = group.log
        assert log is not None
        me = s.device.account_id
        skd = grp.sender_key(s.device, gid)
        for member in grp.needs_key(group):
            if member == me:
                if await self._has_other_devices(s):
                    info = grp.info(s.device, gid, changes=log.changes, key=True)
                    await self._send_control(s, me, group=info, sender_key=skd)
            elif await self._roster_identity_ok(s, gid, member):
                await self._send_control(s, member, group=grp.info(s.device, gid), sender_key=skd)
            else:
                continue
            group.sent_to.add(member)

    async def _catch_up(self, s: Session, gid: str) -> None:
        """Apply what the server's sealed copy of the history holds beyond our version;
        every change is verified as if a member had sent it. A copy that does not
        verify is refused (and said), never applied."""
        group = s.device.groups[gid]
        log = group.log
        assert log is not None
        while True:
            try:
                page = await s.api.call("GET", f"/v1/groups/{gid}/changes?since={log.version + 1}")
            except ServerError as exc:
                if exc.code in ("not_found", "forbidden"):
                    break
                raise
            sealed = page.get("changes", [])
            if not sealed:
                break
            try:
                changes = [
                    gs.unseal(
                        log.master_key,
                        group.group_id,
                        int(c["version"]),
                        base64.b64decode(c["change"]),
                    )
                    for c in sealed
                ]
                grp.extend(s.device, gid, changes)
            except (RemoteProtocolError, KeyError, TypeError, ValueError) as exc:
                self.notify(
                    f"the server's copy of {self._group_name(s, gid)!r}'s history does not "
                    f"verify ({exc}); it was not applied"
                )
                break
            if len(sealed) < grp.SERVER_PAGE:
                break
        grp.retry_deferred(s.device, gid)
        self._sync_group_record(s, gid)

    async def _bootstrap(self, s: Session, gid: str, master: bytes, deliverer: str) -> None:
        """A history too long for one message: read it from the server's sealed copy,
        then trust it as if the member who sent the key had sent it all."""
        changes: list[gs.GroupChange] = []
        while True:
            page = await s.api.call("GET", f"/v1/groups/{gid}/changes?since={len(changes)}")
            sealed = page.get("changes", [])
            changes += [
                gs.unseal(
                    master, bytes.fromhex(gid), int(c["version"]), base64.b64decode(c["change"])
                )
                for c in sealed
            ]
            if len(sealed) < grp.SERVER_PAGE:
                break
        grp.start(s.device, gid, master, changes, deliverer)
        self._sync_group_record(s, gid)

    async def _answer_requests(self, s: Session, gid: str) -> None:
        """Members who asked (they saw a newer state, or a key they lack) get our key
        and the changes after the state they named."""
        group = s.device.groups[gid]
        log = group.log
        assert log is not None
        skd = grp.sender_key(s.device, gid)
        for member, named in group.requests.items():
            if member not in log.state.members:
                continue
            on_chain = (
                named is not None and named[0] <= log.version and log.hash_at(named[0]) == named[1]
            )
            changes = log.since(named[0]) if on_chain and named is not None else log.changes
            info = grp.info(s.device, gid, changes=changes, key=not on_chain)
            await self._send_control(s, member, group=info, sender_key=skd)
            group.sent_to.add(member)
        group.requests.clear()

    async def _check_server_view(
        self, s: Session, gid: str, served: list[str] | None = None
    ) -> list[str]:
        """Accounts the server routes the group to that no admin added: they get no key
        from us and their messages are refused; the user is told each time."""
        log = grp.log_of(s.device, gid)
        assert log is not None
        if served is None:
            try:
                served = list((await s.api.call("GET", f"/v1/groups/{gid}"))["members"])
            except ServerError as exc:
                if exc.code != "not_found":
                    raise
                served = []
        ghosts = sorted(set(served) - set(log.state.members))
        phones = [await self._member_phone(s, gid, g) for g in ghosts]
        for who in phones:
            self.notify(
                f"ALARM: the server lists {who} as a member of {self._group_name(s, gid)!r}, "
                "but no admin of the group added them: they get no key from you and their "
                "messages are refused"
            )
        s.state.groups.setdefault(gid, GroupRecord(gid)).unconfirmed = ghosts
        return phones

    async def _hold_if_stale(self, s: Session, gid: str) -> None:
        """Refuse to send under a roster a member has shown to be old (a newer state it
        named, or a key of theirs this device never got, as after a removal): ask them
        for what is missing instead. A different history is an alarm."""
        group = s.device.groups[gid]
        log = group.log
        assert log is not None
        name = self._group_name(s, gid)
        if log.forked is not None:
            who = await self._member_phone(s, gid, log.forked.by)
            raise ClientError(
                f"ALARM: {who} and this device were shown different histories of {name!r} "
                f"(at version {log.forked.version}); nothing was sent"
            )
        missed = sorted(m for m in group.missed if m in log.state.members)
        if log.pending is None and not missed:
            return
        ask = set(missed) | ({log.pending.by} if log.pending is not None else set())
        for member in sorted(ask & set(log.state.members)):
            await self._send_control(s, member, group=grp.info(s.device, gid, request=True))
        who = ", ".join([await self._member_phone(s, gid, m) for m in sorted(ask)])
        if log.pending is not None:
            why = (
                f"{name!r} has changed (version {log.pending.version}) but this device has "
                f"only version {log.version}: the change has not reached it"
            )
        else:
            why = (
                f"the latest messages in {name!r} from {who} use a key this device never "
                "received, so a change may have been kept from it"
            )
        raise ClientError(
            f"{why}. Nothing was sent: {who} was asked for what is missing; "
            "try again after 'parley receive'"
        )

    async def _event_entry(
        self, s: Session, gid: str, event: gs.GroupEvent, index: int, sent_at: int
    ) -> dict[str, Any]:
        """A change as a history entry and a line ("Alice added Dave")."""
        me = s.device.account_id
        kind, member, group_name = event.kind, None, None
        if kind in ("created", "renamed"):
            group_name = event.subject
        else:
            member = await self._member_phone(s, gid, event.subject)
            if event.subject == me and kind in ("member_added", "member_removed"):
                kind = "added" if kind == "member_added" else "removed"
        return {
            # Not an id a sender may give a message (MESSAGE_ID): none can shadow a change.
            "id": f"group:{gid}:{event.version}:{index}",
            "chat": gid,
            "group": gid,
            "sender": await self._member_phone(s, gid, event.actor),
            "sender_name": self._sender_name(s, event.actor, None),
            "text": "",
            "event": kind,
            "member": member,
            "group_name": group_name,
            "description": grp.describe(kind, member, group_name, event.subject == me),
            "attachments": [],
            "sent_at": sent_at,
            "outgoing": event.actor == me,
        }

    async def _show_events(self, s: Session, sent_at: int, receiving: bool) -> None:
        """Record every applied change; ``receive`` shows them as lines, other commands
        as notes."""
        done: dict[tuple[str, int], int] = {}
        for gid, event in grp.take_events(s.device):
            index = done[gid, event.version] = done.get((gid, event.version), -1) + 1
            self._sync_group_record(s, gid)
            entry = await self._event_entry(s, gid, event, index, sent_at)
            if self.profile.has_message(entry["id"]):
                continue
            self._record(s, **entry)
            if receiving:
                self._group_lines.append(entry)
            else:
                self.notify(
                    f"[{self._group_name(s, gid)}] {entry['sender']} {entry['description']}"
                )

    async def group_create(self, name: str, phones: list[str]) -> str:
        check_name(name)

        async def act(s: Session) -> str:
            me = s.device.account_id
            contacts = [await self._contact(s, p) for p in phones]
            members = {c.account_id: c for c in contacts if c.account_id != me}
            created = await s.api.call("POST", "/v1/groups", {"members": list(members)})
            gid = str(created["group_id"])
            adds = [gs.Add(a, base64.b64decode(c.identity), c.phone) for a, c in members.items()]
            master, genesis = grp.create(s.device, gid, name, s.phone, adds)
            await self._store_change(s, gid, genesis, master)
            events = grp.commit(s.device, gid, genesis, master)
            self._sync_group_record(s, gid)
            for i, event in enumerate(events):
                self._record(s, **await self._event_entry(s, gid, event, i, now_ms()))
            await self._deliver_change(s, gid, genesis, set())
            await self._announce(s, gid)
            return gid

        return str(await self.run(act))

    @staticmethod
    def group_id(state: ProfileState, ref: str) -> str:
        """A group named by its id, or by its name when exactly one group has it."""
        groups = state.groups
        if ref in groups:
            return ref
        named = sorted(g for g, info in groups.items() if info.name == ref)
        if len(named) == 1:
            return str(named[0])
        if named:
            raise ClientError(
                f"{len(named)} groups are named {ref!r}: use an id ({', '.join(named)})"
            )
        if re.fullmatch(r"[0-9a-f]{32}", ref):
            return ref
        raise ClientError(f"no group named {ref!r} (see 'parley group list')")

    async def group_change(self, ref: str, phone: str, add: bool) -> None:
        """Add or remove a member: a change signed by us (an admin), stored by the server
        as the next version, then sent to every member; a removal rotates our key."""

        async def act(s: Session) -> None:
            gid, group = self._group(s, ref)
            await self._catch_up(s, gid)
            await self._show_events(s, now_ms(), receiving=False)
            log = group.log
            assert log is not None
            name = self._group_name(s, gid)
            if not log.state.is_admin(s.device.account_id):
                raise ClientError(f"only an admin of {name!r} can add or remove members")
            await self._hold_if_stale(s, gid)  # a change must follow the latest state
            contact = await self._contact(s, phone)
            account = contact.account_id
            action: gs.Action
            if add:
                if account in log.state.members:
                    raise ClientError(f"{contact.phone} is already a member of {name!r}")
                try:
                    await s.api.call("POST", f"/v1/groups/{gid}/members", {"account_id": account})
                except ServerError as exc:
                    if exc.code != "conflict":  # routed already (a member the server added)
                        raise
                action = gs.Add(account, base64.b64decode(contact.identity), contact.phone)
            else:
                if account not in log.state.members:
                    raise ClientError(f"{contact.phone} is not a member of {name!r}")
                action = gs.Remove(account)
            change, before = await self._make_change(s, gid, [action])
            if not add:
                with contextlib.suppress(ServerError):  # routing only: the roster has changed
                    await s.api.call("DELETE", f"/v1/groups/{gid}/members/{account}")
            await self._deliver_change(s, gid, change, before)
            await self._announce(s, gid)

        await self.run(act)

    async def group_send(self, ref: str, text: str) -> str:
        check_text(text)

        async def act(s: Session) -> str:
            gid, group = self._group(s, ref)
            if not group.is_member:
                raise ClientError(f"you are no longer a member of {self._group_name(s, gid)!r}")
            await self._catch_up(s, gid)
            await self._show_events(s, now_ms(), receiving=False)
            log = group.log
            assert log is not None
            if s.device.account_id not in log.state.members:
                raise ClientError(f"you are no longer a member of {self._group_name(s, gid)!r}")
            await self._check_server_view(s, gid)
            await self._hold_if_stale(s, gid)
            await self._announce(s, gid)
            client_id = str(uuid.uuid4())
            content = self._content(s, text, id=client_id, group={"id": gid, "head": grp.head(log)})
            msg = group.encrypt(content)
            self._save(s)  # the advanced sender key is on disk before the message leaves
            await s.api.call(
                "PUT",
                f"/v1/groups/{gid}/messages",
                {"client_id": client_id, "envelope": b64e(msg.to_bytes())},
            )
            self._record(
                s,
                id=client_id,
                chat=gid,
                group=gid,
                sender=s.phone,
                sender_name=s.state.name,
                text=text,
                attachments=[],
                sent_at=content.sent_at_ms,
                outgoing=True,
            )
            return client_id

        return str(await self.run(act))

    async def group_list(self) -> list[dict[str, Any]]:
        """Your groups as their signed state says; accounts the server routes a group to
        that no admin added are listed apart (``unconfirmed``) and alarmed."""

        async def act(s: Session) -> list[dict[str, Any]]:
            served = {
                g["group_id"]: list(g["members"])
                for g in (await s.api.call("GET", "/v1/groups"))["groups"]
            }
            out = []
            for gid, group in sorted(s.device.groups.items()):
                if group.log is None or not group.is_member:
                    continue
                await self._catch_up(s, gid)
                log = group.log
                if s.device.account_id not in log.state.members:
                    continue
                unconfirmed = await self._check_server_view(s, gid, served.get(gid, []))
                out.append(
                    {
                        "id": gid,
                        "name": log.state.name or gid,
                        "members": [
                            await self._member_phone(s, gid, m) for m in sorted(log.state.members)
                        ],
                        "admins": [await self._member_phone(s, gid, m) for m in log.state.admins],
                        "unconfirmed": unconfirmed,
                        "version": log.version,
                    }
                )
            await self._show_events(s, now_ms(), receiving=False)
            for gid in sorted(set(served) - {g["id"] for g in out}):
                if grp.log_of(s.device, gid) is None:
                    self.notify(
                        f"the server lists you in group {gid}, but no admin's signed state for "
                        "it has reached this device: it is not shown"
                    )
            return out

        return list(await self.run(act))
