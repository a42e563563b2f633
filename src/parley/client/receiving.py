"""Receiving: the push socket, each frame checked, opened and committed before it
is acknowledged, receipts, and attachments."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley.client import groups as grp
from parley.client import receipts
from parley.client.api import ApiClient, b64e
from parley.client.base import (
    BATCH,
    GATHER_S,
    MESSAGE_ID,
    ClientError,
    Session,
    safe_filename,
    write_new_file,
)
from parley.client.device import Received
from parley.client.group_flow import GroupFlow
from parley.display import visible
from parley.errors import (
    DecryptionError,
    ParleyError,
    RemoteProtocolError,
    ServerError,
    Unreachable,
)
from parley.protocol import attachments as attachment_crypto
from parley.protocol.franking import direct_conversation, group_conversation

if TYPE_CHECKING:
    from websockets import ConnectionClosed


class Receiving(GroupFlow):
    def _refuse(self, s: Session, sender: str, why: str) -> None:
        contact = s.state.contacts.get(sender)
        who = (contact.phone if contact else "") or sender
        self.notify(f"a message from {who} was refused: {why}")
        self.on_refusal(who, why)

    async def _process(self, s: Session, frame: dict[str, Any]) -> dict[str, Any] | None:  # noqa: PLR0911, PLR0912 - each refusal ends here
        if self.profile.seen(frame["id"]):
            return None  # a re-delivery after a crash: shown once
        sender_info = s.state.contacts.get(frame["sender"])
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
                published = await self._published(s, received.sender, fresh=False)
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
        from websockets import ConnectionClosed  # loaded by what receives, not by a send

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
                except ConnectionClosed as exc:
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
                    frames.append(json.loads(await _wait(ws.recv(), GATHER_S)))
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
            if s.state.settings.read_receipts:
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
            if read_receipts is not None:
                s.state.settings.read_receipts = read_receipts
            return {"read_receipts": s.state.settings.read_receipts}

        return dict(await self.run(act, retries=0))

    def _connection_lost(self, exc: ConnectionClosed, follow: bool) -> None:
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


async def _wait(coro: Awaitable[Any], timeout: float) -> Any:
    """``recv`` with a time limit; the websockets client's ``recv`` is safe to cancel."""
    return await asyncio.wait_for(coro, timeout)
