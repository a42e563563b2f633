"""What the ``parley`` command does, as async operations on an encrypted profile.

Every operation loads the profile under its lock, works, and saves before
returning, so separate ``parley`` processes sharing a profile stay consistent.

Conventions inside encrypted messages (the ``control`` field, JSON):
``from`` is the sender's phone number, which the receiver checks against the
directory (the server's sender account must own that number) before showing
it; ``sender_key`` carries a group sender key; ``group`` carries a group's
id, name and members; ``sync`` marks a copy of one's own message for one's
other devices, with the ``chat`` it was sent to.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from parley.client.api import ApiClient, b64e, keys_json
from parley.client.device import DeviceState, Received
from parley.client.kt import head_code, signed_head, verified_lookup
from parley.client.store import Profile, ProfileError
from parley.crypto.primitives import aead_decrypt, aead_encrypt, hkdf
from parley.errors import DecryptionError, ParleyError, RemoteProtocolError, ServerError
from parley.protocol import attachments as attachment_crypto
from parley.protocol.fingerprint import display, parse, safety_number
from parley.protocol.franking import direct_conversation, group_conversation
from parley.protocol.keys import IdentityKeyPair
from parley.protocol.wire import AttachmentPointer, Content, IdentityPublic

MAX_HISTORY = 10_000
MAX_SEEN = 5_000
LINK_CODE_BYTES = 20
MAX_REPORT_CONTEXT = 5
# Idempotent calls are retried for about 7 s when the server cannot be reached.
RETRIES = 5


class ClientError(ParleyError):
    code = "client_error"


class IdentityChanged(ClientError):
    code = "identity_changed"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Session:
    """A loaded profile: app state plus the device's cryptographic state."""

    state: dict[str, Any]
    device: DeviceState
    api: ApiClient

    @property
    def phone(self) -> str:
        return str(self.state["phone"])


class App:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    # -- profile plumbing ------------------------------------------------------------------------

    def _open(self) -> Session:
        state = self.profile.load()
        if "device" not in state:
            raise ClientError("registration is not finished: run 'parley verify CODE'")
        device = DeviceState.from_dict(state["device"], secrets.token_bytes)
        return Session(
            state, device, ApiClient(state["server"], state.get("credential"), retries=RETRIES)
        )

    def _save(self, s: Session) -> None:
        s.state["device"] = s.device.to_dict()
        self.profile.save(s.state)

    async def run(self, action: Callable[[Session], Awaitable[Any]]) -> Any:
        with self.profile.locked():
            s = self._open()
            try:
                return await action(s)
            finally:
                self._save(s)
                await s.api.close()

    # -- registration -----------------------------------------------------------------------------

    async def register(self, phone: str, server: str) -> None:
        api = ApiClient(server)
        try:
            await api.request_code(phone)
        finally:
            await api.close()
        with self.profile.locked():
            self.profile.create({"server": server.rstrip("/"), "pending_phone": phone})

    async def verify(self, code: str, name: str | None) -> dict[str, Any]:
        with self.profile.locked():
            state = self.profile.load()
            phone = state.get("pending_phone")
            if not phone:
                raise ClientError(
                    "nothing to verify: run 'parley register PHONE --server URL' first"
                )
            device = DeviceState(IdentityKeyPair.generate(secrets.token_bytes), secrets.token_bytes)
            ot, kem = device.new_one_time_keys(50)
            api = ApiClient(state["server"], retries=RETRIES)
            try:
                result = await api.verify(
                    phone,
                    code,
                    device.identity,
                    keys_json(device.signed_prekey, device.kem_last_resort, ot, kem),
                )
                me = await api.call("GET", "/v1/accounts/me")
            finally:
                await api.close()
            device.account_id, device.device_id = result["account_id"], int(result["device_id"])
            state.pop("pending_phone")
            state.update(
                phone=me["phone"],
                name=name or "",
                credential=result["credential"],
                device=device.to_dict(),
                contacts={},
                phones={},
                groups={},
                history=[],
                seen=[],
            )
            self.profile.save(state)
            return {
                "account_id": device.account_id,
                "device_id": device.device_id,
                "phone": me["phone"],
            }

    async def whoami(self) -> dict[str, Any]:
        async def act(s: Session) -> dict[str, Any]:
            return {
                "phone": s.phone,
                "name": s.state.get("name", ""),
                "account_id": s.device.account_id,
                "device_id": s.device.device_id,
                "server": s.state["server"],
                "identity_key": b64e(s.device.identity.public.to_bytes()),
            }

        return dict(await self.run(act))

    # -- contacts and identity -------------------------------------------------------------------

    async def _contact(self, s: Session, phone: str) -> dict[str, Any]:
        """Look a phone up and check its identity against what we trusted before."""
        try:
            info = await s.api.call("GET", f"/v1/directory/{phone}")
        except ServerError as exc:
            if exc.code == "not_found":
                raise ClientError(f"{phone} is not on Parley") from exc
            raise
        return self._remember(s, info["account_id"], info["identity_key"], phone=phone)

    def _remember(
        self, s: Session, account_id: str, identity_key: str, phone: str | None = None
    ) -> dict[str, Any]:
        contacts = s.state.setdefault("contacts", {})
        contact = contacts.get(account_id)
        if contact is None:
            contact = contacts[account_id] = {
                "phone": phone or "",
                "identity": identity_key,
                "verified": False,
                "changed": False,
            }
        elif contact["identity"] != identity_key:
            # A new identity: sessions with the old one are dropped; a verified
            # contact stays blocked until the user checks the new safety number.
            contact["previous"] = contact["identity"]
            contact["identity"] = identity_key
            contact["changed"] = True
            contact["notified"] = False
            for key in [k for k in s.device.sessions if k[0] == account_id]:
                del s.device.sessions[key]
        if phone:
            contact["phone"] = phone
            s.state.setdefault("phones", {})[phone] = account_id
        return dict(contact, account_id=account_id)

    def _check_sendable(self, contact: dict[str, Any]) -> None:
        if contact["changed"] and contact["verified"]:
            raise IdentityChanged(
                f"the safety number with {contact['phone']} has changed: compare it ('parley safety-number {contact['phone']}') "
                f"and run 'parley trust {contact['phone']} --safety-number DIGITS' before sending"
            )

    async def safety_number(self, phone: str) -> str:
        async def act(s: Session) -> str:
            contact = await self._contact(s, phone)
            theirs = IdentityPublic.from_bytes(base64.b64decode(contact["identity"]))
            return display(safety_number(s.device.identity.public, s.phone, theirs, phone))

        return str(await self.run(act))

    async def trust(self, phone: str, digits: str) -> None:
        async def act(s: Session) -> None:
            contact = await self._contact(s, phone)
            theirs = IdentityPublic.from_bytes(base64.b64decode(contact["identity"]))
            expected = safety_number(s.device.identity.public, s.phone, theirs, phone)
            try:
                given = parse(digits)
            except ValueError as exc:
                raise ClientError(str(exc)) from exc
            if not hmac.compare_digest(given, expected):
                raise ClientError(
                    f"that is not the safety number with {phone}: nothing was changed"
                )
            record = s.state["contacts"][contact["account_id"]]
            record.update(verified=True, changed=False)
            record.pop("previous", None)

        await self.run(act)

    def warnings(self) -> list[str]:
        """Identity changes to show: for a verified contact on every command until the
        user re-verifies; for an unverified one, once."""
        try:
            with self.profile.locked():
                state = self.profile.load()
                shown = []
                for account, c in state.get("contacts", {}).items():
                    if c.get("changed") and (c.get("verified") or not c.get("notified")):
                        shown.append(
                            f"warning: the safety number with {c.get('phone') or account} changed; "
                            f"compare it with 'parley safety-number {c.get('phone') or account}'"
                        )
                        c["notified"] = True
                shown += [
                    f"ALARM: {a}; check with 'parley keys check'"
                    for a in state.get("kt", {}).get("alarms", [])
                ]
                if shown:
                    self.profile.save(state)
                return shown
        except ProfileError:
            return []

    # -- sending ------------------------------------------------------------------------------------

    def _content(
        self, s: Session, text: str, pointers: tuple[AttachmentPointer, ...] = (), **control: Any
    ) -> Content:
        return Content(
            s.device.rng(32),
            now_ms(),
            text,
            pointers,
            json.dumps({"from": s.phone, **control}).encode(),
        )

    async def _send_to_account(
        self, s: Session, account_id: str, content: Content, client_id: str
    ) -> dict[str, Any]:
        from parley.client.messenger import Messenger

        return await Messenger(s.api, s.device).send_content(account_id, content, client_id)

    async def _sync(
        self,
        s: Session,
        content_text: str,
        pointers: tuple[AttachmentPointer, ...],
        chat: str,
        group: str | None,
        client_id: str,
    ) -> None:
        own = await s.api.call("GET", "/v1/devices")
        if len(own["devices"]) > 1:
            sync = self._content(
                s, content_text, pointers, id=client_id, sync={"chat": chat, "group": group}
            )
            await self._send_to_account(s, s.device.account_id, sync, client_id + "-sync")

    async def _upload(
        self, s: Session, files: list[tuple[str, bytes, str]], progress: Callable[[str, int], None]
    ) -> tuple[AttachmentPointer, ...]:
        pointers = []
        for name, data, content_type in files:
            enc = attachment_crypto.encrypt(data, s.device.rng)
            up = await s.api.call("POST", "/v1/attachments", content=enc.blob)
            progress(name, len(enc.blob))
            pointers.append(
                AttachmentPointer(up["id"], enc.key, enc.digest, len(enc.blob), content_type, name)
            )
        return tuple(pointers)

    def _record(self, s: Session, **entry: Any) -> None:
        history = s.state.setdefault("history", [])
        history.append(entry)
        del history[:-MAX_HISTORY]

    async def send(
        self,
        phone: str,
        text: str,
        files: list[tuple[str, bytes, str]],
        progress: Callable[[str, int], None],
    ) -> str:
        async def act(s: Session) -> str:
            contact = await self._contact(s, phone)
            self._check_sendable(contact)
            pointers = await self._upload(s, files, progress)
            client_id = str(uuid.uuid4())
            content = self._content(s, text, pointers, id=client_id)
            await self._send_to_account(s, contact["account_id"], content, client_id)
            await self._sync(s, text, pointers, phone, None, client_id)
            self._record(
                s,
                id=client_id,
                chat=phone,
                group=None,
                sender=s.phone,
                text=text,
                attachments=[p.name for p in pointers],
                sent_at=now_ms(),
                outgoing=True,
            )
            return client_id

        return str(await self.run(act))

    # -- groups ---------------------------------------------------------------------------------------

    async def _group_members(self, s: Session, gid: str) -> list[str]:
        try:
            info = await s.api.call("GET", f"/v1/groups/{gid}")
        except ServerError as exc:
            if exc.code == "not_found":
                raise ClientError(f"no group {gid} (or you are not a member)") from exc
            raise
        return list(info["members"])

    async def _announce(self, s: Session, gid: str, rotate: bool) -> None:
        """Tell every member (and our other devices) the group and our sender key."""
        group = s.device.group(gid)
        members = await self._group_members(s, gid)
        others = [m for m in members if m != s.device.account_id]
        removed = group.members - set(others)
        for m in removed:
            group.remove_member(m, s.device.rng)
        if rotate or removed:
            group.rotate(s.device.rng)
        group.add_members(others)
        info = s.state["groups"].setdefault(gid, {"name": gid, "members": {}})
        skd = base64.b64encode(group.outbound.distribution().to_bytes()).decode()
        for member in [*others, s.device.account_id]:
            own_devices = await s.api.call("GET", f"/v1/accounts/{member}")
            if member == s.device.account_id and len(own_devices["devices"]) < 2:
                continue
            content = self._content(s, "", group={"id": gid, "name": info["name"]}, sender_key=skd)
            await self._send_to_account(s, member, content, str(uuid.uuid4()))
        info["announced"] = sorted(others)

    async def group_create(self, name: str, phones: list[str]) -> str:
        async def act(s: Session) -> str:
            accounts = [(await self._contact(s, p))["account_id"] for p in phones]
            created = await s.api.call("POST", "/v1/groups", {"members": accounts})
            gid = str(created["group_id"])
            s.state["groups"][gid] = {"name": name, "members": {}}
            await self._announce(s, gid, rotate=False)
            return gid

        return str(await self.run(act))

    async def group_change(self, gid: str, phone: str, add: bool) -> None:
        async def act(s: Session) -> None:
            account = (await self._contact(s, phone))["account_id"]
            if add:
                await s.api.call("POST", f"/v1/groups/{gid}/members", {"account_id": account})
            else:
                await s.api.call("DELETE", f"/v1/groups/{gid}/members/{account}")
            await self._announce(s, gid, rotate=not add)

        await self.run(act)

    async def group_send(self, gid: str, text: str) -> str:
        async def act(s: Session) -> str:
            members = set(await self._group_members(s, gid)) - {s.device.account_id}
            group = s.device.group(gid)
            if members != group.members or s.state["groups"].get(gid, {}).get("announced") is None:
                await self._announce(s, gid, rotate=bool(group.members - members))
            client_id = str(uuid.uuid4())
            msg = group.encrypt(self._content(s, text, id=client_id))
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
                text=text,
                attachments=[],
                sent_at=now_ms(),
                outgoing=True,
            )
            return client_id

        return str(await self.run(act))

    async def group_list(self) -> list[dict[str, Any]]:
        async def act(s: Session) -> list[dict[str, Any]]:
            mine = await s.api.call("GET", "/v1/groups")
            out = []
            for g in mine["groups"]:
                info = s.state["groups"].get(g["group_id"], {})
                phones = [
                    s.state["contacts"].get(m, {}).get("phone")
                    or (s.phone if m == s.device.account_id else m)
                    for m in g["members"]
                ]
                out.append(
                    {
                        "id": g["group_id"],
                        "name": info.get("name", g["group_id"]),
                        "members": phones,
                    }
                )
            return out

        return list(await self.run(act))

    # -- receiving ------------------------------------------------------------------------------------

    async def _sender_phone(self, s: Session, received: Received, claimed: str | None) -> str:
        """The sender's phone, believed only if the directory says that number is theirs."""
        contact = s.state["contacts"].get(received.sender)
        if contact and contact.get("phone"):
            return str(contact["phone"])
        if received.sender == s.device.account_id:
            return s.phone
        if claimed:
            try:
                info = await s.api.call("GET", f"/v1/directory/{claimed}")
            except ServerError:
                info = None
            if info and info["account_id"] == received.sender:
                self._remember(s, received.sender, info["identity_key"], phone=claimed)
                return claimed
        return received.sender

    async def _process(self, s: Session, frame: dict[str, Any]) -> dict[str, Any] | None:
        if frame["id"] in s.state.setdefault("seen", []):
            return None  # a re-delivery after a crash: shown once
        sender_info = s.state["contacts"].get(frame["sender"])
        try:
            received = s.device.open(frame)
        except RemoteProtocolError:
            return None
        s.state["seen"].append(frame["id"])
        del s.state["seen"][:-MAX_SEEN]
        try:
            control = json.loads(received.content.control) if received.content.control else {}
        except ValueError:
            control = {}
        if not isinstance(control, dict):
            control = {}
        if sender_info is None and received.sender != s.device.account_id:
            contact = await s.api.call("GET", f"/v1/accounts/{received.sender}")
            self._remember(s, received.sender, contact["identity_key"])
        sender = await self._sender_phone(
            s, received, control.get("from") if isinstance(control.get("from"), str) else None
        )
        group_info = control.get("group")
        if isinstance(group_info, dict) and isinstance(group_info.get("id"), str):
            entry = s.state["groups"].setdefault(
                group_info["id"], {"name": group_info["id"], "members": {}}
            )
            entry["name"] = str(group_info.get("name") or entry["name"])
        if not received.content.text and not received.content.attachments:
            return None  # a control message only
        sync = control.get("sync") if isinstance(control.get("sync"), dict) else None
        if sync is not None and received.sender == s.device.account_id:
            chat, group, outgoing = str(sync.get("chat")), sync.get("group"), True
        elif received.group:
            chat, group, outgoing = received.group, received.group, False
        else:
            chat, group, outgoing = sender, None, False
        # Both sides name a message by the id its sender gave it (inside the
        # franked content), so a receiver can report the id the sender was told.
        message_id = control.get("id") if isinstance(control.get("id"), str) else received.id
        entry = {
            "id": message_id,
            "chat": chat,
            "group": group,
            "sender": sender,
            "text": received.content.text,
            "attachments": [
                {
                    "id": a.id,
                    "name": a.name,
                    "size": a.size,
                    "content_type": a.content_type,
                    "key": b64e(a.key),
                    "digest": b64e(a.digest),
                }
                for a in received.content.attachments
            ],
            "sent_at": received.content.sent_at_ms,
            "outgoing": outgoing,
            "franking": {
                "commitment": b64e(received.commitment),
                "tag": b64e(received.franking_tag),
                "server_ms": received.server_ms,
                "key": b64e(received.content.franking_key),
                "sender_account": received.sender,
                "conversation": (
                    group_conversation(received.group)
                    if received.group
                    else direct_conversation(received.sender, s.device.account_id)
                ),
                "control": b64e(received.content.control),
                "digests": [b64e(a.digest) for a in received.content.attachments],
            },
        }
        self._record(s, **entry)
        return entry

    async def receive(
        self, follow: bool, timeout: float, on_message: Callable[[dict[str, Any]], None]
    ) -> int:
        """Print messages as they arrive; without ``follow``, stop once the queue is drained."""
        with self.profile.locked():
            s = self._open()
        count = 0
        try:
            async with s.api.websocket() as ws:
                while True:
                    try:
                        raw = await ws.recv() if timeout <= 0 else await _wait(ws.recv(), timeout)
                    except TimeoutError:
                        return count
                    frame = json.loads(raw)
                    if frame.get("type") == "queue_empty":
                        if not follow:
                            return count
                        continue
                    if frame.get("type") != "message":
                        continue
                    with self.profile.locked():
                        s2 = self._open()
                        try:
                            entry = await self._process(s2, frame)
                        finally:
                            self._save(s2)
                            await s2.api.close()
                    await ApiClient.ack(ws, [frame["id"]])
                    if entry is not None:
                        count += 1
                        on_message(entry)
        finally:
            await s.api.close()

    async def fetch_attachment(self, attachment: dict[str, Any]) -> bytes:
        async def act(s: Session) -> bytes:
            blob = await s.api.call("GET", f"/v1/attachments/{attachment['id']}")
            return attachment_crypto.decrypt(
                base64.b64decode(attachment["key"]), base64.b64decode(attachment["digest"]), blob
            )

        return bytes(await self.run(act))

    # -- reports -------------------------------------------------------------------------------------

    async def report(self, message_id: str, reason: str, context: int, comment: str) -> str:
        """Reveal one received message (and up to five before it in the same chat) to
        the platform's moderators, with the franking proof that each was really sent."""
        if not 0 <= context <= MAX_REPORT_CONTEXT:
            raise ClientError(f"--context is 0..{MAX_REPORT_CONTEXT}")

        async def act(s: Session) -> str:
            history = s.state.get("history", [])
            index = next((i for i, h in enumerate(history) if h.get("id") == message_id), None)
            if index is None:
                raise ClientError(f"no message {message_id} in this profile")
            target = history[index]
            if target.get("outgoing") or "franking" not in target:
                raise ClientError("only messages you received can be reported")
            earlier = [
                h
                for h in history[:index]
                if h.get("chat") == target["chat"] and "franking" in h and not h.get("outgoing")
            ]
            chosen = [target, *reversed(earlier[-context:] if context else [])]

            def reveal(h: dict[str, Any]) -> dict[str, Any]:
                f = h["franking"]
                return {
                    "franking_key": f["key"],
                    "sender": f["sender_account"],
                    "conversation": f["conversation"],
                    "sent_at_ms": h["sent_at"],
                    "text": h["text"],
                    "attachment_digests": f["digests"],
                    "control": f["control"],
                    "commitment": f["commitment"],
                    "server_ms": f["server_ms"],
                    "tag": f["tag"],
                }

            attachments = [
                {"id": a["id"], "key": a["key"], "digest": a["digest"]}
                for a in target.get("attachments", [])
            ]
            result = await s.api.call(
                "POST",
                "/v1/reports",
                {
                    "category": reason,
                    "comment": comment,
                    "messages": [reveal(h) for h in chosen],
                    "attachments": attachments,
                },
            )
            return str(result["id"])

        return str(await self.run(act))

    async def notices(self) -> list[dict[str, Any]]:
        async def act(s: Session) -> list[dict[str, Any]]:
            return list((await s.api.call("GET", "/v1/notices"))["notices"])

        return list(await self.run(act))

    # -- key transparency: self-monitoring --------------------------------------------------------

    async def keys_check(self, ack: bool = False) -> dict[str, Any]:
        """Check this account's entry in the key directory against what this device knows:
        its own identity key, and the devices the user linked. Anything else is an alarm,
        kept and shown on every command until acknowledged (``ack``)."""

        async def act(s: Session) -> dict[str, Any]:
            published = await verified_lookup(s.api, s.device.account_id)
            kt = s.state.setdefault(
                "kt", {"devices": [s.device.device_id], "expected_links": 0, "alarms": []}
            )
            alarms: list[str] = []
            if published["identity_key"] != s.device.identity.public.to_bytes():
                alarms.append(
                    "the key directory publishes an identity key for your account that is not yours"
                )
            known = set(kt["devices"])
            new = sorted(set(published["devices"]) - known)
            if new and len(new) <= kt["expected_links"]:
                kt["expected_links"] -= len(new)  # devices this user linked
                known |= set(new)
                new = []
            alarms += [f"device {d} was added to your account and you did not link it" for d in new]
            if ack:
                kt["devices"] = sorted(set(published["devices"]))
                kt["alarms"] = [a for a in alarms if "identity key" in a]
            else:
                kt["devices"] = sorted(
                    known & set(published["devices"])
                    | (known - set(published["devices"])) - (known - set(published["devices"]))
                )
                kt["alarms"] = sorted(set(kt["alarms"]) | set(alarms))
            kt["version"], kt["epoch"] = published["version"], published["epoch"]
            return {
                "ok": not kt["alarms"],
                "alarms": kt["alarms"],
                "devices": published["devices"],
                "epoch": published["epoch"],
                "version": published["version"],
            }

        return dict(await self.run(act))

    async def keys_head(self) -> str:
        async def act(s: Session) -> str:
            head, _ = await signed_head(s.api)
            return str(head_code(head))

        return str(await self.run(act))

    # -- privacy policy ----------------------------------------------------------------------------

    async def policy(self, accept: bool) -> dict[str, Any]:
        """The current policy, verified against the transparency log, with the diff
        from the version this profile last accepted."""

        async def act(s: Session) -> dict[str, Any]:
            current = await verified_policy(s.api)
            accepted = s.state.get("policy")
            changed = accepted is None or accepted["version"] != current["version"]
            diff = ""
            if accepted is not None and changed:
                diff = "".join(
                    difflib.unified_diff(
                        accepted["text"].splitlines(keepends=True),
                        current["text"].splitlines(keepends=True),
                        f"privacy policy v{accepted['version']}",
                        f"privacy policy v{current['version']}",
                    )
                )
            if accept:
                s.state["policy"] = {"version": current["version"], "text": current["text"]}
            return {
                **current,
                "changed": changed,
                "accepted": accepted["version"] if accepted else None,
                "diff": diff,
            }

        return dict(await self.run(act))

    def policy_warning(self, served_version: int | None) -> str | None:
        with self.profile.locked():
            state = self.profile.load()
        accepted = state.get("policy")
        if served_version is not None and (
            accepted is None or accepted["version"] != served_version
        ):
            return f"notice: the privacy policy is now version {served_version}; read the changes with 'parley policy'"
        return None

    # -- devices ----------------------------------------------------------------------------------------

    async def devices(self) -> list[int]:
        async def act(s: Session) -> list[int]:
            return list((await s.api.call("GET", "/v1/devices"))["devices"])

        return list(await self.run(act))

    async def link_code(self) -> str:
        """Make a one-time code; the identity travels encrypted under a key derived from it."""

        async def act(s: Session) -> str:
            code = base64.b32encode(secrets.token_bytes(LINK_CODE_BYTES)).decode().rstrip("=")
            kt = s.state.setdefault(
                "kt", {"devices": [s.device.device_id], "expected_links": 0, "alarms": []}
            )
            kt["expected_links"] += 1
            lookup, key = _link_keys(code)
            payload = json.dumps(
                {
                    "identity": b64e(s.device.identity.private_bytes()),
                    "phone": s.phone,
                    "name": s.state.get("name", ""),
                }
            ).encode()
            nonce = secrets.token_bytes(12)
            blob = nonce + aead_encrypt(key, nonce, payload, b"parley/provisioning/v1")
            await s.api.call(
                "POST", "/v1/devices/provisioning", {"lookup": b64e(lookup), "blob": b64e(blob)}
            )
            return code

        return str(await self.run(act))

    async def link(self, code: str, server: str) -> dict[str, Any]:
        lookup, key = _link_keys(code.strip().upper())
        api = ApiClient(server, retries=RETRIES)
        try:
            blob = base64.b64decode(
                (await api.call("POST", "/v1/devices/provisioning/open", {"lookup": b64e(lookup)}))[
                    "blob"
                ]
            )
            try:
                payload = json.loads(
                    aead_decrypt(key, blob[:12], blob[12:], b"parley/provisioning/v1")
                )
            except DecryptionError as exc:
                raise ClientError("the provisioning message does not open with this code") from exc
            device = DeviceState(
                IdentityKeyPair.from_private_bytes(base64.b64decode(payload["identity"])),
                secrets.token_bytes,
            )
            ot, kem = device.new_one_time_keys(50)
            result = await api.link(
                lookup, keys_json(device.signed_prekey, device.kem_last_resort, ot, kem)
            )
            api.credential = result["credential"]
            linked_devices = (await api.call("GET", "/v1/devices"))["devices"]
        finally:
            await api.close()
        device.account_id, device.device_id = result["account_id"], int(result["device_id"])
        with self.profile.locked():
            self.profile.create(
                {
                    "server": server.rstrip("/"),
                    "phone": payload["phone"],
                    "name": payload.get("name", ""),
                    "credential": result["credential"],
                    "device": device.to_dict(),
                    "contacts": {},
                    "phones": {},
                    "groups": {},
                    "history": [],
                    "seen": [],
                    # this device trusts the account's devices as they were when it joined
                    "kt": {"devices": linked_devices, "expected_links": 0, "alarms": []},
                }
            )
        return {
            "account_id": device.account_id,
            "device_id": device.device_id,
            "phone": payload["phone"],
        }

    async def unlink(self, device_id: int) -> None:
        async def act(s: Session) -> None:
            await s.api.call("DELETE", f"/v1/devices/{device_id}")

        await self.run(act)

    # -- local data -------------------------------------------------------------------------------------------

    def history(self, chat: str) -> list[dict[str, Any]]:
        with self.profile.locked():
            state = self.profile.load()
        return [
            {k: v for k, v in h.items() if k != "franking"}
            for h in state.get("history", [])
            if h.get("chat") == chat or h.get("group") == chat
        ]

    def find_message(self, message_id: str) -> dict[str, Any]:
        with self.profile.locked():
            state = self.profile.load()
        for h in state.get("history", []):
            if h.get("id") == message_id:
                return dict(h)
        raise ClientError(f"no message {message_id} in this profile")

    def export(self) -> dict[str, Any]:
        """The user's own data, without any key material."""
        with self.profile.locked():
            state = self.profile.load()
        device = state.get("device", {})
        return {
            "phone": state.get("phone"),
            "name": state.get("name"),
            "server": state.get("server"),
            "account_id": device.get("account_id"),
            "device_id": device.get("device_id"),
            "contacts": [
                {"account_id": a, "phone": c.get("phone"), "verified": c.get("verified", False)}
                for a, c in state.get("contacts", {}).items()
            ],
            "groups": [
                {"id": g, "name": v.get("name")} for g, v in state.get("groups", {}).items()
            ],
            "history": [
                {k: v for k, v in h.items() if k not in ("franking",)}
                | {
                    "attachments": [
                        {"name": a["name"], "size": a["size"]}
                        if isinstance(a, dict)
                        else {"name": a}
                        for a in h.get("attachments", [])
                    ]
                }
                for h in state.get("history", [])
            ],
        }

    async def delete_account(self) -> None:
        async def act(s: Session) -> None:
            await s.api.call("DELETE", "/v1/accounts/me")

        with self.profile.locked():
            s = self._open()
            try:
                await act(s)
            finally:
                await s.api.close()
            self.profile.wipe()


async def verified_policy(api: ApiClient) -> dict[str, Any]:
    """Fetch the policy and check it is the latest version the signed log commits to."""
    from parley.client.audit import fetch_entries
    from parley.translog import merkle
    from parley.translog.heads import TreeHead

    policy = await api.call("GET", "/v1/policy")
    head_raw = await api.call("GET", "/v1/transparency/head")
    head = TreeHead(
        int(head_raw["size"]),
        base64.b64decode(head_raw["root"]),
        int(head_raw["timestamp_ms"]),
        base64.b64decode(head_raw["signature"]),
    )
    try:
        head.verify(base64.b64decode(head_raw["public_key"]))
        index = int(policy["log_index"])
        entry = (await api.call("GET", f"/v1/transparency/entries?start={index}&end={index + 1}"))[
            "entries"
        ][0]
        leaf = base64.b64decode(entry["leaf"])
        proof = await api.call("GET", f"/v1/transparency/inclusion?index={index}&size={head.size}")
        merkle.verify_inclusion(
            merkle.leaf_hash(leaf),
            index,
            head.size,
            [base64.b64decode(p) for p in proof["proof"]],
            head.root,
        )
    except (ParleyError, KeyError, IndexError, ValueError) as exc:
        raise ClientError(
            "the privacy policy could not be verified against the transparency log"
        ) from exc
    body = json.loads(leaf)
    if (
        body.get("kind") != "privacy_policy"
        or body.get("sha256") != hashlib.sha256(policy["text"].encode()).hexdigest()
    ):
        raise ClientError("the served privacy policy does not match the transparency log")
    later = [
        e
        for e in await fetch_entries(api, head.size)
        if e["kind"] == "privacy_policy" and e["index"] > index
    ]
    if later:
        raise ClientError("the server serves an old privacy policy: a newer version is in the log")
    return {
        "version": int(policy["version"]),
        "text": str(policy["text"]),
        "sha256": body["sha256"],
        "log_index": index,
    }


def _link_keys(code: str) -> tuple[bytes, bytes]:
    out = hkdf(code.encode(), None, b"parley/link-code/v1", 64)
    return out[:32], out[32:]


async def _wait(coro: Awaitable[Any], timeout: float) -> Any:
    import asyncio

    return await asyncio.wait_for(coro, timeout)
