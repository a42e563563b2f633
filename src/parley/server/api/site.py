"""The public site: ``/`` and the pages it links, for anyone, with no sign-in.

Everything a reader sees here is computed from the public transparency log: the
quarterly report is aggregated from the log's entries (``report_page.aggregate``,
the same code as ``/transparency.json``); a privacy-policy version is shown only if
its SHA-256 is the one its log entry records; the head is the signed head the
API serves. ``parley audit --server URL`` checks the same log independently.
"""

from __future__ import annotations

import base64
import difflib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from parley.errors import ApiError, BadRequest
from parley.server.api.html import error_page, render, static_file
from parley.server.handlers.legal import LegalHandler
from parley.server.handlers.report_page import aggregate
from parley.server.handlers.transparency import TransparencyHandler


def quarter_of(ms: int) -> str:
    d = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return f"{d.year}Q{(d.month - 1) // 3 + 1}"


async def quarters(log: TransparencyHandler, now_ms: int) -> list[str]:
    """Quarters with a lawful request in the log, and the current one, newest first."""
    head = await log.head()
    seen = {quarter_of(now_ms)}
    for start in range(0, head.size, 1000):
        for e in await log.entries(start, min(head.size, start + 1000)):
            received = e["body"].get("received") if e["kind"] == "legal_request" else None
            if isinstance(received, str) and len(received) == 6:
                seen.add(received)
    return sorted(seen, reverse=True)


def _version(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 9:
        raise BadRequest(f"{name} is a version number", "invalid_request")
    return int(raw)


def build_site_router(
    log: TransparencyHandler, legal: LegalHandler, clock: Callable[[], int]
) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    async def safely(build: Callable[[], Any]) -> Response:
        try:
            response: Response = await build()
        except ApiError as exc:
            return error_page(exc.http_status, exc.code, exc.message)
        return response

    @router.get("/")
    async def home(request: Request) -> Response:
        async def build() -> Response:
            head = await log.head()
            return render(
                "site/home.html",
                head=head,
                quarter=quarter_of(clock()),
                server=f"{request.url.scheme}://{request.headers.get('host', 'this-server')}",
            )

        return await safely(build)

    @router.get("/report")
    async def report(request: Request) -> Response:
        async def build() -> Response:
            quarter = request.query_params.get("quarter") or quarter_of(clock())
            found = await aggregate(log, quarter[:8])
            rows = found["by_country"]
            peak = max([v["requests"] for v in rows.values()] or [1]) or 1
            bars = [
                {
                    "country": country,
                    "values": v,
                    "width": {
                        k: round(v[k] * 100 / peak)
                        for k in ("granted", "partly_granted", "refused")
                    },
                }
                for country, v in rows.items()
            ]
            return render(
                "site/report.html",
                report=found,
                bars=bars,
                quarters=await quarters(log, clock()),
            )

        return await safely(build)

    @router.get("/policy")
    async def policy(request: Request) -> Response:
        async def build() -> Response:
            versions = await legal.policy_history()
            wanted = _version(request.query_params.get("version"), "version")
            diff_to = _version(request.query_params.get("diff"), "diff")
            listed = [v for v in versions if v["in_log"]]
            shown = listed[-1] if listed else None
            if wanted is not None:
                shown = next((v for v in listed if v["version"] == wanted), None)
                if shown is None:
                    raise BadRequest("no such policy version in the log", "not_found")
            diff: list[tuple[str, str]] = []
            if diff_to is not None:
                new = next((v for v in listed if v["version"] == diff_to), None)
                old = next((v for v in listed if v["version"] == diff_to - 1), None)
                if new is None or old is None:
                    raise BadRequest("a diff needs this version and the one before", "not_found")
                for line in difflib.unified_diff(
                    old["text"].splitlines(),
                    new["text"].splitlines(),
                    f"version {old['version']}",
                    f"version {new['version']}",
                    lineterm="",
                ):
                    kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
                    diff.append((kind, line))
                shown = new
            return render(
                "site/policy.html",
                versions=list(reversed(versions)),
                shown=shown,
                diff=diff,
            )

        return await safely(build)

    @router.get("/log")
    async def head() -> Response:
        async def build() -> Response:
            h = await log.head()
            kinds: dict[str, int] = {}
            for start in range(0, h.size, 1000):
                for e in await log.entries(start, min(h.size, start + 1000)):
                    kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
            return render(
                "site/log.html",
                head=h,
                root=h.root.hex(),
                signature=base64.b64encode(h.signature).decode(),
                key=base64.b64encode(log.key.public).decode(),
                kinds=sorted(kinds.items()),
            )

        return await safely(build)

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        return static_file(name)

    return router
