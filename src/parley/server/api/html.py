"""HTML for the staff console and the public site: templates, security headers, errors.

Every page is rendered on the server by Jinja2 with autoescaping, and every value a
template prints passes through ``display.visible`` first (``finalize``): controls,
bidirectional overrides and separators become visible escapes, then HTML escaping
makes markup inert. Text from other people is data; it is never markup.

The pages run no inline script and load nothing from elsewhere. The policy
(``CSP``) allows scripts, styles and images from this origin only, forms posting
to this origin only, no framing, no ``<base>``, no plugins; violations are
reported to ``/console/csp-report``. One small script (``static/time.js``)
rewrites each ``<time>`` element in the reader's local time zone; without it the
page shows the same instant in UTC, saying so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.display import visible

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'; report-uri /console/csp-report"
)
# Pages under these prefixes are HTML (with the policy above and HTML error pages).
HTML_PREFIXES = ("/console", "/static/")
HTML_PAGES = frozenset({"/", "/report", "/policy", "/log"})
STATIC_FILES = {
    "console.css": "text/css; charset=utf-8",
    "time.js": "text/javascript; charset=utf-8",
}


def is_html(path: str) -> bool:
    return path in HTML_PAGES or path.startswith(HTML_PREFIXES)


class Multiline(str):
    """Text that keeps its newlines and tabs (a message, a comment); still escaped."""

    __slots__ = ()


def _finalize(value: object) -> object:
    if value is None or isinstance(value, jinja2.Undefined):  # a field an old record lacks
        return ""
    if isinstance(value, Markup):  # built by this module, from escaped parts
        return value
    if isinstance(value, Multiline):
        return value
    return visible(value)


def _multiline(value: object) -> Multiline:
    return Multiline(visible("" if value is None else value, multiline=True))


def iso(ms: int | None) -> str:
    if ms is None:
        return ""
    try:
        return (
            datetime.fromtimestamp(ms / 1000, UTC)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z")
        )
    except (OverflowError, OSError, ValueError):
        return ""


def time_element(ms: int | None) -> Markup:
    """A ``<time>`` in UTC that ``time.js`` shows in the reader's local zone."""
    stamp = iso(ms)
    if not stamp:
        return Markup("")
    shown = stamp.replace("T", " ").replace("Z", " UTC")
    return Markup('<time datetime="{}">{}</time>').format(stamp, shown)


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("parley.server", "templates"),
    autoescape=True,
    finalize=_finalize,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["ml"] = _multiline
_env.globals["t"] = time_element


def render(template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(template).render(**context), http_status)


def error_page(status: int, code: str, message: str, signed_in: bool = False) -> HTMLResponse:
    """A typed error as a page: the status, the stable code, the message (escaped)."""
    return render("error.html", status, status=status, code=code, message=message, nav=signed_in)


def static_file(name: str) -> Response:
    kind = STATIC_FILES.get(name)
    if kind is None:
        return error_page(404, "not_found", "no such file")
    data = resources.files("parley.server").joinpath("static", name).read_bytes()
    return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})


class SecurityHeaders:
    """Headers for every HTML page (and whatever else is served under its prefixes):
    the CSP, no sniffing, no framing, no referrer, and no caching of console pages.
    A response that set its own policy (an attachment: ``default-src 'none'``) keeps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_html(scope["path"]):
            await self.app(scope, receive, send)
            return
        console = scope["path"].startswith("/console")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
                ]
                if console:
                    extra.append((b"cache-control", b"no-store"))
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
