"""Staff: moderators act on reports, auditors read, legal officers handle court orders.

Staff authenticate with their own credentials (``STAFF_ID.TOKEN``, stored as
an HMAC like device credentials). Every staff action, reads included, is
appended to the hash-chained audit log before its result is returned.

Actions on a reported account take effect at once (``Standing``): ``warn``
sends a notice; ``restrict`` stops it creating groups or adding members;
``suspend`` stops it sending for ``SUSPEND_DAYS``; ``ban`` stops it logging
in and closes its sockets. The reporter is told the outcome and the reported
account gets a notice of any action other than ``dismiss``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from parley.crypto.primitives import constant_time_equal, hmac_sha256
from parley.errors import BadRequest, Forbidden, NotFound, Unauthorized
from parley.server.storage.groups import GroupStore
from parley.server.storage.moderation import (
    AuditLog,
    NoticeStore,
    ReportStore,
    Staff,
    StaffStore,
    StatusStore,
)

# Staff is re-exported: routes take it from here, not from storage (parley/server/api/__init__.py).
__all__ = [
    "ACTIONS",
    "MAX_SUSPEND_DAYS",
    "OPERATORS",
    "READERS",
    "ROLES",
    "STATUS_FOR",
    "SUSPEND_DAYS",
    "ModerationHandler",
    "Staff",
]

ROLES = ("moderator", "legal", "auditor", "operator")
ACTIONS = ("dismiss", "warn", "restrict", "suspend", "ban")
STATUS_FOR = {"restrict": "restricted", "suspend": "suspended", "ban": "banned"}
SUSPEND_DAYS = 7
MAX_SUSPEND_DAYS = 365
READERS = ("moderator", "auditor")
OPERATORS = ("operator",)
DAY_MS = 86_400_000


class ModerationHandler:
    def __init__(
        self,
        staff: StaffStore,
        reports: ReportStore,
        status: StatusStore,
        notices: NoticeStore,
        audit: AuditLog,
        groups: GroupStore,
        pepper: bytes,
        clock_ms: Callable[[], int],
    ) -> None:
        self._staff = staff
        self._reports = reports
        self._status = status
        self._notices = notices
        self._audit = audit
        self._groups = groups
        self._pepper = pepper
        self._now = clock_ms
        # set by the server so its own actions apply before the answer; the
        # once-a-second refresh covers actions from parley-admin --data-dir
        self.on_status_changed: Callable[[], Awaitable[None]] | None = None

    def _hash(self, token: str) -> bytes:
        return hmac_sha256(self._pepper, b"staff\x00" + token.encode())

    async def add_staff(self, actor: str, name: str, role: str) -> tuple[Staff, str]:
        """Create a staff member; the credential is returned once and stored only hashed."""
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}", "invalid_request")
        if not name or len(name) > 100:
            raise BadRequest("a staff name is 1..100 characters", "invalid_request")
        staff_id = secrets.token_hex(8)
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        await self._staff.add(staff_id, name, role, self._hash(token), self._now())
        await self._audit.append(
            actor, "staff.add", staff_id, {"name": name, "role": role}, self._now()
        )
        return Staff(staff_id, name, role), f"{staff_id}.{token}"

    async def authenticate(self, header: str | None) -> Staff:
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing staff credentials")
        staff_id, _, token = header[7:].strip().partition(".")
        found = await self._staff.by_id(staff_id) if staff_id else None
        if found is None or not constant_time_equal(found[1], self._hash(token)):
            raise Unauthorized("invalid staff credentials")
        return found[0]

    async def take_notices(self, account_id: str) -> list[dict[str, Any]]:
        """The account's platform notices (moderation and lawful-request notices alike),
        each returned once: taking them deletes them."""
        return await self._notices.take(account_id)

    async def _require(self, staff: Staff, roles: tuple[str, ...], what: str, target: str) -> None:
        """Refuse a staff member without the role; the refused attempt is audited too."""
        if staff.role not in roles:
            await self._audit.append(
                staff.actor, "denied", target, {"attempted": what}, self._now()
            )
            raise Forbidden(f"the {staff.role} role cannot {what}")

    async def list_reports(self, staff: Staff, status: str | None) -> list[dict[str, Any]]:
        await self._require(staff, READERS, "read reports", status or "all")
        found = await self._reports.list(status)
        await self._audit.append(
            staff.actor, "reports.list", status or "all", {"count": len(found)}, self._now()
        )
        return [{k: v for k, v in r.items() if k != "messages"} for r in found]

    async def show_report(self, staff: Staff, report_id: str) -> dict[str, Any]:
        await self._require(staff, READERS, "read reports", report_id)
        report = await self._reports.get(report_id)
        if report is None:
            raise NotFound("no such report")
        await self._audit.append(staff.actor, "reports.show", report_id, {}, self._now())
        return report

    async def resolve(
        self, staff: Staff, report_id: str, action: str, note: str, days: int | None = None
    ) -> dict[str, Any]:
        """Resolve an open report; ``days`` is a suspension's length (``SUSPEND_DAYS``
        when not given, 1..``MAX_SUSPEND_DAYS``), refused with any other action."""
        await self._require(staff, ("moderator",), "act on reports", report_id)
        if action not in ACTIONS:
            raise BadRequest(f"action must be one of {', '.join(ACTIONS)}", "invalid_request")
        if days is not None and (action != "suspend" or not 1 <= days <= MAX_SUSPEND_DAYS):
            raise BadRequest(
                f"a duration goes with suspend only, 1..{MAX_SUSPEND_DAYS} days", "invalid_request"
            )
        days = days if days is not None else SUSPEND_DAYS
        report = await self._reports.get(report_id)
        if report is None:
            raise NotFound("no such report")
        if not await self._reports.resolve(report_id, action, note[:1000], self._now()):
            raise BadRequest("this report is already resolved", "already_resolved")
        now = self._now()
        target = report["sender_account"]
        if action in STATUS_FOR:
            until = now + days * DAY_MS if action == "suspend" else None
            await self._status.set(target, STATUS_FOR[action], until)
        await self._audit.append(
            staff.actor,
            "reports.resolve",
            report_id,
            {
                "action": action,
                "account": target,
                "note": note[:1000],
                **({"days": days} if action == "suspend" else {}),
            },
            now,
        )
        await self._notices.add(
            report["reporter"],
            {
                "kind": "report_outcome",
                "report": report_id,
                "outcome": "no action" if action == "dismiss" else "action taken",
                "category": report["category"],
            },
            now,
        )
        if action != "dismiss":
            await self._notices.add(
                target,
                {
                    "kind": "moderation",
                    "action": action,
                    "category": report["category"],
                    "until_ms": now + days * DAY_MS if action == "suspend" else None,
                },
                now,
            )
        if self.on_status_changed is not None:
            await self.on_status_changed()
        return {"report": report_id, "action": action, "account": target}

    async def remove_from_group(self, staff: Staff, report_id: str) -> dict[str, Any]:
        """Remove the reported sender from the group the report came from."""
        await self._require(staff, ("moderator",), "remove members from groups", report_id)
        report = await self._reports.get(report_id)
        if report is None:
            raise NotFound("no such report")
        if not report["group"]:
            raise BadRequest("this report is not about a group message", "invalid_request")
        members = await self._groups.members(report["group"])
        if report["sender_account"] not in members:
            raise NotFound("the sender is no longer in that group")
        await self._groups.remove(report["group"], report["sender_account"], self._now())
        await self._audit.append(
            staff.actor,
            "groups.remove_member",
            report["group"],
            {"account": report["sender_account"], "report": report_id},
            self._now(),
        )
        await self._notices.add(
            report["sender_account"],
            {"kind": "moderation", "action": "removed_from_group", "group": report["group"]},
            self._now(),
        )
        return {"group": report["group"], "removed": report["sender_account"]}

    async def audit_entries(self, staff: Staff) -> dict[str, Any]:
        entries = await self._audit.entries()
        intact = await self._audit.verify()
        await self._audit.append(
            staff.actor, "audit.list", "audit_log", {"count": len(entries)}, self._now()
        )
        return {"entries": entries, "chain_intact": intact}

    # -- the console's views (each audited, as every read above) ---------------------------------

    async def record_view(self, staff: Staff, what: str, target: str) -> None:
        """Audit a console page that no other handler call audits (a dashboard, a report
        of the public log)."""
        await self._audit.append(staff.actor, "console.view", target, {"page": what}, self._now())

    async def member(self, staff_id: str) -> Staff | None:
        """A current (unrevoked) staff member by id."""
        found = await self._staff.by_id(staff_id)
        return None if found is None else found[0]

    async def names_of(self, staff_ids: list[str]) -> dict[str, str]:
        """Staff names for ids shown on a page (the approvals of a lawful request)."""
        wanted = set(staff_ids)
        return {s["id"]: s["name"] for s in await self._staff.list() if s["id"] in wanted}

    async def report_queue(
        self,
        staff: Staff,
        status: str | None,
        category: str | None,
        older_than_h: int | None,
        newer_than_h: int | None,
    ) -> dict[str, Any]:
        """Reports filtered by status, category and age (hours), oldest first, with
        the counts by status and by category of the whole queue."""
        await self._require(staff, READERS, "read reports", status or "all")
        everything = await self._reports.list(None)
        now = self._now()
        counts: dict[str, dict[str, int]] = {"status": {}, "category": {}}
        for r in everything:
            counts["status"][r["status"]] = counts["status"].get(r["status"], 0) + 1
            if r["status"] == "open":
                counts["category"][r["category"]] = counts["category"].get(r["category"], 0) + 1
        shown = [
            {k: v for k, v in r.items() if k != "messages"}
            for r in everything
            if (not status or r["status"] == status)
            and (not category or r["category"] == category)
            and (older_than_h is None or r["created_ms"] <= now - older_than_h * 3_600_000)
            and (newer_than_h is None or r["created_ms"] >= now - newer_than_h * 3_600_000)
        ]
        await self._audit.append(
            staff.actor,
            "reports.list",
            status or "all",
            {"count": len(shown), "category": category or "all"},
            now,
        )
        return {"reports": shown, "counts": counts, "total": len(everything)}

    async def standing_of(self, account_id: str) -> dict[str, Any]:
        """An account's standing for a report page: its status now, and its record as
        a sender of reported messages and as a reporter. Callers have checked the role."""
        status, until = (await self._status.all()).get(account_id, ("active", None))
        if until is not None and until < self._now():
            status, until = "active", None
        everything = await self._reports.list(None)
        against = [r for r in everything if r["sender_account"] == account_id]
        made = [r for r in everything if r["reporter"] == account_id]
        return {
            "account": account_id,
            "status": status,
            "until_ms": until,
            "reported": len(against),
            "actioned": sum(1 for r in against if r["action"] not in (None, "dismiss")),
            "reports_made": len(made),
            "reports_dismissed": sum(1 for r in made if r["action"] == "dismiss"),
        }

    async def report_page(self, staff: Staff, report_id: str) -> dict[str, Any]:
        """A report with the standing of its reporter and sender (audited as a read)."""
        report = await self.show_report(staff, report_id)
        return {
            **report,
            "reporter_standing": await self.standing_of(report["reporter"]),
            "sender_standing": await self.standing_of(report["sender_account"]),
        }

    async def report_attachment(self, staff: Staff, report_id: str, index: int) -> dict[str, Any]:
        """One revealed attachment of a report: the bytes opened, at report time, from
        the blob whose digest the reported message franked."""
        await self._require(staff, READERS, "read reports", report_id)
        report = await self._reports.get(report_id)
        if report is None:
            raise NotFound("no such report")
        attachments = report["messages"].get("attachments", [])
        if not 0 <= index < len(attachments) or not attachments[index].get("available"):
            raise NotFound("no such attachment, or it could not be opened")
        await self._audit.append(
            staff.actor, "reports.attachment", report_id, {"index": index}, self._now()
        )
        return dict(attachments[index])

    async def account_history(self, staff: Staff, account_id: str) -> dict[str, Any]:
        """Every moderation action on an account (from the audit log) and the reports
        made about it and by it."""
        await self._require(staff, READERS, "read account histories", account_id)
        if not account_id or len(account_id) > 64:
            raise BadRequest("an account id is 1..64 characters", "invalid_request")
        actions = [
            {
                "at_ms": e["at_ms"],
                "actor": e["actor"],
                "action": e["details"].get("action")
                if e["action"] == "reports.resolve"
                else "remove_from_group",
                "report": e["target"]
                if e["action"] == "reports.resolve"
                else e["details"].get("report"),
                "days": e["details"].get("days"),
                "note": e["details"].get("note", ""),
            }
            for e in await self._audit.entries()
            if e["action"] in ("reports.resolve", "groups.remove_member")
            and e["details"].get("account") == account_id
        ]
        everything = await self._reports.list(None)
        await self._audit.append(
            staff.actor, "accounts.history", account_id, {"actions": len(actions)}, self._now()
        )
        return {
            "account": account_id,
            "standing": await self.standing_of(account_id),
            "actions": actions,
            "reports_about": [
                {k: v for k, v in r.items() if k != "messages"}
                for r in everything
                if r["sender_account"] == account_id
            ],
            "reports_by": [
                {k: v for k, v in r.items() if k != "messages"}
                for r in everything
                if r["reporter"] == account_id
            ],
        }

    # -- staff management (operators; adding stays local: parley-admin --data-dir) -------------

    async def list_staff(self, staff: Staff | None) -> list[dict[str, Any]]:
        """Every staff member; ``None`` is the local operator (parley-admin --data-dir)."""
        actor = "operator@local" if staff is None else staff.actor
        if staff is not None:
            await self._require(staff, OPERATORS, "list staff", "staff")
        found = await self._staff.list()
        await self._audit.append(actor, "staff.list", "staff", {"count": len(found)}, self._now())
        return found

    async def revoke_staff(self, staff: Staff | None, staff_id: str) -> dict[str, Any]:
        """Revoke a credential and end its console sessions; ``None`` is the local operator."""
        actor = "operator@local" if staff is None else staff.actor
        if staff is not None:
            await self._require(staff, OPERATORS, "revoke staff", staff_id)
        if not await self._staff.revoke(staff_id, self._now()):
            raise NotFound("no such staff member, or already revoked")
        await self._audit.append(actor, "staff.revoke", staff_id, {}, self._now())
        return {"revoked": staff_id}
