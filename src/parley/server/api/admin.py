"""Staff routes (``/v1/admin``), authenticated with staff credentials, and the
user routes for reports and notices. Adding staff is local only
(``parley-admin --data-dir``): no remote call can create a credential."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from parley.protocol.franking import Opening
from parley.protocol.wire import MAX_CONTROL
from parley.server.api import schemas as s
from parley.server.api.edge import StrictRoute
from parley.server.api.schemas import b64
from parley.server.handlers.accounts import AccountsHandler, Principal
from parley.server.handlers.moderation import ModerationHandler, Staff
from parley.server.handlers.reports import ReportsHandler, RevealedAttachment, RevealedMessage


def _revealed(m: s.ReportMessageIn) -> RevealedMessage:
    opening = Opening(
        franking_key=b64(m.franking_key, "franking_key", 32),
        sender=m.sender,
        conversation=m.conversation,
        sent_at_ms=m.sent_at_ms,
        text=m.text,
        attachment_digests=tuple(b64(d, "attachment digest", 32) for d in m.attachment_digests),
        control=b64(m.control, "control", max_length=MAX_CONTROL),
    )
    return RevealedMessage(
        opening, b64(m.commitment, "commitment", 32), m.server_ms, b64(m.tag, "tag", 32)
    )


def build_admin_router(
    accounts: AccountsHandler,
    reports: ReportsHandler,
    moderation: ModerationHandler,
) -> APIRouter:
    router = APIRouter(prefix="/v1", route_class=StrictRoute)

    async def user(request: Request) -> Principal:
        host = request.client.host if request.client else "unknown"
        return await accounts.authenticate(request.headers.get("authorization"), host)

    async def staff(request: Request) -> Staff:
        return await moderation.authenticate(request.headers.get("authorization"))

    User = Annotated[Principal, Depends(user)]  # noqa: N806 - type aliases
    StaffMember = Annotated[Staff, Depends(staff)]  # noqa: N806

    @router.post("/reports", tags=["reports"])
    async def report(body: s.ReportIn, who: User) -> s.ReportOut:
        """Report a message with its franking opening, after up to five before it
        (delivery order, the reported message last). Reporting a message again
        returns the existing report."""
        attachments = [
            RevealedAttachment(a.id, b64(a.key, "key", 32), b64(a.digest, "digest", 32), a.name)
            for a in body.attachments
        ]
        done = await reports.submit(
            who, body.category, body.comment, [_revealed(m) for m in body.messages], attachments
        )
        return s.ReportOut(id=done.id, existing=done.existing)

    @router.get("/notices", tags=["reports"])
    async def my_notices(who: User) -> s.NoticesOut:
        """Platform notices for this account (each returned once)."""
        return s.NoticesOut(notices=await moderation.take_notices(who.account_id))

    @router.get("/admin/reports", tags=["admin"])
    async def list_reports(
        member: StaffMember, status: Annotated[str | None, Query(max_length=16)] = None
    ) -> dict[str, Any]:
        return {"reports": await moderation.list_reports(member, status)}

    @router.get("/admin/reports/{report_id}", tags=["admin"])
    async def show_report(report_id: str, member: StaffMember) -> dict[str, Any]:
        return await moderation.show_report(member, report_id)

    @router.post("/admin/reports/{report_id}/resolve", tags=["admin"])
    async def resolve(report_id: str, body: s.ResolveIn, member: StaffMember) -> dict[str, Any]:
        return await moderation.resolve(member, report_id, body.action, body.note, body.days)

    @router.post("/admin/reports/{report_id}/remove-from-group", tags=["admin"])
    async def remove_from_group(report_id: str, member: StaffMember) -> dict[str, Any]:
        return await moderation.remove_from_group(member, report_id)

    @router.get("/admin/audit", tags=["admin"])
    async def audit(member: StaffMember) -> dict[str, Any]:
        return await moderation.audit_entries(member)

    return router
