"""The staff console (``/console``): server-rendered pages over the staff handlers.

Sign-in takes a staff credential and opens a session (``handlers/console.py``).
Every page and action then calls the same handler method as the API
(``ModerationHandler``, ``LegalHandler``), which checks the role and writes the
audit log; the console adds no policy of its own, only which links it shows.

Every POST passes, in this order (as Django's CSRF middleware): the ``Origin``
(or, without one, ``Sec-Fetch-Site``) must be this site; the session cookie must
be live; the form's CSRF token must be the one bound to that session. Actions
that change an account or a request ask for confirmation on a page of their own
(no script needed), and act only on a form posted with ``confirm=yes``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.datastructures import FormData, UploadFile
from starlette.responses import RedirectResponse, Response

from parley.display import visible
from parley.errors import ApiError, BadRequest
from parley.server.api.edge import check_text
from parley.server.api.html import error_page, render
from parley.server.handlers.console import ConsoleHandler, Session, SessionExpired
from parley.server.handlers.legal import LegalHandler
from parley.server.handlers.moderation import ACTIONS, MAX_SUSPEND_DAYS, ModerationHandler
from parley.server.handlers.report_page import aggregate
from parley.server.handlers.reports import CATEGORIES
from parley.server.handlers.transparency import TransparencyHandler

log = logging.getLogger("parley.server.console")

COOKIE = "parley_console"
PRE_COOKIE = "parley_console_pre"
MAX_FIELD = 4000
MAX_UPLOAD = 64 * 1024
MAX_CSP_REPORT = 8 * 1024
IMAGE_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
ROLE_PAGES = {
    "moderator": (("Reports", "/console/reports"),),
    "auditor": (
        ("Reports", "/console/reports"),
        ("Lawful requests", "/console/legal"),
        ("Audit log", "/console/audit"),
        ("Transparency", "/console/transparency"),
    ),
    "legal": (
        ("Lawful requests", "/console/legal"),
        ("Authorities", "/console/authorities"),
        ("User notices", "/console/notices"),
    ),
    "operator": (("Staff", "/console/staff"), ("Audit log", "/console/audit")),
}
ACTION_WORDS = {
    "dismiss": "Dismiss the report (no action on the account)",
    "warn": "Warn the sender (a notice)",
    "restrict": "Restrict the sender (no new groups, no adding members)",
    "suspend": "Suspend the sender from sending",
    "ban": "Ban the sender (no sign-in; open connections closed)",
    "remove_from_group": "Remove the sender from the group",
}


def image_type(data: bytes) -> str | None:
    """The image type the bytes are, by their magic numbers; None for anything else."""
    for magic, kind in IMAGE_TYPES:
        if data.startswith(magic):
            return kind
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def content_disposition(kind: str, name: str, fallback: str) -> str:
    """RFC 6266 with an RFC 8187 ``filename*``: the (hostile) name is percent-encoded
    whole, so nothing in it can end the header or add a parameter."""
    shown = visible(name)[:200] or fallback
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(shown, safe='')}"


def _field(form: FormData, name: str, limit: int = MAX_FIELD, required: bool = False) -> str:
    value = form.get(name)
    if value is None or isinstance(value, UploadFile):
        if required:
            raise BadRequest(f"the form needs {name}", "invalid_request")
        return ""
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters", "invalid_request")
    check_text(value)
    if required and not value.strip():
        raise BadRequest(f"the form needs {name}", "invalid_request")
    return value


async def _upload(form: FormData, name: str) -> bytes:
    value = form.get(name)
    if not isinstance(value, UploadFile):
        raise BadRequest(f"choose a file for {name}", "invalid_request")
    data = await value.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise BadRequest(f"{name} is larger than {MAX_UPLOAD} bytes", "invalid_request")
    return data


def _hours(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 6:
        raise BadRequest(f"{name} is a number of hours", "invalid_request")
    return int(raw)


def _choice(raw: str | None, allowed: tuple[str, ...], name: str) -> str | None:
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}", "invalid_request")
    return raw


def _public_key(data: bytes) -> bytes:
    """A raw 32-byte key, or its base64 (as ``parley-authority keygen`` writes it)."""
    if len(data) == 32:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(
            "the public key file is neither 32 bytes nor base64", "invalid_request"
        ) from exc
    if len(key) != 32:
        raise BadRequest(
            "the public key file does not hold a 32-byte Ed25519 key", "invalid_request"
        )
    return key


def _is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _same_origin(request: Request) -> bool:
    """Origin first; a browser that sends none sends Sec-Fetch-Site."""
    origin = request.headers.get("origin")
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is not None:
        return origin == expected
    site = request.headers.get("sec-fetch-site")
    return site is None or site in ("same-origin", "none")


def build_console_router(  # noqa: PLR0915 - one closure per page, sharing the helpers above
    console: ConsoleHandler,
    moderation: ModerationHandler,
    legal: LegalHandler,
    log_handler: TransparencyHandler,
    clock: Callable[[], int],
    csp_report_file: Path | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/console", include_in_schema=False)

    def page(session: Session, template: str, http_status: int = 200, **context: Any) -> Response:
        return render(
            template,
            http_status,
            me=session.staff,
            csrf=session.csrf,
            nav=ROLE_PAGES.get(session.staff.role, ()),
            expires=session.expires_ms,
            **context,
        )

    def sign_in_page(request: Request, status: int = 200, message: str = "") -> Response:
        pre = request.cookies.get(PRE_COOKIE)
        if not pre or len(pre) > 100:
            pre = console.new_token()
        response = render(
            "console/sign_in.html", status, csrf=console.csrf_for(pre), message=message, me=None
        )
        response.set_cookie(
            PRE_COOKIE,
            pre,
            max_age=3600,
            path="/console",
            httponly=True,
            samesite="strict",
            secure=_is_secure(request),
        )
        return response

    async def current(request: Request) -> Session:
        return await console.session(request.cookies.get(COOKIE))

    async def view(request: Request, build: Callable[[Session], Awaitable[Response]]) -> Response:
        """A GET page: the session, then the page; a refusal is a page too."""
        try:
            session = await current(request)
        except SessionExpired as exc:
            return sign_in_page(request, 401, exc.message)
        try:
            return await build(session)
        except ApiError as exc:
            return page(
                session,
                "error.html",
                exc.http_status,
                status=exc.http_status,
                code=exc.code,
                message=exc.message,
            )

    async def act(
        request: Request, build: Callable[[Session, FormData], Awaitable[Response]]
    ) -> Response:
        """A POST: same origin, a live session, the session's CSRF token, then the action."""
        if not _same_origin(request):
            return error_page(403, "cross_site_refused", "a form from another site was refused")
        try:
            session = await current(request)
        except SessionExpired as exc:
            return sign_in_page(request, 401, exc.message)
        try:
            form = await request.form(max_files=1, max_fields=20)
            console.check_csrf(session.token, _field(form, "csrf", 200))
            return await build(session, form)
        except ApiError as exc:
            return page(
                session,
                "error.html",
                exc.http_status,
                status=exc.http_status,
                code=exc.code,
                message=exc.message,
            )

    def see_other(url: str) -> Response:
        return RedirectResponse(url, status_code=303)

    # -- sign-in ------------------------------------------------------------------------------

    @router.get("")
    async def start(request: Request) -> Response:
        try:
            await current(request)
        except SessionExpired:
            return sign_in_page(request)
        return see_other("/console/home")

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        if not _same_origin(request):
            return error_page(403, "cross_site_refused", "a form from another site was refused")
        try:
            form = await request.form(max_files=0, max_fields=5)
            console.check_csrf(request.cookies.get(PRE_COOKIE), _field(form, "csrf", 200))
            session = await console.sign_in(_field(form, "credential", 200, required=True))
        except ApiError as exc:
            return sign_in_page(request, exc.http_status, exc.message)
        response = see_other("/console/home")
        response.set_cookie(
            COOKIE,
            session.token,
            max_age=console.idle_ms // 1000 * 16,  # the server ends it sooner (idle, maximum)
            path="/console",
            httponly=True,
            samesite="strict",
            secure=_is_secure(request),
        )
        response.delete_cookie(PRE_COOKIE, path="/console")
        return response

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        async def done(session: Session, _form: FormData) -> Response:
            await console.sign_out(session)
            response = see_other("/console")
            response.delete_cookie(COOKIE, path="/console")
            return response

        return await act(request, done)

    @router.get("/home")
    async def home(request: Request) -> Response:
        async def build(session: Session) -> Response:
            await moderation.record_view(session.staff, "home", "console")
            return page(session, "console/home.html")

        return await view(request, build)

    # -- moderators (auditors read) -------------------------------------------------------------

    @router.get("/reports")
    async def queue(request: Request) -> Response:
        async def build(session: Session) -> Response:
            q = request.query_params
            status = _choice(q.get("status", "open"), ("open", "resolved", "all"), "status")
            category = _choice(q.get("category"), CATEGORIES, "category")
            older = _hours(q.get("older_than_h"), "older_than_h")
            newer = _hours(q.get("newer_than_h"), "newer_than_h")
            found = await moderation.report_queue(
                session.staff, None if status == "all" else status, category, older, newer
            )
            return page(
                session,
                "console/reports.html",
                found=found,
                status=status or "open",
                category=category or "",
                older=older,
                newer=newer,
                categories=CATEGORIES,
                now_ms=clock(),
            )

        return await view(request, build)

    @router.get("/reports/{report_id}")
    async def report(request: Request, report_id: str) -> Response:
        async def build(session: Session) -> Response:
            found = await moderation.report_page(session.staff, report_id[:64])
            content = found["messages"]
            messages = sorted(
                content.get("messages", []),
                key=lambda m: (m.get("delivered_ms") or 0, bool(m.get("reported"))),
            )
            attachments = []
            for i, a in enumerate(content.get("attachments", [])):
                data = base64.b64decode(a["data"]) if a.get("available") else b""
                attachments.append({**a, "index": i, "image": image_type(data) is not None})
            return page(
                session,
                "console/report.html",
                r=found,
                messages=messages,
                attachments=attachments,
                actions=ACTIONS,
                action_words=ACTION_WORDS,
                max_days=MAX_SUSPEND_DAYS,
            )

        return await view(request, build)

    @router.get("/reports/{report_id}/attachments/{index}")
    async def attachment(request: Request, report_id: str, index: str) -> Response:
        async def build(session: Session) -> Response:
            if not index.isdigit() or len(index) > 3:
                raise BadRequest("an attachment is named by its number", "invalid_request")
            found = await moderation.report_attachment(session.staff, report_id[:64], int(index))
            data = base64.b64decode(found["data"])
            kind = image_type(data)
            safe = {
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
                "Cache-Control": "no-store",
            }
            if kind is not None and request.query_params.get("download") != "1":
                name = f"attachment-{int(index)}.{kind.removeprefix('image/')}"
                return Response(
                    data,
                    media_type=kind,
                    headers={
                        **safe,
                        "Content-Disposition": content_disposition(
                            "inline", str(found.get("name") or ""), name
                        ),
                    },
                )
            return Response(
                data,
                media_type="application/octet-stream",
                headers={
                    **safe,
                    "Content-Disposition": content_disposition(
                        "attachment", str(found.get("name") or ""), f"attachment-{int(index)}.bin"
                    ),
                },
            )

        return await view(request, build)

    @router.post("/reports/{report_id}/act")
    async def resolve(request: Request, report_id: str) -> Response:
        async def done(session: Session, form: FormData) -> Response:
            action = _choice(
                _field(form, "action", 32, required=True),
                (*ACTIONS, "remove_from_group"),
                "action",
            )
            assert action is not None
            note = _field(form, "note", 1000)
            raw_days = _field(form, "days", 6)
            days = None
            if action == "suspend":
                if not raw_days.isdigit() or not 1 <= int(raw_days) <= MAX_SUSPEND_DAYS:
                    raise BadRequest(
                        f"a suspension lasts 1..{MAX_SUSPEND_DAYS} days", "invalid_request"
                    )
                days = int(raw_days)
            if _field(form, "confirm", 8) != "yes":
                shown = await moderation.show_report(session.staff, report_id[:64])
                return page(
                    session,
                    "console/confirm_action.html",
                    r=shown,
                    action=action,
                    words=ACTION_WORDS[action],
                    days=days,
                    note=note,
                )
            if action == "remove_from_group":
                await moderation.remove_from_group(session.staff, report_id[:64])
            else:
                await moderation.resolve(session.staff, report_id[:64], action, note, days)
            return see_other(f"/console/reports/{quote(report_id[:64], safe='')}?done={action}")

        return await act(request, done)

    @router.get("/accounts/{account_id}")
    async def account(request: Request, account_id: str) -> Response:
        async def build(session: Session) -> Response:
            found = await moderation.account_history(session.staff, account_id[:64])
            return page(session, "console/account.html", h=found)

        return await view(request, build)

    # -- legal officers (auditors read) --------------------------------------------------------

    @router.get("/legal")
    async def requests(request: Request) -> Response:
        async def build(session: Session) -> Response:
            found = await legal.list_requests(session.staff)
            return page(session, "console/legal_list.html", requests=list(reversed(found)))

        return await view(request, build)

    @router.post("/legal/submit")
    async def submit(request: Request) -> Response:
        async def done(session: Session, form: FormData) -> Response:
            raw = await _upload(form, "order")
            from parley.server.api.edge import loads

            signed = loads(raw)
            if not isinstance(signed, dict):
                raise BadRequest("a signed order is a JSON object", "invalid_order")
            made = await legal.submit(session.staff, signed)
            return see_other(f"/console/legal/{made['id']}")

        return await act(request, done)

    @router.get("/legal/{request_id}")
    async def legal_request(request: Request, request_id: str) -> Response:
        async def build(session: Session) -> Response:
            found = await legal.show(session.staff, request_id[:64])
            names = await moderation.names_of(found["approvals"])
            return page(
                session,
                "console/legal_request.html",
                lr=found,
                order_json=json.dumps(found["order"], indent=2, ensure_ascii=False),
                approvers=[names.get(a, a) for a in found["approvals"]],
                approved_by_me=session.staff.id in found["approvals"],
            )

        return await view(request, build)

    @router.post("/legal/{request_id}/decide")
    async def decide(request: Request, request_id: str) -> Response:
        async def done(session: Session, form: FormData) -> Response:
            decision = _choice(
                _field(form, "decision", 16, required=True), ("approve", "refuse"), "decision"
            )
            reason = _field(form, "reason", 1000)
            if decision == "refuse" and not reason.strip():
                raise BadRequest("a refusal needs a reason", "invalid_request")
            if _field(form, "confirm", 8) != "yes":
                found = await legal.show(session.staff, request_id[:64])
                return page(
                    session,
                    "console/confirm_legal.html",
                    lr=found,
                    decision=decision,
                    reason=reason,
                )
            if decision == "approve":
                await legal.approve(session.staff, request_id[:64])
            else:
                await legal.refuse(session.staff, request_id[:64], reason)
            return see_other(f"/console/legal/{quote(request_id[:64], safe='')}")

        return await act(request, done)

    @router.get("/legal/{request_id}/export")
    async def export(request: Request, request_id: str) -> Response:
        async def build(session: Session) -> Response:
            package = await legal.export(session.staff, request_id[:64])
            safe_id = "".join(c for c in request_id[:64] if c.isalnum())
            return Response(
                json.dumps(package, indent=2).encode(),
                media_type="application/octet-stream",
                headers={
                    "Content-Disposition": content_disposition(
                        "attachment", "", f"disclosure-{safe_id}.json"
                    ),
                    "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'none'; sandbox",
                },
            )

        return await view(request, build)

    @router.get("/authorities")
    async def authorities(request: Request) -> Response:
        async def build(session: Session) -> Response:
            found = await legal.authorities(session.staff)
            shown = [{**a, "key": base64.b64encode(a["public_key"]).decode()} for a in found]
            return page(session, "console/authorities.html", authorities=shown)

        return await view(request, build)

    @router.post("/authorities")
    async def add_authority(request: Request) -> Response:
        async def done(session: Session, form: FormData) -> Response:
            key = _public_key(await _upload(form, "public_key"))
            await legal.add_authority_as(
                session.staff,
                _field(form, "name", 200, required=True),
                _field(form, "jurisdiction", 2, required=True).upper(),
                key,
            )
            return see_other("/console/authorities")

        return await act(request, done)

    @router.post("/authorities/revoke")
    async def revoke_authority(request: Request) -> Response:
        async def done(session: Session, form: FormData) -> Response:
            name = _field(form, "name", 200, required=True)
            if _field(form, "confirm", 8) != "yes":
                return page(
                    session,
                    "console/confirm_revoke.html",
                    kind="authority",
                    name=name,
                    target=name,
                    url="/console/authorities/revoke",
                )
            await legal.revoke_authority_as(session.staff, name)
            return see_other("/console/authorities")

        return await act(request, done)

    @router.get("/notices")
    async def notices(request: Request) -> Response:
        async def build(session: Session) -> Response:
            found = await legal.notice_schedule(session.staff)
            return page(session, "console/notices.html", schedule=found, now_ms=clock())

        return await view(request, build)

    # -- auditors --------------------------------------------------------------------------------

    @router.get("/audit")
    async def audit(request: Request) -> Response:
        async def build(session: Session) -> Response:
            found = await moderation.audit_entries(session.staff)
            entries = found["entries"]
            before = _hours(request.query_params.get("before"), "before")
            if before is not None:
                entries = [e for e in entries if e["seq"] < before]
            shown = list(reversed(entries))[:200]
            return page(
                session,
                "console/audit.html",
                entries=shown,
                intact=found["chain_intact"],
                total=len(found["entries"]),
                older=shown[-1]["seq"] if len(entries) > 200 else None,
            )

        return await view(request, build)

    @router.get("/transparency")
    async def transparency(request: Request) -> Response:
        async def build(session: Session) -> Response:
            from parley.server.api.site import quarter_of, quarters

            quarter = request.query_params.get("quarter") or quarter_of(clock())
            report_data = await aggregate(log_handler, quarter[:6])
            head = await log_handler.head()
            await moderation.record_view(session.staff, "transparency", quarter[:6])
            return page(
                session,
                "console/transparency.html",
                report=report_data,
                head=head,
                head_key=base64.b64encode(log_handler.key.public).decode(),
                head_root=head.root.hex(),
                head_signature=base64.b64encode(head.signature).decode(),
                quarters=await quarters(log_handler, clock()),
            )

        return await view(request, build)

    # -- operators -------------------------------------------------------------------------------

    @router.get("/staff")
    async def staff_list(request: Request) -> Response:
        async def build(session: Session) -> Response:
            found = await moderation.list_staff(session.staff)
            return page(session, "console/staff.html", staff=found)

        return await view(request, build)

    @router.post("/staff/revoke")
    async def staff_revoke(request: Request) -> Response:
        async def done(session: Session, form: FormData) -> Response:
            staff_id = _field(form, "staff_id", 64, required=True)
            name = _field(form, "name", 200)
            if _field(form, "confirm", 8) != "yes":
                return page(
                    session,
                    "console/confirm_revoke.html",
                    kind="staff credential",
                    name=name,
                    target=staff_id,
                    url="/console/staff/revoke",
                )
            await moderation.revoke_staff(session.staff, staff_id)
            return see_other("/console/staff")

        return await act(request, done)

    # -- CSP violation reports (sent by browsers; no session, no CSRF) ------------------------------

    @router.post("/csp-report")
    async def csp_report(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_CSP_REPORT:
                return Response(status_code=413)
        log.warning("content security policy violation reported")
        if csp_report_file is not None:
            try:
                parsed: Any = json.loads(body)
            except ValueError:
                parsed = {"unparsed": len(body)}
            with csp_report_file.open("a") as f:
                f.write(json.dumps(parsed) + "\n")
        return Response(status_code=204)

    return router
