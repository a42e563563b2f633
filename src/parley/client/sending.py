"""Sending 1:1: content with the sender's claims, attachments, copies to our other
devices, and the history record of what was sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from parley.client.api import b64e
from parley.client.base import (
    PROOF_TTL,
    Session,
    check_text,
    normalize_phone,
    now_ms,
)
from parley.client.contacts import Contacts
from parley.client.kt import (
    gossip,
)
from parley.client.records import Message
from parley.client.store import SENT
from parley.protocol import attachments as attachment_crypto
from parley.protocol.wire import AttachmentPointer, Content


class Sending(Contacts):
    def _content(
        self, s: Session, text: str, pointers: tuple[AttachmentPointer, ...] = (), **control: Any
    ) -> Content:
        # The display name travels inside the encryption, with every message, and so
        # does the sender's verified head of the transparency log (fork detection).
        claims = {"from": s.phone, "name": s.state.name, **gossip(s.api.kt_view)}
        return Content(
            s.device.rng(32), now_ms(), text, pointers, json.dumps({**claims, **control}).encode()
        )

    async def _send_to_account(
        self, s: Session, account_id: str, content: Content, client_id: str
    ) -> dict[str, Any]:
        from parley.client.messenger import Messenger

        messenger = Messenger(
            s.api,
            s.device,
            before_send=lambda: self._save(s),
            verified=self._served_keys,
            verified_ttl=PROOF_TTL,
            proofs=self._proofs,
        )
        return await messenger.send_content(account_id, content, client_id)

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
            chat = normalize_phone(phone, self.known_phones(s))
            pointers = await self._upload(s, files, progress)
            client_id = str(uuid.uuid4())
            content = self._content(s, text, pointers, id=client_id)
            await self._send_to_account(s, contact.account_id, content, client_id)
            await self._sync(s, text, pointers, chat, None, client_id)
            self._record(
                s,
                id=client_id,
                chat=chat,
                group=None,
                sender=s.phone,
                sender_name=s.state.name,
                text=text,
                attachments=[self._pointer_record(p) for p in pointers],
                sent_at=content.sent_at_ms,
                outgoing=True,
            )
            return client_id

        return str(await self.run(act))

    async def _has_other_devices(self, s: Session) -> bool:
        return len((await s.api.call("GET", "/v1/devices"))["devices"]) > 1

    async def _send_control(self, s: Session, account: str, **control: Any) -> None:
        content = self._content(s, "", **control)
        await self._send_to_account(s, account, content, str(uuid.uuid4()))
