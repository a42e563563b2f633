"""Verifiable abuse reports from users.

A report reveals, by the reporter's choice, the reported message and up to
five earlier messages of the same chat, each as its franking opening with the
commitment, delivery time and server tag it arrived with. The server accepts
it only if every message verifies (``franking.verify_report``: the opening
matches the commitment, and the tag matches this sender, conversation and
time under the server's key) and the reporter is a party to the chat. A
reported attachment is opened from the blob the server stored: its SHA-256
must be a franked digest, and the key-committing format admits only the key
the receiver used, so the moderator sees what the receiver saw.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from parley.errors import BadRequest, DecryptionError, Forbidden, FrankingError
from parley.protocol import attachments as attachment_crypto
from parley.protocol import franking
from parley.protocol.franking import Opening
from parley.server.handlers.accounts import Principal
from parley.server.handlers.ratelimit import RateLimiter
from parley.server.storage.blobs import BlobStore
from parley.server.storage.groups import GroupStore
from parley.server.storage.moderation import ReportStore

CATEGORIES = ("csam", "terrorism", "violence", "fraud", "spam", "other")
MAX_CONTEXT = 5


class InvalidReport(BadRequest):
    code = "report_invalid"


@dataclass(frozen=True, slots=True)
class RevealedMessage:
    opening: Opening
    commitment: bytes
    server_ms: int
    tag: bytes


@dataclass(frozen=True, slots=True)
class RevealedAttachment:
    id: str
    key: bytes
    digest: bytes


class ReportsHandler:
    def __init__(
        self,
        reports: ReportStore,
        groups: GroupStore,
        blobs: BlobStore,
        limiter: RateLimiter,
        franking_key: bytes,
        clock_ms: Callable[[], int],
    ) -> None:
        self._reports = reports
        self._groups = groups
        self._blobs = blobs
        self._limiter = limiter
        self._key = franking_key
        self._now = clock_ms

    async def submit(
        self,
        who: Principal,
        category: str,
        comment: str,
        messages: list[RevealedMessage],
        attachments: list[RevealedAttachment],
    ) -> str:
        if category not in CATEGORIES:
            raise BadRequest(f"category must be one of {', '.join(CATEGORIES)}", "invalid_request")
        if not 1 <= len(messages) <= 1 + MAX_CONTEXT:
            raise BadRequest(
                f"a report reveals the message and at most {MAX_CONTEXT} before it",
                "invalid_request",
            )
        self._limiter.check("report", who.account_id, 10, 10 / 3600)
        reported = messages[0]
        conversation = reported.opening.conversation
        for i, m in enumerate(messages):
            try:
                franking.verify_report(self._key, m.opening, m.commitment, m.server_ms, m.tag)
            except FrankingError as exc:
                raise InvalidReport(f"message {i} does not verify: {exc.message}") from exc
            if m.opening.conversation != conversation:
                raise InvalidReport(f"message {i} is from another chat")
            if i and m.server_ms > reported.server_ms:
                raise InvalidReport(f"context message {i} is newer than the reported message")
        group = await self._check_party(who, conversation)
        opened = [await self._open_attachment(reported, a) for a in attachments]
        report_id = secrets.token_hex(16)
        content = {
            "messages": [
                {
                    "sender": m.opening.sender,
                    "text": m.opening.text,
                    "sent_at_ms": m.opening.sent_at_ms,
                    "delivered_ms": m.server_ms,
                    "attachment_digests": [d.hex() for d in m.opening.attachment_digests],
                    "reported": i == 0,
                }
                for i, m in enumerate(messages)
            ],
            "attachments": opened,
        }
        await self._reports.add(
            {
                "id": report_id,
                "reporter": who.account_id,
                "category": category,
                "comment": comment[:1000],
                "sender_account": reported.opening.sender,
                "conversation": conversation,
                "group_id": group,
                "content": json.dumps(content).encode(),
                "status": "open",
                "created_ms": self._now(),
            }
        )
        return report_id

    async def _check_party(self, who: Principal, conversation: str) -> str | None:
        """The reporter must be in the chat; returns the group id for a group chat."""
        if conversation.startswith("group:"):
            gid = conversation.removeprefix("group:")
            if who.account_id not in await self._groups.members(gid):
                raise Forbidden("only a member of the group can report its messages")
            return gid
        if who.account_id not in conversation.removeprefix("dm:").split(":"):
            raise Forbidden("only a party to a chat can report its messages")
        return None

    async def _open_attachment(
        self, reported: RevealedMessage, a: RevealedAttachment
    ) -> dict[str, object]:
        if a.digest not in reported.opening.attachment_digests:
            raise InvalidReport("the attachment is not part of the reported message")
        blob = await self._blobs.get(a.id, self._now()) if len(a.id) == 32 else None
        if blob is None:
            return {"id": a.id, "digest": a.digest.hex(), "available": False}
        try:
            data = attachment_crypto.decrypt(a.key, a.digest, blob)
        except DecryptionError as exc:
            raise InvalidReport(
                "the attachment does not open with this key to the franked digest"
            ) from exc
        return {
            "id": a.id,
            "digest": a.digest.hex(),
            "available": True,
            "size": len(data),
            "data": base64.b64encode(data).decode(),
        }
