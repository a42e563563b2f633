"""Verifiable abuse reports from users.

A report reveals, by the reporter's choice, a set of distinct messages of one
chat in delivery order, oldest first: up to five messages of context, then the
reported message, last. Each comes as its franking opening with the
commitment, delivery time and server tag it arrived with.

The checks run in this order, and the order matters:

1. Shape: the category, one to six messages, all naming one conversation, no
   message twice (by server tag or by commitment), delivery times never going
   back. None of this needs the server's key.
2. Who may report: a party to a 1:1 chat, or an account that was a member of
   the group when each message was delivered (kept for a removed member for
   ``MEMBERSHIP_RETENTION_MS``). This comes before any verification, so an
   outsider gets the same answer for a genuine transcript and a forged one:
   the server is no oracle for whether a leaked transcript is real.
3. Verification (``franking.verify_report``): the opening matches the
   commitment and is within the bounds every receiver enforces
   (``franking.check_reportable``), and the tag matches this sender,
   conversation and time under the server's key.
4. One report per reporter and message: a message reported again by the same
   reporter returns the existing report. The key is SHA-256 of the reported
   message's server tag, which names exactly one delivered message.
5. At most ``REPORTS_PER_HOUR`` new reports per reporter, counted from the
   reports table, so the limit survives a restart.

A reported attachment must carry one of the reported message's franked
digests. It is opened from the blob the server stored; the key-committing
format admits only the key the receiver used, so the moderator sees what the
receiver saw. An attachment that cannot be shown (expired, another blob under
that id, a key that does not open it) is recorded as not available, with the
reason, and the text stays reportable.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from parley.crypto.primitives import constant_time_equal, sha256
from parley.errors import BadRequest, DecryptionError, Forbidden, FrankingError, RateLimited
from parley.protocol import attachments as attachment_crypto
from parley.protocol import franking
from parley.protocol.franking import Opening
from parley.server.handlers.accounts import Principal
from parley.server.storage.blobs import BlobStore
from parley.server.storage.groups import GroupStore
from parley.server.storage.moderation import ReportStore

CATEGORIES = ("csam", "terrorism", "violence", "fraud", "spam", "other")
MAX_CONTEXT = 5
MAX_COMMENT = 1000
REPORTS_PER_HOUR = 10
HOUR_MS = 3_600_000
# How long a removed member's membership span is kept, so it can still report
# what it received while a member (README, "What the server keeps").
MEMBERSHIP_RETENTION_MS = 90 * 86_400_000


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
    # The file name the reporter's client shows. It is not franked, so it is kept
    # as the reporter's claim and shown as such; the bytes are what the digest names.
    name: str = ""


@dataclass(frozen=True, slots=True)
class Submitted:
    id: str
    existing: bool


class ReportsHandler:
    def __init__(
        self,
        reports: ReportStore,
        groups: GroupStore,
        blobs: BlobStore,
        franking_key: bytes,
        clock_ms: Callable[[], int],
    ) -> None:
        self._reports = reports
        self._groups = groups
        self._blobs = blobs
        self._key = franking_key
        self._now = clock_ms

    async def submit(
        self,
        who: Principal,
        category: str,
        comment: str,
        messages: list[RevealedMessage],
        attachments: list[RevealedAttachment],
    ) -> Submitted:
        """Check and store a report (see the module docstring for the order of checks)."""
        if category not in CATEGORIES:
            raise BadRequest(f"category must be one of {', '.join(CATEGORIES)}", "invalid_request")
        _check_shape(messages)
        reported = messages[-1]
        conversation = reported.opening.conversation
        group = await self._check_party(who, conversation, [m.server_ms for m in messages])
        for i, m in enumerate(messages):
            try:
                franking.verify_report(self._key, m.opening, m.commitment, m.server_ms, m.tag)
            except FrankingError as exc:
                raise InvalidReport(f"message {i} does not verify: {exc.message}") from exc
        _check_attachments(reported, attachments)
        report_key = sha256(reported.tag)
        existing = await self._reports.existing(who.account_id, report_key)
        if existing is not None:
            return Submitted(existing, True)
        now = self._now()
        recent = await self._reports.recent(who.account_id, now - HOUR_MS + 1, REPORTS_PER_HOUR)
        if len(recent) >= REPORTS_PER_HOUR:
            # The oldest of the last REPORTS_PER_HOUR leaves the window first.
            raise RateLimited(max(1, math.ceil((recent[-1] + HOUR_MS - now) / 1000)))
        content = {
            "messages": [
                {
                    "sender": m.opening.sender,
                    "text": m.opening.text,
                    "sent_at_ms": m.opening.sent_at_ms,
                    "delivered_ms": m.server_ms,
                    "attachment_digests": [d.hex() for d in m.opening.attachment_digests],
                    "reported": m is reported,
                }
                for m in messages
            ],
            "attachments": [await self._open_attachment(a) for a in attachments],
        }
        report_id = secrets.token_hex(16)
        stored = await self._reports.add(
            {
                "id": report_id,
                "reporter": who.account_id,
                "category": category,
                "comment": comment[:MAX_COMMENT],
                "sender_account": reported.opening.sender,
                "conversation": conversation,
                "group_id": group,
                "content": json.dumps(content).encode(),
                "status": "open",
                "created_ms": now,
                "report_key": report_key,
            }
        )
        return Submitted(stored, stored != report_id)

    async def _check_party(self, who: Principal, conversation: str, times: list[int]) -> str | None:
        """The reporter must have been in the chat when each message was delivered;
        returns the group id for a group chat. Runs before any verification, and
        its answer depends only on the claimed conversation and times."""
        if conversation.startswith("group:"):
            gid = conversation.removeprefix("group:")
            spans = await self._groups.spans(gid, who.account_id)
            if not all(
                any(joined <= t and (left is None or t <= left) for joined, left in spans)
                for t in times
            ):
                raise Forbidden(
                    "only an account that was a member of the group when a message was "
                    "delivered can report it"
                )
            return gid
        parties = conversation.removeprefix("dm:").split(":")
        if not conversation.startswith("dm:") or len(parties) != 2:
            raise InvalidReport("the conversation is neither dm:A:B nor group:ID")
        if who.account_id not in parties:
            raise Forbidden("only a party to a chat can report its messages")
        return None

    async def _open_attachment(self, a: RevealedAttachment) -> dict[str, object]:
        """The attachment as the receiver saw it, or why it cannot be shown."""
        shown: dict[str, object] = {"id": a.id, "digest": a.digest.hex(), "name": a.name}
        try:
            blob = await self._blobs.get(a.id, self._now()) if _is_blob_id(a.id) else None
        except OSError:  # pruned between the lookup and the read
            blob = None
        if blob is None:
            return {**shown, "available": False, "reason": "the blob has expired or never existed"}
        if not constant_time_equal(sha256(blob), a.digest):
            return {
                **shown,
                "available": False,
                "reason": "the blob under this id is not the franked attachment",
            }
        try:
            data = attachment_crypto.decrypt(a.key, a.digest, blob)
        except DecryptionError:
            return {
                **shown,
                "available": False,
                "reason": "the key does not open the franked attachment",
            }
        return {
            **shown,
            "available": True,
            "size": len(data),
            "data": base64.b64encode(data).decode(),
        }


def _check_shape(messages: list[RevealedMessage]) -> None:
    """Distinct messages of one chat in delivery order; no secret is needed to decide."""
    if not 1 <= len(messages) <= 1 + MAX_CONTEXT:
        raise BadRequest(
            f"a report reveals the message and at most {MAX_CONTEXT} before it", "invalid_request"
        )
    conversation = messages[-1].opening.conversation
    tags: set[bytes] = set()
    commitments: set[bytes] = set()
    for i, m in enumerate(messages):
        if m.opening.conversation != conversation:
            raise InvalidReport(f"message {i} is from another chat than the reported message")
        if m.tag in tags or m.commitment in commitments:
            raise InvalidReport(
                f"message {i} appears twice: a report is a set of distinct messages"
            )
        tags.add(m.tag)
        commitments.add(m.commitment)
        if i and m.server_ms < messages[i - 1].server_ms:
            raise InvalidReport(
                f"message {i} was delivered before message {i - 1}: messages go in delivery "
                "order, oldest first, the reported message last"
            )


def _check_attachments(reported: RevealedMessage, attachments: list[RevealedAttachment]) -> None:
    digests: set[bytes] = set()
    for a in attachments:
        if a.digest not in reported.opening.attachment_digests:
            raise InvalidReport("the attachment is not part of the reported message")
        if a.digest in digests:
            raise InvalidReport("an attachment appears twice")
        digests.add(a.digest)


def _is_blob_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
