"""What the ``parley`` command does, as async operations on an encrypted profile.

Every operation runs under the profile's lock and commits what it changed before
returning, so separate ``parley`` processes sharing a profile stay consistent.
An ``App`` keeps the profile open between operations (the daemon, ``receive``);
it reloads only when another process wrote the profile in between.

Conventions inside encrypted messages (the ``control`` field, JSON):
``from`` is the sender's phone number, which the receiver checks against the
directory (the server's sender account must own that number) before showing
it; ``sender_key`` carries a group sender key; ``group`` carries a group's
id, name and members; ``sync`` marks a copy of one's own message for one's
other devices, with the ``chat`` it was sent to.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets

from parley.client import groups as grp
from parley.client import receipts
from parley.client.api import ApiClient, b64e, keys_json
from parley.client.device import DeviceState, Received
from parley.client.kt import (
    KeyTransparencyError,
    alarm,
    check_gossip,
    gossip,
    head_code,
    own_history,
    publish_device_list,
    verified_head,
    verified_lookup,
    verify_history,
)
from parley.client.records import ChatSummary, Message
from parley.client.store import SENT, Profile, ProfileError
from parley.crypto.primitives import aead_decrypt, aead_encrypt, hkdf
from parley.display import visible
from parley.errors import (
    DecryptionError,
    InvalidGroupChange,
    ParleyError,
    RemoteProtocolError,
    ServerError,
    Unreachable,
)
from parley.phone import InvalidPhone, e164
from parley.protocol import attachments as attachment_crypto
from parley.protocol import group_state as gs
from parley.protocol.fingerprint import display, parse, safety_number
from parley.protocol.franking import direct_conversation, group_conversation
from parley.protocol.keys import IdentityKeyPair
from parley.protocol.sender_keys import GroupSession
from parley.protocol.wire import MAX_TEXT, AttachmentPointer, Content, IdentityPublic
from parley.translog import directory

LINK_CODE_BYTES = 20
MAX_REPORT_CONTEXT = 5
MAX_REPORT_COMMENT = 1000
MAX_NAME = 64
# What a sender may call its message: the id is how the receiver names it in
# reports and `attachment save`, so it must be plain and unique in the profile.
MESSAGE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
# Idempotent calls are retried for about 7 s when the server cannot be reached.
RETRIES = 5
PRIMARY_DEVICE = 1
FOREIGN_IDENTITY = "the key directory published an identity key for your account that is not yours"
KT_GRACE_S = 10.0  # a brand-new account waits for its first epoch (longer under load)
REFILL = 50  # one-time prekeys of each kind uploaded when the server says they run low
BATCH = 200  # received frames committed (and acknowledged) together


class ClientError(ParleyError):
    code = "client_error"


class IdentityChanged(ClientError):
    code = "identity_changed"


def normalize_phone(raw: str) -> str:
    """``raw`` as E.164, or a ``ClientError`` that says what a number looks like."""
    try:
        return e164(raw)
    except InvalidPhone as exc:
        raise ClientError(f"{raw!r} is {exc}") from exc


def check_name(name: str) -> None:
    if not name.strip() or len(name) > MAX_NAME:
        raise ClientError(f"a name is 1 to {MAX_NAME} characters")


def check_text(text: str) -> None:
    """The client's side of the shared bound (``wire.MAX_TEXT``), in words."""
    if len(text.encode()) > MAX_TEXT:
        raise ClientError(f"message too long (the limit is {MAX_TEXT // 1024} KiB)")


def safe_filename(name: str, directory: Path) -> Path:
    """A new file in ``directory`` for a name a sender chose: no path, no control
    characters, never an existing file (``name (1).ext`` instead)."""
    base = "".join("_" if visible(ch) != ch else ch for ch in Path(name.replace("\\", "/")).name)
    base = base.strip() or "attachment"
    if base in (".", ".."):
        base = "attachment"
    stem, suffix = Path(base).stem or base, Path(base).suffix
    candidate, n = directory / base, 0
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = directory / f"{stem} ({n}){suffix}"
    return candidate


def write_new_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to a file that must not exist yet (never follows a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


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
    """``notify`` receives one-line notes for the user while a command works (the
    server is being retried; a message was refused), so the CLI can print them."""

    def __init__(self, profile: Profile, notify: Callable[[str], None] | None = None) -> None:
        self.profile = profile
        self.notify = notify or (lambda _line: None)
        # Told of every refused message (sender, reason): `receive --json` prints it.
        self.on_refusal: Callable[[str, str], None] = lambda _who, _why: None
        # Told of every key-transparency alarm raised while a command works (a fork
        # found through a message's head): `receive --json` prints it as an event.
        self.on_alarm: Callable[[str], None] = lambda _alarm: None
        # Group changes applied while a message was handled, shown before it (receive).
        self._group_lines: list[dict[str, Any]] = []
        self._session: Session | None = None  # the open profile, reused while unchanged
        self._closing: list[ApiClient] = []
        self._busy = asyncio.Lock()  # one operation at a time in this process (daemon)
        # Told when a receipt moved one of our messages forward: (message id, status).
        self.on_receipt: Callable[[str, str], None] = lambda _id, _status: None
        self._owed: dict[str, list[str]] = {}  # account -> ids received this batch

    # -- profile plumbing ------------------------------------------------------------------------

    def _open(self, retries: int = RETRIES) -> Session:
        """The profile's session (call under the lock): the one already open when no
        other process wrote the profile since, else loaded afresh. Ratchet state is
        never used from a stale copy."""
        s = self._session
        if s is not None and self.profile.unchanged():
            s.api.retries = retries
            return s
        state = self.profile.load()
        if "device" not in state:
            raise ClientError("registration is not finished: run 'parley verify CODE'")
        device = DeviceState.from_dict(state["device"], secrets.token_bytes)
        api = ApiClient(
            state["server"], state.get("credential"), retries=retries, on_retry=self.notify
        )
        api.kt_view = state.setdefault(
            "kt", {"devices": [device.device_id], "expected_links": 0, "alarms": []}
        )
        if s is not None:
            self._closing.append(s.api)
        self._session = Session(state, device, api)
        return self._session

    def _save(self, s: Session) -> None:
        """Commit the records and messages this operation changed, in one transaction."""
        s.state["device"] = s.device.to_dict()
        self.profile.save(s.state)

    async def run(self, action: Callable[[Session], Awaitable[Any]], retries: int = RETRIES) -> Any:
        async with self._exclusive():
            s = self._open(retries)
            try:
                return await action(s)
            finally:
                self._save(s)
                await self._close_stale()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """This process's turn (the daemon serves requests while it receives), then the
        profile's lock against other processes."""
        async with self._busy:
            with self.profile.locked():
                yield

    async def _close_stale(self) -> None:
        while self._closing:
            await self._closing.pop().close()

    async def close(self) -> None:
        """Close the network client and the profile database."""
        if self._session is not None:
            self._closing.append(self._session.api)
            self._session = None
        await self._close_stale()
        self.profile.close()

    def local_state(self) -> dict[str, Any]:
        """The profile's state, read without touching the network."""
        with self.profile.locked():
            if self._session is not None and self.profile.unchanged():
                return self._session.state
            state = self.profile.load()
        if "device" not in state:
            raise ClientError("registration is not finished: run 'parley verify CODE'")
        return state

    # -- registration -----------------------------------------------------------------------------

    def _make_room(self, force: bool) -> None:
        """Refuse to replace a registered profile; with ``force``, set it aside
        (renamed, never deleted). A registration that was never verified, opened
        with the same passphrase, is simply started again."""
        if not self.profile.exists():
            return
        if force:
            return
        try:
            state = self.profile.load()
        except ProfileError as exc:
            raise ClientError(
                f"a Parley profile already exists in {self.profile.dir} and was left untouched; "
                "use another --profile, or add --force to set it aside (renamed, never deleted)"
            ) from exc
        if "device" in state:
            raise ClientError(
                f"{self.profile.dir} already holds the registered profile of {state.get('phone')}; "
                "it was left untouched. Use another --profile, or add --force to set it aside "
                "(renamed, never deleted)"
            )

    def _set_aside(self, force: bool) -> None:
        if force and self.profile.exists():
            moved = self.profile.set_aside()
            self.notify(f"the previous profile was kept as {moved}")

    async def register(self, phone: str, server: str, force: bool = False) -> str:
        phone = normalize_phone(phone)
        self._make_room(force)
        api = ApiClient(server, retries=RETRIES, on_retry=self.notify)
        try:
            await api.request_code(phone)
        finally:
            await api.close()
        self._set_aside(force)
        async with self._exclusive():
            self.profile.create({"server": api.base_url, "pending_phone": phone})
        return phone

    async def verify(self, code: str, name: str | None) -> dict[str, Any]:
        code = code.strip()
        if len(code) != 6 or not code.isdigit():
            raise ClientError("the code is the 6 digits from the SMS")
        if name is not None:
            check_name(name)
        async with self._exclusive():
            state = self.profile.load()
            phone = state.get("pending_phone")
            if not phone:
                raise ClientError(
                    "nothing to verify: run 'parley register PHONE --server URL' first"
                )
            device = DeviceState(IdentityKeyPair.generate(secrets.token_bytes), secrets.token_bytes)
            ot, kem = device.new_one_time_keys(50)
            if "device" in state:
                raise ClientError("this profile is already registered")
            api = ApiClient(state["server"], retries=RETRIES, on_retry=self.notify)
            try:
                result = await api.verify(
                    phone,
                    code,
                    device.identity,
                    keys_json(device.signed_prekey, device.kem_last_resort, ot, kem),
                )
                me = await api.call("GET", "/v1/accounts/me")
                kt_view = await _start_monitoring(
                    api, device.identity, result["account_id"], int(result["device_id"]), None
                )
            finally:
                await api.close()
            device.account_id, device.device_id = result["account_id"], int(result["device_id"])
            device.prekeys_rotated_ms = now_ms()  # the keys just uploaded are fresh
            state.pop("pending_phone")
            state.update(
                kt=kt_view,
                prekeys_uploaded_ms=device.prekeys_rotated_ms,
                phone=me["phone"],
                name=name or "",
                credential=result["credential"],
                device=device.to_dict(),
                contacts={},
                phones={},
                groups={},
            )
            self.profile.save(state)
            return {
                "account_id": device.account_id,
                "device_id": device.device_id,
                "phone": me["phone"],
            }

    def whoami(self) -> dict[str, Any]:
        """Who this profile is, from the profile alone (no network)."""
        state = self.local_state()
        device = DeviceState.from_dict(state["device"], secrets.token_bytes)
        return {
            "phone": state["phone"],
            "name": state.get("name", ""),
            "account_id": device.account_id,
            "device_id": device.device_id,
            "server": state["server"],
            "identity_key": b64e(device.identity.public.to_bytes()),
        }

    # -- contacts and identity -------------------------------------------------------------------

    async def _contact(self, s: Session, phone: str) -> dict[str, Any]:
        """Look a phone up; its identity is the one the key directory proves (never the
        server's word alone), checked against what we trusted before."""
        phone = normalize_phone(phone)
        try:
            info = await s.api.call("GET", f"/v1/directory/{phone}")
        except ServerError as exc:
            if exc.code == "not_found":
                raise ClientError(f"{phone} is not on Parley") from exc
            raise
        published = await self._published(s, str(info["account_id"]))
        if b64e(published["identity_key"]) != info["identity_key"]:
            raise KeyTransparencyError(
                f"the server's identity key for {phone} is not the one in the key directory"
            )
        return self._remember(s, info["account_id"], info["identity_key"], phone=phone)

    async def _published(self, s: Session, account_id: str) -> dict[str, Any]:
        """An account's identity and devices as the key directory proves them, waiting
        briefly for an epoch in progress (a brand-new account)."""
        deadline = time.monotonic() + KT_GRACE_S
        while True:
            try:
                return await verified_lookup(s.api, account_id)
            except ServerError as exc:
                if exc.code != "not_found" or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.3)

    async def _first_message_refusal(  # noqa: PLR0911 - one answer per rule
        self, s: Session, frame: dict[str, Any], claimed: bytes
    ) -> str | None:
        """Why a first message (PreKeyMessage) must be refused, or None. Its identity
        must be the sender's as the key directory proves it, or as pinned for that
        contact, and its device one the directory lists: a server that builds a first
        message under its own key and labels it as someone's is refused here."""
        sender, device = str(frame["sender"]), int(frame["sender_device"])
        try:
            published = await self._published(s, sender)
        except ParleyError:
            return "the key directory does not confirm its sender's keys"
        if device not in published["devices"]:
            return "it comes from a device the key directory does not list for its sender"
        if sender == s.device.account_id:
            mine = s.device.identity.public.to_bytes()
            return None if claimed == mine else "it claims your account under another identity"
        contact = s.state["contacts"].get(sender)
        pinned = base64.b64decode(contact["identity"]) if contact else None
        if claimed == published["identity_key"]:
            if pinned is not None and pinned != claimed:
                record = self._remember(s, sender, b64e(claimed))  # the identity-change flow
                if record["verified"]:
                    return (
                        "it comes under a new identity of a contact you verified; compare "
                        "the safety number again before you trust it"
                    )
            return None
        if pinned is not None and pinned == claimed:
            return None
        return "its identity is neither the key directory's nor the one you know for the sender"

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
                session = self._open()
                state = session.state
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
                    self._save(session)
                return shown
        except ProfileError:
            return []

    # -- sending ------------------------------------------------------------------------------------

    def _content(
        self, s: Session, text: str, pointers: tuple[AttachmentPointer, ...] = (), **control: Any
    ) -> Content:
        # The display name travels inside the encryption, with every message, and so
        # does the sender's verified head of the transparency log (fork detection).
        claims = {"from": s.phone, "name": s.state.get("name", ""), **gossip(s.api.kt_view)}
        return Content(
            s.device.rng(32), now_ms(), text, pointers, json.dumps({**claims, **control}).encode()
        )

    async def _send_to_account(
        self, s: Session, account_id: str, content: Content, client_id: str
    ) -> dict[str, Any]:
        from parley.client.messenger import Messenger

        return await Messenger(s.api, s.device, before_send=lambda: self._save(s)).send_content(
            account_id, content, client_id
        )

    async def _sync(
        self,
        s: Session,
        content_text: str,
        pointers: tuple[AttachmentPointer, ...],
        chat: str,
        group: str | None,
        client_id: str,
    ) -> None:
        if chat == s.phone:
            return  # a note to yourself already reaches your other devices
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

    def _record(self, s: Session, **entry: Any) -> Message:
        """Add to the history, in the operation's transaction (committed with the
        ratchet state that produced or opened it)."""
        message = Message.from_entry(entry)
        if message.outgoing and message.event is None:
            message.status_code = SENT
        unread = not message.outgoing
        message.seq = self.profile.add_message(message, unread=unread)
        message.unread = unread
        return message

    @staticmethod
    def _pointer_record(p: AttachmentPointer) -> dict[str, Any]:
        return {
            "id": p.id,
            "name": p.name,
            "size": p.size,
            "content_type": p.content_type,
            "key": b64e(p.key),
            "digest": b64e(p.digest),
        }

    async def send(
        self,
        phone: str,
        text: str,
        files: list[tuple[str, bytes, str]],
        progress: Callable[[str, int], None],
    ) -> str:
        check_text(text)

        async def act(s: Session) -> str:
            contact = await self._contact(s, phone)
            self._check_sendable(contact)
            chat = normalize_phone(phone)
            pointers = await self._upload(s, files, progress)
            client_id = str(uuid.uuid4())
            content = self._content(s, text, pointers, id=client_id)
            await self._send_to_account(s, contact["account_id"], content, client_id)
            await self._sync(s, text, pointers, chat, None, client_id)
            self._record(
                s,
                id=client_id,
                chat=chat,
                group=None,
                sender=s.phone,
                sender_name=s.state.get("name", ""),
                text=text,
                attachments=[self._pointer_record(p) for p in pointers],
                sent_at=content.sent_at_ms,
                outgoing=True,
            )
            return client_id

        return str(await self.run(act))

    # -- groups ---------------------------------------------------------------------------------------
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
        return str(s.state.get("groups", {}).get(gid, {}).get("name") or gid)

    @staticmethod
    def _sync_group_record(s: Session, gid: str) -> None:
        """The profile's record of a group (its name, for lines and names on the
        command line) follows the signed state."""
        log = grp.log_of(s.device, gid)
        if log is None:
            return
        record = s.state.setdefault("groups", {}).setdefault(gid, {"name": gid})
        record["name"] = log.state.name[:MAX_NAME] or gid
        record["left"] = s.device.account_id not in log.state.members

    async def _member_phone(self, s: Session, gid: str, account: str) -> str:
        """A member's number: known from contacts, or the adding admin's word for it once
        the directory agrees (same account and the identity the admin signed); else the
        account id."""
        if account == s.device.account_id:
            return s.phone
        contact = s.state["contacts"].get(account)
        if contact and contact.get("phone"):
            return str(contact["phone"])
        log = grp.log_of(s.device, gid)
        added = [
            a
            for change in (log.changes if log else [])
            for a in change.actions
            if isinstance(a, gs.Add) and a.member == account and a.phone
        ]
        if not added:
            return account
        hint = added[-1]
        try:
            info = await s.api.call("GET", f"/v1/directory/{normalize_phone(hint.phone)}")
        except (ServerError, ClientError):
            return account
        if info["account_id"] == account and info["identity_key"] == b64e(hint.identity):
            self._remember(s, account, info["identity_key"], phone=hint.phone)
            return hint.phone
        return account

    async def _has_other_devices(self, s: Session) -> bool:
        return len((await s.api.call("GET", "/v1/devices"))["devices"]) > 1

    async def _send_control(self, s: Session, account: str, **control: Any) -> None:
        content = self._content(s, "", **control)
        await self._send_to_account(s, account, content, str(uuid.uuid4()))

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
        s.state["groups"].setdefault(gid, {"name": gid})["unconfirmed"] = ghosts
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
            members = {c["account_id"]: c for c in contacts if c["account_id"] != me}
            created = await s.api.call("POST", "/v1/groups", {"members": list(members)})
            gid = str(created["group_id"])
            adds = [
                gs.Add(a, base64.b64decode(c["identity"]), str(c["phone"]))
                for a, c in members.items()
            ]
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
    def group_id(state: dict[str, Any], ref: str) -> str:
        """A group named by its id, or by its name when exactly one group has it."""
        groups = state.get("groups", {})
        if ref in groups:
            return ref
        named = sorted(g for g, info in groups.items() if info.get("name") == ref)
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
            account = str(contact["account_id"])
            action: gs.Action
            if add:
                if account in log.state.members:
                    raise ClientError(f"{contact['phone']} is already a member of {name!r}")
                try:
                    await s.api.call("POST", f"/v1/groups/{gid}/members", {"account_id": account})
                except ServerError as exc:
                    if exc.code != "conflict":  # routed already (a member the server added)
                        raise
                action = gs.Add(account, base64.b64decode(contact["identity"]), contact["phone"])
            else:
                if account not in log.state.members:
                    raise ClientError(f"{contact['phone']} is not a member of {name!r}")
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
                sender_name=s.state.get("name", ""),
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

    def _refuse(self, s: Session, sender: str, why: str) -> None:
        contact = s.state["contacts"].get(sender, {})
        who = contact.get("phone") or sender
        self.notify(f"a message from {who} was refused: {why}")
        self.on_refusal(who, why)

    async def _process(self, s: Session, frame: dict[str, Any]) -> dict[str, Any] | None:  # noqa: PLR0911, PLR0912 - each refusal ends here
        if self.profile.seen(frame["id"]):
            return None  # a re-delivery after a crash: shown once
        sender_info = s.state["contacts"].get(frame["sender"])
        self.profile.mark_seen(frame["id"])
        try:
            claimed = s.device.first_message_identity(frame)
            if claimed is not None:
                refusal = await self._first_message_refusal(s, frame, claimed)
                if refusal:
                    self._refuse(s, str(frame.get("sender")), refusal)
                    return None
            received = s.device.open(frame)
        except RemoteProtocolError as exc:
            # Undecryptable, forged, replayed, or beyond what a report could carry
            # (franking.check_reportable): never shown, but never silently.
            self._refuse(s, str(frame.get("sender")), f"it could not be opened ({exc.code})")
            return None
        try:
            control = json.loads(received.content.control) if received.content.control else {}
        except ValueError:
            control = {}
        if not isinstance(control, dict):
            control = {}
        if sender_info is None and received.sender != s.device.account_id:
            try:
                published = await self._published(s, received.sender)
            except ParleyError:
                self._refuse(s, received.sender, "the key directory does not confirm its sender")
                return None
            self._remember(s, received.sender, b64e(published["identity_key"]))
        sender = await self._sender_phone(
            s, received, control.get("from") if isinstance(control.get("from"), str) else None
        )
        sender_name = self._sender_name(s, received.sender, control.get("name"))
        await self._check_gossip(s, control.get("head"), sender)
        event, event_group = await self._group_control(s, received, control)
        group: str | None
        if event == "ignored":
            return None
        receipt = receipts.parse(control)
        if receipt is not None:
            self._apply_receipt(s, received.sender, sender, *receipt)
        if not received.content.text and not received.content.attachments and event is None:
            return None  # a control message only
        chat, group, outgoing = (
            (event_group, event_group, False)
            if event is not None
            else self._where(s, received, control, sender)
        )
        # Both sides name a message by the id its sender gave it (inside the
        # franked content), so a receiver can report the id the sender was told.
        # A sender cannot make that name ambiguous: an id already in this profile
        # (an earlier message's, or one of ours) is refused, never shown.
        claimed_id = control.get("id")
        message_id = (
            claimed_id
            if isinstance(claimed_id, str) and MESSAGE_ID.fullmatch(claimed_id)
            else received.id
        )
        if self.profile.has_message(message_id):
            self._refuse(s, received.sender, "it reuses the id of an earlier message")
            return None
        entry = {
            "id": message_id,
            "chat": chat,
            "group": group,
            "sender": sender,
            "sender_name": sender_name,
            "text": received.content.text,
            "event": event,
            "attachments": [self._pointer_record(a) for a in received.content.attachments],
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
        account = receipts.owed_to(self._record(s, **entry))
        if account is not None and account != s.device.account_id:
            self._owed.setdefault(account, []).append(message_id)
        return entry

    def _apply_receipt(
        self, s: Session, account: str, phone: str, status: int, ids: list[str]
    ) -> None:
        """Move our messages forward, only in chats the receipt's sender is in."""
        for message_id in ids:
            m = self.profile.find_message(message_id)
            if m is None or not m.outgoing:
                continue
            if m.group is not None:
                log = grp.log_of(s.device, m.group)
                allowed = log is not None and account in log.state.members
            else:
                allowed = m.chat == phone and phone.startswith("+")
            if allowed and self.profile.set_status(message_id, m.chat, status):
                self.on_receipt(message_id, receipts.STATUS[status])

    async def _send_receipts(self, s: Session, kind: str, owed: dict[str, list[str]]) -> None:
        for account, ids in owed.items():
            for start in range(0, len(ids), receipts.MAX_IDS):
                with contextlib.suppress(ParleyError):  # best effort, never fails a receive
                    await self._send_control(
                        s, account, **receipts.body(kind, ids[start : start + receipts.MAX_IDS])
                    )

    @staticmethod
    def _where(
        s: Session, received: Received, control: dict[str, Any], sender: str
    ) -> tuple[str, str | None, bool]:
        """(chat, group, outgoing) of a received message."""
        sync = control.get("sync") if isinstance(control.get("sync"), dict) else None
        mine = received.sender == s.device.account_id
        if sync is not None and mine:
            group = sync.get("group")
            return str(sync.get("chat")), group if isinstance(group, str) else None, True
        if received.group:
            return received.group, received.group, False
        if mine:
            return s.phone, None, True  # a note to yourself, from another of your devices
        return sender, None, False

    @staticmethod
    def _sender_name(s: Session, sender: str, claimed: object) -> str:
        """The display name a contact gave itself (inside the encryption)."""
        if sender == s.device.account_id:
            return str(s.state.get("name", ""))
        contact = s.state["contacts"].get(sender)
        if contact is None:
            return ""
        if isinstance(claimed, str) and len(claimed) <= MAX_NAME:
            contact["name"] = claimed
        return str(contact.get("name", ""))

    async def _group_control(
        self, s: Session, received: Received, control: dict[str, Any]
    ) -> tuple[str | None, str]:
        """Group changes and sender keys in a 1:1 control were verified and applied as
        the message opened (client/groups.py). Here: a group message's named state is
        compared with ours; what a member named but this device lacks is fetched from
        the server's sealed copy; members who asked get our key and state; a history
        too long for one message is read from that copy; and every change applied is
        recorded and shown. Returns ``(None, gid)``: changes are lines of their own."""
        info = control.get(grp.CONTROL)
        info = info if isinstance(info, dict) else {}
        gid = received.group or info.get("id")
        if not (isinstance(gid, str) and grp.GROUP_ID.fullmatch(gid)):
            return None, ""
        if grp.log_of(s.device, gid) is None and "key" in info and not received.group:
            try:
                master = base64.b64decode(str(info["key"]), validate=True)
                await self._bootstrap(s, gid, master, received.sender)
            except (RemoteProtocolError, ServerError, ValueError) as exc:
                self._refuse(s, received.sender, f"its group history does not verify ({exc})")
        group = s.device.groups.get(gid)
        if group is None or group.log is None:
            return None, gid
        log = group.log
        named = grp.parse_head(info.get("head")) if received.group else None
        if named is not None and info.get("id") == gid:
            log.note_head(named[0], named[1], received.sender)
        if log.pending is not None:
            await self._catch_up(s, gid)
        if group.requests:
            await self._answer_requests(s, gid)
        await self._show_events(s, received.content.sent_at_ms, receiving=True)
        self._sync_group_record(s, gid)
        name = self._group_name(s, gid)
        if log.pending is not None and log.pending.by == received.sender:
            self.notify(
                f"{name!r} has changed (version {log.pending.version}), but the change has not "
                f"reached this device (version {log.version}); your messages to it are held "
                "until it does"
            )
        if log.forked is not None and log.forked.by == received.sender:
            self.notify(
                f"ALARM: you were shown a different history of {name!r} than another member"
            )
        return None, gid

    async def receive(
        self,
        follow: bool,
        timeout: float | None,
        on_message: Callable[[dict[str, Any]], None],
    ) -> int:
        """Show messages as they arrive. Without ``follow``, stop once the queue is
        drained (or after ``timeout`` seconds without a frame); with ``follow``, listen
        until interrupted (or ``timeout``), reconnecting when the connection drops."""
        count = 0

        def counted(entry: dict[str, Any]) -> None:
            nonlocal count
            count += 1
            on_message(entry)

        async with self._exclusive():
            s = self._open()
        try:
            while True:
                try:
                    async with s.api.websocket() as ws:
                        if await self._pump(ws, follow, timeout, counted):
                            return count
                except websockets.ConnectionClosed as exc:
                    self._connection_lost(exc, follow)
                except Unreachable:
                    if not follow:
                        raise
                    self.notify("the server cannot be reached; still trying")
                await asyncio.sleep(1.0)
        finally:
            await self.close()

    async def _pump(
        self,
        ws: Any,
        follow: bool,
        timeout: float | None,
        on_message: Callable[[dict[str, Any]], None],
    ) -> bool:
        """Handle frames until done (True) or the socket closes (an exception).
        Frames already waiting are taken as one batch (up to ``BATCH``): their
        messages and the ratchet state that opened them commit in one transaction,
        and only then are they acknowledged and shown. A crash before the commit
        leaves them queued on the server; after it, they are acknowledged next time
        and never shown twice (``seen``)."""
        while True:
            try:
                raw = await (ws.recv() if timeout is None else _wait(ws.recv(), timeout))
            except TimeoutError:
                return True
            frames = [json.loads(raw)]
            while len(frames) < BATCH:
                try:
                    frames.append(json.loads(await _wait(ws.recv(), 0)))
                except TimeoutError:
                    break
            lines: list[dict[str, Any]] = []
            acks: list[str] = []
            failure = None
            async with self._exclusive():
                s = self._open()
                try:
                    await self._handle(s, frames, acks, lines)
                except ParleyError as exc:
                    failure = exc  # what was handled before it is still committed and shown
                finally:
                    self._save(s)
                    await self._close_stale()
            if acks:
                await ApiClient.ack(ws, acks)
            for line in lines:
                on_message(line)
            if failure is not None:
                raise failure
            if not follow and any(f.get("type") == "queue_empty" for f in frames):
                return True

    async def _handle(
        self,
        s: Session,
        frames: list[dict[str, Any]],
        acks: list[str],
        lines: list[dict[str, Any]],
    ) -> None:
        for frame in frames:
            kind = frame.get("type")
            if kind == "prekeys_low":
                await self._maintain_keys(s)
            elif kind == "message":
                entry = await self._process(s, frame)
                acks.append(str(frame["id"]))
                lines += self._group_lines
                self._group_lines = []
                if entry is not None:
                    lines.append(entry)
        await self._after_batch(s)

    async def _after_batch(self, s: Session) -> None:
        """Work owed once per batch of received frames: delivery receipts."""
        owed, self._owed = self._owed, {}
        await self._send_receipts(s, "delivered", owed)

    async def mark_read(self, chat: str) -> int:
        """Mark a chat read; its senders get read receipts unless they are turned off.
        Returns how many messages were unread."""

        async def act(s: Session) -> int:
            unread = self.profile.mark_read(chat)
            if s.state.get("settings", {}).get("read_receipts", True):
                owed: dict[str, list[str]] = {}
                for m in unread:
                    account = receipts.owed_to(m)
                    if account is not None and account != s.device.account_id:
                        owed.setdefault(account, []).append(m.id)
                self._save(s)  # read here even if a receipt cannot be sent
                await self._send_receipts(s, "read", owed)
            return len(unread)

        return int(await self.run(act))

    async def settings(self, read_receipts: bool | None = None) -> dict[str, Any]:
        """The profile's settings, changing those given."""

        async def act(s: Session) -> dict[str, Any]:
            current = s.state.setdefault("settings", {})
            if read_receipts is not None:
                current["read_receipts"] = read_receipts
            return {"read_receipts": bool(current.get("read_receipts", True))}

        return dict(await self.run(act, retries=0))

    def _connection_lost(self, exc: websockets.ConnectionClosed, follow: bool) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code == 4403:
            raise ClientError("this device was unlinked or its account closed") from exc
        if code == 4409:
            raise ClientError(
                "another connection of this device took over the push socket"
            ) from exc
        if not follow:
            raise Unreachable("the connection to the server was lost") from exc
        self.notify("the connection to the server was lost; reconnecting")

    async def fetch_attachment(self, attachment: dict[str, Any]) -> bytes:
        async def act(s: Session) -> bytes:
            blob = await s.api.call("GET", f"/v1/attachments/{attachment['id']}")
            return attachment_crypto.decrypt(
                base64.b64decode(attachment["key"]), base64.b64decode(attachment["digest"]), blob
            )

        return bytes(await self.run(act))

    async def save_attachments(
        self, message_id: str, directory: Path, progress: Callable[[str, int], None]
    ) -> list[Path]:
        """Fetch, decrypt and write every attachment of a message into ``directory``."""
        entry = self.find_message(message_id)
        attachments = [a for a in entry.get("attachments", []) if isinstance(a, dict)]
        if not attachments or any("key" not in a for a in attachments):
            raise ClientError(f"message {message_id} has no attachment this device can fetch")
        directory.mkdir(parents=True, exist_ok=True)
        saved = []
        for a in attachments:
            try:
                data = await self.fetch_attachment(a)
            except DecryptionError as exc:
                raise ClientError(
                    f"the attachment {visible(a.get('name', ''))!r} does not open with its key"
                ) from exc
            saved.append(write_new_file(safe_filename(str(a.get("name", "")), directory), data))
            progress(str(a.get("name", "")), len(data))
        return saved

    # -- reports -------------------------------------------------------------------------------------

    async def report(
        self, message_id: str, reason: str, context: int, comment: str
    ) -> dict[str, Any]:
        """Reveal one received message (and up to five before it in the same chat) to
        the platform's moderators, with the franking proof that each was really sent."""
        if not 0 <= context <= MAX_REPORT_CONTEXT:
            raise ClientError(f"--context is 0..{MAX_REPORT_CONTEXT}")
        if len(comment) > MAX_REPORT_COMMENT:
            raise ClientError(f"the comment is limited to {MAX_REPORT_COMMENT} characters")

        async def act(s: Session) -> dict[str, Any]:
            found = self.profile.find_message(message_id)
            if found is None:
                raise ClientError(f"no message {message_id} in this profile")
            target = found.to_entry()
            if target.get("outgoing") or "franking" not in target or target.get("event"):
                raise ClientError("only messages you received can be reported")
            delivered = target["franking"]["server_ms"]
            # The received messages just before it in the chat (a bounded look back).
            before = self.profile.messages(found.chat, limit=200, before=found.seq)
            earlier = [
                h
                for h in (m.to_entry() for m in before)
                if "franking" in h
                and not h.get("outgoing")
                and not h.get("event")
                and h["franking"]["server_ms"] <= delivered
            ]
            # A report is distinct messages in delivery order, the reported one last.
            context_entries = sorted(
                earlier[-context:] if context else [], key=lambda h: h["franking"]["server_ms"]
            )
            chosen = [*context_entries, target]

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
            return dict(result)

        return dict(await self.run(act))

    async def notices(self) -> list[dict[str, Any]]:
        async def act(s: Session) -> list[dict[str, Any]]:
            return list((await s.api.call("GET", "/v1/notices"))["notices"])

        return list(await self.run(act))

    # -- key transparency: self-monitoring --------------------------------------------------------

    async def keys_check(self, ack: bool = False, retries: int = RETRIES) -> dict[str, Any]:
        """Check this account's entry in the key directory: every version published since
        the last check (a history chained to the entry now published, so a version shown
        for one epoch and reverted is seen too) against what this device knows, its
        identity key and the devices the user linked. Anything else, and any proof the
        server cannot give, is an alarm, kept and shown on every command until
        acknowledged (``ack``: unknown devices still listed are then not raised again,
        but never signed into the device list; a foreign identity key stays an alarm)."""

        async def act(s: Session) -> dict[str, Any]:
            kt = s.api.kt_view
            published: dict[str, Any] | None = None
            failure: str | None = None
            try:
                published = await self._check_own_entry(s)
            except KeyTransparencyError as exc:
                failure = str(exc)
                alarm(kt, failure)
            if ack:
                current = [failure] if failure else []
                if published is not None:
                    if published["identity_key"] != s.device.identity.public.to_bytes():
                        current.append(FOREIGN_IDENTITY)
                    unknown = set(published["devices"]) - set(kt["devices"])
                    kt["acknowledged"] = sorted(set(kt.get("acknowledged", [])) | unknown)
                kt["alarms"] = current
            head = kt.get("head") or {}
            return {
                "ok": not kt["alarms"] and published is not None,
                "alarms": list(kt["alarms"]),
                "devices": published["devices"] if published else None,
                "signed_devices": (
                    sorted(published["signed_devices"] or []) if published else None
                ),
                "epoch": published["epoch"] if published else None,
                "version": published["version"] if published else None,
                "head": head_code(int(head["size"]), base64.b64decode(head["root"]))
                if head
                else None,
            }

        return dict(await self.run(act, retries))

    async def _check_own_entry(self, s: Session) -> dict[str, Any]:
        kt = s.api.kt_view
        me, mine = s.device.account_id, s.device.identity.public.to_bytes()
        own = kt.get("own")
        base = int(own["version"]) if own else 0
        published, versions = await own_history(s.api, me, base)
        try:
            verify_history(
                me,
                base,
                base64.b64decode(own["value"]) if own else directory.EMPTY,
                versions,
                published,
            )
        except KeyTransparencyError as exc:
            alarm(kt, str(exc))
            raise
        if own is None:
            # The first check: a primary reviews every version since its identity was
            # first published (its registration); a linked device starts from the entry
            # as it is now (it vouches for the devices it joined).
            ours = [i for i, v in enumerate(versions) if v["identity_key"] == mine]
            keep = ours[0] if ours and s.device.device_id == PRIMARY_DEVICE else -1
            versions = versions[keep:]
        known = set(kt.get("devices", [s.device.device_id]))
        acknowledged = set(kt.get("acknowledged", []))
        current = set(published["devices"])
        vouched = _vouched(kt, versions, mine, me)
        for v in versions:
            where = f"directory version {v['version']}, epoch {v['epoch']}"
            if v["identity_key"] != mine:
                alarm(
                    kt,
                    f"{FOREIGN_IDENTITY} ({where}"
                    + ("" if published["identity_key"] != mine else "; reverted since")
                    + ")",
                )
            new = sorted(set(v["devices"]) - known - acknowledged)
            linked = set(new) & vouched  # each used up a link code, if one was pending
            kt["expected_links"] = max(0, kt.get("expected_links", 0) - len(linked))
            known |= linked
            new = [d for d in new if d not in vouched]
            if new and len(new) <= kt.get("expected_links", 0):
                kt["expected_links"] -= len(new)  # devices this user linked
                known |= set(new)
                new = []
            for d in new:
                alarm(
                    kt,
                    f"device {d} was added to your account and you did not link it ({where}"
                    + ("" if d in current else "; removed again since")
                    + ")",
                )
        if published["identity_key"] != mine:
            alarm(kt, FOREIGN_IDENTITY)
        kt["devices"] = sorted(known & current)
        kt["own"] = {"version": published["version"], "value": b64e(published["value"])}
        kt["version"], kt["epoch"] = published["version"], published["epoch"]
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
        want = sorted(set(kt["devices"]) | {s.device.device_id})
        signed = published["signed_devices"]
        if signed is not None and sorted(signed) == want:
            return
        if kt.get("signed") == want and now_ms() - int(kt.get("signed_ms", 0)) < 60_000:
            return  # uploaded a moment ago; its epoch is on its way
        with contextlib.suppress(ServerError):
            await publish_device_list(
                s.api, s.device.identity.signing, s.device.account_id, want, now_ms()
            )
            kt["signed_ms"] = now_ms()

    async def maintain_keys(self, retries: int = RETRIES) -> dict[str, Any]:
        """Rotate the signed and last-resort prekeys when due and refill one-time
        prekeys when the server says they run low; upload what changed."""

        async def act(s: Session) -> dict[str, Any]:
            return await self._maintain_keys(s)

        return dict(await self.run(act, retries))

    async def _maintain_keys(self, s: Session) -> dict[str, Any]:
        rotated = s.device.rotate_if_due(now_ms())
        # keys rotated but not yet uploaded (a failed upload) go up next time
        unsent = s.state.get("prekeys_uploaded_ms", 0) < s.device.prekeys_rotated_ms
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
            s.state["prekeys_uploaded_ms"] = s.device.prekeys_rotated_ms
        return {"rotated": rotated, "one_time_added": len(ot)}

    async def keys_head(self) -> str:
        async def act(s: Session) -> str:
            head = await verified_head(s.api)
            return head_code(head.size, head.root)

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
        state = self.local_state()
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
                    # the new device's view of the log starts from this one's
                    "kt": {k: kt.get(k) for k in ("log_key", "head", "devices")},
                }
            ).encode()
            nonce = secrets.token_bytes(12)
            blob = nonce + aead_encrypt(key, nonce, payload, b"parley/provisioning/v1")
            await s.api.call(
                "POST", "/v1/devices/provisioning", {"lookup": b64e(lookup), "blob": b64e(blob)}
            )
            return code

        return str(await self.run(act))

    async def link(self, code: str, server: str, force: bool = False) -> dict[str, Any]:
        lookup, key = _link_keys(code.strip().upper())
        self._make_room(force)
        api = ApiClient(server, retries=RETRIES, on_retry=self.notify)
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
            kt_view = await _start_monitoring(
                api,
                device.identity,
                result["account_id"],
                int(result["device_id"]),
                payload.get("kt"),
                linked_devices,
            )
        finally:
            await api.close()
        device.account_id, device.device_id = result["account_id"], int(result["device_id"])
        device.prekeys_rotated_ms = now_ms()  # the keys just uploaded are fresh
        self._set_aside(force)
        async with self._exclusive():
            self.profile.create(
                {
                    "server": api.base_url,
                    "phone": payload["phone"],
                    "name": payload.get("name", ""),
                    "credential": result["credential"],
                    "device": device.to_dict(),
                    "contacts": {},
                    "phones": {},
                    "groups": {},
                    "kt": kt_view,
                    "prekeys_uploaded_ms": device.prekeys_rotated_ms,
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
            kt = s.api.kt_view
            kt["devices"] = sorted(set(kt.get("devices", [])) - {device_id})
            if device_id != s.device.device_id:  # the signed device list loses it too
                with contextlib.suppress(ServerError):
                    await publish_device_list(
                        s.api,
                        s.device.identity.signing,
                        s.device.account_id,
                        sorted(set(kt["devices"]) | {s.device.device_id}),
                        now_ms(),
                    )

        await self.run(act)

    # -- local data -------------------------------------------------------------------------------------------

    def history(self, chat: str, limit: int | None = None) -> list[dict[str, Any]]:
        """A chat's local history (a phone number, or a group by id or name), oldest
        first, the last ``limit`` messages; no network."""
        return [m.public() for m in self.messages(chat, limit)]

    def messages(self, chat: str, limit: int | None = None) -> list[Message]:
        state = self.local_state()
        ref = chat
        try:
            chat = normalize_phone(chat) if chat.startswith("+") else self.group_id(state, chat)
        except ClientError:
            if not self.profile.messages(ref, limit=1):
                raise
            chat = ref
        return self.profile.messages(chat, limit)

    def chats(self) -> list[ChatSummary]:
        """The conversation list, most recent first, titled by contact or group name;
        no network."""
        state = self.local_state()
        names = {
            c.get("phone"): c.get("name")
            for c in state.get("contacts", {}).values()
            if isinstance(c, dict)
        }
        groups = state.get("groups", {})
        out = self.profile.chats()
        for c in out:
            if c.group is not None:
                c.title = str(groups.get(c.group, {}).get("name") or c.group)
            elif c.chat == state.get("phone"):
                c.title = "Note to self"
            else:
                c.title = str(names.get(c.chat) or c.chat)
        return out

    def search(self, text: str, limit: int = 100) -> list[dict[str, Any]]:
        """Messages holding every word of ``text``, newest first; no network."""
        self.local_state()
        return [m.public() for m in self.profile.search(text, limit)]

    def group_names(self) -> dict[str, str]:
        """Group id -> name, from the profile (no network)."""
        state = self.local_state()
        return {g: str(v.get("name") or g) for g, v in state.get("groups", {}).items()}

    def find_message(self, message_id: str) -> dict[str, Any]:
        self.local_state()
        found = self.profile.find_message(message_id)
        if found is None:
            raise ClientError(f"no message {message_id} in this profile")
        return found.to_entry()

    def export(self) -> dict[str, Any]:
        """The user's own data, without any key material."""
        state = self.local_state()
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
            "history": [m.public() for m in self.profile.all_messages()],
        }

    async def delete_account(self) -> None:
        async def act(s: Session) -> None:
            await s.api.call("DELETE", "/v1/accounts/me")

        async with self._exclusive():
            s = self._open()
            try:
                await act(s)
            finally:
                await self.close()
            self.profile.wipe()


def _vouched(kt: dict[str, Any], versions: list[dict[str, Any]], mine: bytes, me: str) -> set[int]:
    """Devices one of this account's devices signed into a device list since the last
    check: each was linked by a holder of the identity key (the server cannot sign).
    Only lists newer than every list seen before count; an older one published again
    (a replay that could bring back a device since unlinked) is an alarm."""
    vouched: set[int] = set()
    newest = int(kt.get("list_seen", 0))
    for v in versions:
        if directory.signed_devices(v["device_list"], mine, me) is None:
            continue
        signed = directory.DeviceList.from_bytes(v["device_list"])
        if signed.counter < newest:
            alarm(
                kt,
                "an older device list of yours was published again "
                f"(directory version {v['version']}, epoch {v['epoch']})",
            )
            continue
        newest = signed.counter
        vouched |= set(signed.devices)
    kt["list_seen"] = newest
    return vouched


async def _start_monitoring(
    api: ApiClient,
    identity: IdentityKeyPair,
    account_id: str,
    device_id: int,
    inherited: object,
    server_devices: list[int] | None = None,
) -> dict[str, Any]:
    """The key-transparency view of a new profile. A primary pins the log's key and the
    head it sees at registration (trust on first use); a linked device takes both from
    the primary, inside the encrypted provisioning message, so a server that shows it
    another log is caught at once. The device signs the devices it vouches for into the
    account's device list: itself, and those the primary vouches for still linked."""
    view: dict[str, Any] = {"devices": [device_id], "expected_links": 0, "alarms": []}
    if isinstance(inherited, dict):
        if isinstance(inherited.get("log_key"), str):
            view["log_key"] = inherited["log_key"]
        head = inherited.get("head")
        if isinstance(head, dict) and isinstance(head.get("root"), str):
            view["head"] = {"size": int(head["size"]), "root": head["root"]}
        vouched = {d for d in inherited.get("devices") or [] if isinstance(d, int)}
        view["devices"] = sorted((vouched & set(server_devices or [])) | {device_id})
    api.kt_view = view
    with contextlib.suppress(ServerError):  # else the first 'keys check' signs it
        await publish_device_list(api, identity.signing, account_id, view["devices"], now_ms())
    with contextlib.suppress(ServerError):  # else the first lookup pins it
        await verified_head(api)
    return view


async def verified_policy(api: ApiClient) -> dict[str, Any]:
    """Fetch the policy and check it is the latest version the signed log commits to:
    under a head signed by the pinned log key and consistent with the heads seen
    before, its entry and every entry after it proved complete (``verify_tail``), so
    a newer version cannot be left out."""
    from parley.translog import merkle

    policy = await api.call("GET", "/v1/policy")
    head = await verified_head(api)
    try:
        index = int(policy["log_index"])
        tail: list[bytes] = []
        while index + len(tail) < head.size:
            start = index + len(tail)
            page = await api.call(
                "GET",
                f"/v1/transparency/entries?start={start}&end={min(head.size, start + 1000)}",
            )
            if not page["entries"]:
                break
            tail += [base64.b64decode(e["leaf"]) for e in page["entries"]]
        proof = await api.call("GET", f"/v1/transparency/inclusion?index={index}&size={head.size}")
        merkle.verify_tail(
            index,
            head.size,
            [base64.b64decode(p) for p in proof["proof"]],
            [merkle.leaf_hash(t) for t in tail],
            head.root,
        )
        bodies = [json.loads(t) for t in tail]
    except (ParleyError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ClientError(
            "the privacy policy could not be verified against the transparency log"
        ) from exc
    body = bodies[0]
    if (
        not isinstance(body, dict)
        or body.get("kind") != "privacy_policy"
        or body.get("sha256") != hashlib.sha256(policy["text"].encode()).hexdigest()
    ):
        raise ClientError("the served privacy policy does not match the transparency log")
    if any(isinstance(b, dict) and b.get("kind") == "privacy_policy" for b in bodies[1:]):
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
    """``recv`` with a time limit; the websockets client's ``recv`` is safe to cancel."""
    return await asyncio.wait_for(coro, timeout)
