"""Public transparency routes (no credentials) and the staff routes for lawful requests."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from parley.errors import BadRequest
from parley.server.api.edge import LogIndexQuery, LogSizeQuery, StrictRoute
from parley.server.api.schemas import Body, b64
from parley.server.api.schemas import enc as _e
from parley.server.handlers.legal import LegalHandler
from parley.server.handlers.moderation import ModerationHandler, Staff
from parley.server.handlers.report_page import aggregate, render_html
from parley.server.handlers.transparency import TransparencyHandler


class AuthorityIn(Body):
    name: str
    jurisdiction: str
    public_key: str


class RefuseIn(Body):
    reason: str


class PolicyIn(Body):
    text: str


def current_quarter(ms: int) -> str:
    import datetime

    d = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return f"{d.year}Q{(d.month - 1) // 3 + 1}"


def build_public_router(
    log: TransparencyHandler,
    legal: LegalHandler,
    moderation: ModerationHandler,
    clock: Any,
) -> APIRouter:
    router = APIRouter(route_class=StrictRoute)

    async def staff(request: Request) -> Staff:
        return await moderation.authenticate(request.headers.get("authorization"))

    StaffMember = Annotated[Staff, Depends(staff)]  # noqa: N806 - a type alias

    @router.get("/v1/transparency/head", tags=["transparency"])
    async def head() -> dict[str, Any]:
        h = await log.head()
        return {
            "size": h.size,
            "root": _e(h.root),
            "timestamp_ms": h.timestamp_ms,
            "signature": _e(h.signature),
            "public_key": _e(log.key.public),
        }

    @router.get("/v1/transparency/entries", tags=["transparency"])
    async def entries(start: LogIndexQuery = 0, end: LogIndexQuery = 1000) -> dict[str, Any]:
        found = await log.entries(start, end)
        return {
            "entries": [
                {"index": e["index"], "kind": e["kind"], "body": e["body"], "leaf": _e(e["raw"])}
                for e in found
            ]
        }

    @router.get("/v1/transparency/inclusion", tags=["transparency"])
    async def inclusion(index: LogIndexQuery, size: LogSizeQuery) -> dict[str, Any]:
        return {
            "index": index,
            "size": size,
            "proof": [_e(p) for p in await log.inclusion(index, size)],
        }

    @router.get("/v1/transparency/consistency", tags=["transparency"])
    async def consistency(first: LogSizeQuery, second: LogSizeQuery) -> dict[str, Any]:
        return {
            "first": first,
            "second": second,
            "proof": [_e(p) for p in await log.consistency(first, second)],
        }

    @router.get("/transparency", response_class=HTMLResponse, tags=["transparency"])
    async def report_page(
        quarter: Annotated[str | None, Query(max_length=6)] = None,
    ) -> HTMLResponse:
        return HTMLResponse(render_html(await aggregate(log, quarter or current_quarter(clock()))))

    @router.get("/transparency.json", tags=["transparency"])
    async def report_json(
        quarter: Annotated[str | None, Query(max_length=6)] = None,
    ) -> dict[str, Any]:
        return await aggregate(log, quarter or current_quarter(clock()))

    @router.get("/v1/policy", tags=["transparency"])
    async def policy() -> dict[str, Any]:
        """The current privacy policy, served only if its hash is in the transparency log."""
        return await legal.current_policy()

    # -- staff: authorities, lawful requests, policy ----------------------------------------------

    def _legal(member: Staff) -> None:
        if member.role != "legal":
            raise BadRequest("only the legal role manages authorities and the policy", "forbidden")

    @router.post("/v1/admin/authorities", tags=["admin"])
    async def add_authority(body: AuthorityIn, member: StaffMember) -> dict[str, Any]:
        _legal(member)
        return {
            "id": await legal.add_authority(
                member.actor,
                body.name,
                body.jurisdiction,
                b64(body.public_key, "public_key", 32),
            )
        }

    @router.delete("/v1/admin/authorities/{name}", tags=["admin"])
    async def revoke_authority(name: str, member: StaffMember) -> dict[str, Any]:
        _legal(member)
        await legal.revoke_authority(member.actor, name)
        return {"revoked": name}

    @router.post("/v1/admin/legal", tags=["admin"])
    async def submit(body: dict[str, Any], member: StaffMember) -> dict[str, Any]:
        return await legal.submit(member, body)

    @router.get("/v1/admin/legal/{request_id}", tags=["admin"])
    async def show(request_id: str, member: StaffMember) -> dict[str, Any]:
        return await legal.show(member, request_id)

    @router.post("/v1/admin/legal/{request_id}/approve", tags=["admin"])
    async def approve(request_id: str, member: StaffMember) -> dict[str, Any]:
        return await legal.approve(member, request_id)

    @router.post("/v1/admin/legal/{request_id}/refuse", tags=["admin"])
    async def refuse(request_id: str, body: RefuseIn, member: StaffMember) -> dict[str, Any]:
        return await legal.refuse(member, request_id, body.reason)

    @router.get("/v1/admin/legal/{request_id}/export", tags=["admin"])
    async def export(request_id: str, member: StaffMember) -> dict[str, Any]:
        return await legal.export(member, request_id)

    @router.get("/v1/admin/transparency/report", tags=["admin"])
    async def admin_report(
        member: StaffMember, quarter: Annotated[str, Query(max_length=6)]
    ) -> dict[str, Any]:
        return await aggregate(log, quarter)

    @router.post("/v1/admin/policy", tags=["admin"])
    async def publish_policy(body: PolicyIn, member: StaffMember) -> dict[str, Any]:
        _legal(member)
        return await legal.publish_policy(body.text.encode())

    return router
