"""Typed records of the local profile, shared by the command line, the daemon and
the terminal app.

``Message`` is one line of a chat's history: a message sent or received, or a
group change ("Alice added Dave"). Its JSON form (``to_entry``) is what
``history --json``, ``receive --json`` and the daemon's notifications carry;
key material (attachment keys, franking openings) stays inside the profile and
is left out of ``public()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

STATUS_NAMES = {0: "", 1: "sent", 2: "delivered", 3: "read"}
PREVIEW = 80


@dataclass
class Attachment:
    id: str
    name: str
    size: int
    content_type: str
    key: str = ""  # base64; empty once exported
    digest: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attachment:
        return cls(
            str(d.get("id", "")),
            str(d.get("name", "")),
            int(d.get("size", 0)),
            str(d.get("content_type", "")),
            str(d.get("key", "")),
            str(d.get("digest", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "content_type": self.content_type,
            "key": self.key,
            "digest": self.digest,
        }

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "content_type": self.content_type}


@dataclass
class Message:
    id: str
    chat: str  # a phone number, or a group id
    group: str | None
    sender: str  # a phone number (or an account id the directory did not name)
    sender_name: str
    text: str
    sent_at: int  # the sender's clock, ms
    outgoing: bool
    attachments: list[Attachment] = field(default_factory=list)
    event: str | None = None  # a group change: its kind
    member: str | None = None
    group_name: str | None = None
    description: str | None = None
    franking: dict[str, Any] | None = None  # what a report reveals (received messages)
    seq: int = 0  # order in the profile
    unread: bool = False
    status_code: int = 0  # outgoing: 1 sent, 2 delivered, 3 read

    @property
    def status(self) -> str:
        return STATUS_NAMES.get(self.status_code, "")

    @classmethod
    def from_entry(cls, e: dict[str, Any]) -> Message:
        return cls(
            id=str(e["id"]),
            chat=str(e.get("chat", "")),
            group=e.get("group"),
            sender=str(e.get("sender", "")),
            sender_name=str(e.get("sender_name", "")),
            text=str(e.get("text", "")),
            sent_at=int(e.get("sent_at", 0)),
            outgoing=bool(e.get("outgoing", False)),
            attachments=[
                Attachment.from_dict(a) for a in e.get("attachments", []) if isinstance(a, dict)
            ],
            event=e.get("event"),
            member=e.get("member"),
            group_name=e.get("group_name"),
            description=e.get("description"),
            franking=e.get("franking"),
            status_code=int(e.get("status_code", 1 if e.get("outgoing") else 0)),
        )

    def to_entry(self) -> dict[str, Any]:
        """The full record (key material included): the profile's own form."""
        entry: dict[str, Any] = {
            "id": self.id,
            "chat": self.chat,
            "group": self.group,
            "sender": self.sender,
            "sender_name": self.sender_name,
            "text": self.text,
            "sent_at": self.sent_at,
            "outgoing": self.outgoing,
            "attachments": [a.to_dict() for a in self.attachments],
            "event": self.event,
        }
        if self.event is not None:
            entry.update(
                member=self.member, group_name=self.group_name, description=self.description
            )
        if self.franking is not None:
            entry["franking"] = self.franking
        return entry

    def public(self) -> dict[str, Any]:
        """What is shown and exported: no keys, no franking openings."""
        entry = self.to_entry()
        entry.pop("franking", None)
        entry["attachments"] = [a.summary() for a in self.attachments]
        if self.outgoing:
            entry["status"] = self.status
        return entry

    def to_json(self) -> bytes:
        return json.dumps(self.to_entry(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, seq: int, unread: bool, status_code: int) -> Message:
        m = cls.from_entry(json.loads(data))
        m.seq, m.unread, m.status_code = seq, unread, status_code
        return m

    def preview(self) -> str:
        if self.event is not None:
            return f"{self.sender} {self.description or self.event}"[:PREVIEW]
        if self.text:
            return self.text.splitlines()[0][:PREVIEW] if self.text.strip() else ""
        if self.attachments:
            return f"[{len(self.attachments)} attachment(s)]"
        return ""


@dataclass
class ChatSummary:
    """One row of the conversation list."""

    chat: str
    group: str | None
    last: str
    sender: str
    sender_name: str
    sent_at: int
    unread: int
    last_seq: int
    title: str = ""  # filled by the client: a contact's name or a group's

    @classmethod
    def from_dict(cls, d: dict[str, Any], unread: int, last_seq: int) -> ChatSummary:
        return cls(
            chat=str(d.get("chat", "")),
            group=d.get("group"),
            last=str(d.get("last", "")),
            sender=str(d.get("sender", "")),
            sender_name=str(d.get("sender_name", "")),
            sent_at=int(d.get("sent_at", 0)),
            unread=unread,
            last_seq=last_seq,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "chat": self.chat,
            "group": self.group,
            "title": self.title or self.chat,
            "last": self.last,
            "sender": self.sender,
            "sender_name": self.sender_name,
            "sent_at": self.sent_at,
            "unread": self.unread,
        }
