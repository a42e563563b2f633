"""The staff console and the public site over HTTP, against a real server process.

What a browser cannot easily show: the cookie's attributes, the session stored only
hashed, the headers on every page, typed HTML errors for bad input, roles refused on
the server, every view and action in the audit log, the public pages computed from
the log (a policy whose text no longer matches its log entry is not shown). The
browser tests (``test_console_browser.py``) drive the same pages in Chromium.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .console_helpers import Console, add_staff, admin, make_report, order, png, signed_order
from .server import ServerProcess


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose console sessions end after 2 s without a request."""
    proc = ServerProcess(
        tmp_path,
        f"sqlite:///{tmp_path / 'data' / 'parley.db'}",
        extra=["--console-idle-seconds", "2"],
    )
    proc.start()
    yield proc
    proc.stop()


def _db(server: ServerProcess) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "parley.db")


def test_every_page_carries_the_policy_and_the_cookie_is_locked_down(
    sqlite_server: ServerProcess,
) -> None:
    server = sqlite_server
    for path in ("/", "/report", "/policy", "/log", "/console", "/console/nowhere"):
        r = httpx.get(server.url + path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, path
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["content-type"].startswith("text/html"), path
    assert httpx.get(server.url + "/console/nowhere").status_code == 404  # an HTML 404
    assert httpx.get(server.url + "/").status_code == 200  # no longer a 404

    console = Console(server)
    done = console.sign_in(add_staff(server, "mo", "moderator"))
    assert done.status_code == 303
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    assert console.get("/console/home").headers["cache-control"] == "no-store"
    # Behind a TLS proxy (uvicorn trusts X-Forwarded-Proto from loopback): Secure.
    proxied = {"x-forwarded-proto": "https", "origin": server.url.replace("http:", "https:")}
    first = httpx.get(server.url + "/console", headers=proxied)
    assert "Secure" in first.headers["set-cookie"]
    pre = first.cookies["parley_console_pre"]
    token = re.search(r'name="csrf" value="([^"]+)"', first.text)
    assert token
    secure = httpx.post(
        server.url + "/console/sign-in",
        headers={**proxied, "cookie": f"parley_console_pre={pre}"},
        data={"csrf": token.group(1), "credential": add_staff(server, "mo2", "moderator")},
    )
    assert secure.status_code == 303 and "Secure" in secure.headers["set-cookie"]


def test_the_session_is_stored_only_hashed_and_ends_at_sign_out(
    sqlite_server: ServerProcess,
) -> None:
    server = sqlite_server
    console = Console(server)
    console.sign_in(add_staff(server, "mo", "moderator"))
    token = console.http.cookies["parley_console"]
    rows = _db(server).execute("select id_hash from console_sessions").fetchall()
    assert len(rows) == 1 and token.encode() not in rows[0][0]
    dump = "\n".join(_db(server).iterdump())
    assert token not in dump
    assert console.post("/console/sign-out").status_code == 303
    assert _db(server).execute("select count(*) from console_sessions").fetchone()[0] == 0
    console.http.cookies.set("parley_console", token, path="/console")  # replay the old cookie
    again = console.get("/console/reports")
    assert again.status_code == 401 and "Sign in" in again.text


def test_a_form_without_its_token_or_from_another_origin_is_refused(
    sqlite_server: ServerProcess,
) -> None:
    server = sqlite_server
    import asyncio

    made = asyncio.run(make_report(server, ["bad"]))
    console = Console(server)
    console.sign_in(add_staff(server, "mo", "moderator"))
    path = f"/console/reports/{made.id}/act"
    ban = {"action": "ban", "confirm": "yes"}
    no_token = console.http.post(path, data=ban)
    assert no_token.status_code == 403 and "csrf_refused" in no_token.text
    wrong = console.http.post(path, data={**ban, "csrf": "0" * 64})
    assert wrong.status_code == 403
    other = console.http.post(
        path, data={**ban, "csrf": console.csrf}, headers={"origin": "http://evil.example"}
    )
    assert other.status_code == 403 and "cross_site_refused" in other.text
    cross = console.http.post(
        path,
        data={**ban, "csrf": console.csrf},
        headers={"origin": "", "sec-fetch-site": "cross-site"},
    )
    assert cross.status_code == 403
    # Another session's token does not fit this session.
    second = Console(server)
    second.sign_in(add_staff(server, "mo2", "moderator"))
    assert console.http.post(path, data={**ban, "csrf": second.csrf}).status_code == 403
    assert "open" in console.get(f"/console/reports/{made.id}").text
    # With its own token, from its own origin: done.
    assert console.post(path, **ban).status_code == 303
    status = _db(server).execute("select status from account_status").fetchall()
    assert status == [("banned",)]


def test_an_idle_session_expires_and_a_revoked_credential_ends_its_sessions(
    quick: ServerProcess,
) -> None:
    server = quick  # sessions idle out after 2 s: every credential is made first
    mo, mo2, op, victim_credential = (
        add_staff(server, "mo", "moderator"),
        add_staff(server, "mo2", "moderator"),
        add_staff(server, "op", "operator"),
        add_staff(server, "au", "auditor"),
    )
    console = Console(server)
    console.sign_in(mo)
    assert console.get("/console/reports").status_code == 200
    time.sleep(2.5)
    expired = console.get("/console/reports")
    assert expired.status_code == 401 and "session has ended" in expired.text
    # Revocation, locally (parley-admin) and in the console (operator): at once.
    listed = admin(server, "staff", "list", "--json")
    assert all(s["revoked_ms"] is None for s in json.loads(listed)["staff"])
    assert mo2.split(".")[1] not in listed  # ids only, never a credential
    console.sign_in(mo2)
    admin(server, "staff", "revoke", mo2.split(".")[0])
    assert console.get("/console/reports").status_code == 401
    operator = Console(server)
    operator.sign_in(op)
    victim = Console(server)
    victim.sign_in(victim_credential)
    staff_page = operator.get("/console/staff")
    assert staff_page.status_code == 200 and "au" in staff_page.text
    au_id = victim_credential.split(".")[0]
    confirm = operator.post("/console/staff/revoke", staff_id=au_id, name="au")
    assert confirm.status_code == 200 and "Revoke" in confirm.text  # asks first
    assert victim.get("/console/audit").status_code == 200  # not yet
    assert operator.post("/console/staff/revoke", staff_id=au_id, confirm="yes").status_code == 303
    assert victim.get("/console/audit").status_code == 401
    assert Console(server).sign_in(victim_credential).status_code == 401  # nor anew
    api = httpx.get(
        server.url + "/v1/admin/audit", headers={"authorization": f"Bearer {victim_credential}"}
    )
    assert api.status_code == 401  # the API refuses it too


def test_roles_are_enforced_on_the_server_for_pages_and_actions(
    sqlite_server: ServerProcess,
) -> None:
    import asyncio

    server = sqlite_server
    made = asyncio.run(make_report(server, ["bad"]))
    auditor, legal, moderator = Console(server), Console(server), Console(server)
    auditor.sign_in(add_staff(server, "au", "auditor"))
    legal.sign_in(add_staff(server, "le", "legal"))
    moderator.sign_in(add_staff(server, "mo", "moderator"))
    act = f"/console/reports/{made.id}/act"
    for who in (auditor, legal):
        refused = who.post(act, action="ban", confirm="yes")
        assert refused.status_code == 403, refused.text
    assert "Your role can read reports" in auditor.get(f"/console/reports/{made.id}").text
    assert legal.get("/console/reports").status_code == 403
    assert moderator.get("/console/legal").status_code == 403
    assert moderator.get("/console/staff").status_code == 403
    assert auditor.get("/console/staff").status_code == 403
    assert auditor.get("/console/legal").status_code == 200  # auditors read requests
    refused = auditor.post("/console/legal/submit")
    assert refused.status_code in (400, 403)
    assert moderator.post("/console/authorities/revoke", name="x", confirm="yes").status_code == 403
    assert "open" in moderator.get(f"/console/reports/{made.id}").text
    assert _db(server).execute("select count(*) from account_status").fetchone()[0] == 0
    denied = _db(server).execute("select count(*) from audit_log where action='denied'").fetchone()
    assert denied[0] >= 2


def test_bad_input_gets_a_typed_error_page_never_a_500(sqlite_server: ServerProcess) -> None:
    server = sqlite_server
    console = Console(server)
    console.sign_in(add_staff(server, "mo", "moderator"))
    cases = {
        "/console/reports?older_than_h=abc": 400,
        "/console/reports?status=maybe": 400,
        "/console/reports?category=%3Cscript%3E": 400,
        "/console/reports/" + "f" * 32: 404,
        "/console/reports/nope/attachments/x": 400,
        "/console/accounts/" + "a" * 80: 200,  # cut to 64: an unknown account, empty history
        "/console/nowhere": 404,
    }
    for path, status in cases.items():
        r = console.http.get(path)
        assert r.status_code == status, (path, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("text/html"), path
    for path, status in {
        "/report?quarter=2026Q9": 400,
        "/policy?version=x": 400,
        "/policy?diff=7": 400,
        "/static/..%2Fhtml.py": 404,
        "/static/nothing.js": 404,
    }.items():
        r = httpx.get(server.url + path)
        assert r.status_code == status, (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html") and "Traceback" not in r.text
    weird = console.post(
        "/console/reports/" + "f" * 32 + "/act", action="suspend", days="9999", confirm="yes"
    )
    assert weird.status_code == 400 and "1..365 days" in weird.text
    nul = console.post("/console/reports/x/act", action="warn", note="a\x00b")
    assert nul.status_code == 400
    assert "internal error" not in "".join(p.read_text() for p in server.log_files)


def test_attachments_inline_only_as_verified_images_else_a_download(
    sqlite_server: ServerProcess,
) -> None:
    import asyncio

    server = sqlite_server
    image = png()
    hostile_name = 'x.png"\r\nSet-Cookie: a=b; <script>'
    made = asyncio.run(
        make_report(
            server,
            ["context", "reported"],
            files=[(image, hostile_name), (b"<html><script>alert(1)</script>", "page.png")],
        )
    )
    console = Console(server)
    console.sign_in(add_staff(server, "mo", "moderator"))
    page = console.get(f"/console/reports/{made.id}").text
    assert page.count('class="evidence"') == 1  # the PNG only; the HTML is a download
    inline = console.get(f"/console/reports/{made.id}/attachments/0")
    assert inline.content == image and inline.headers["content-type"] == "image/png"
    assert inline.headers["x-content-type-options"] == "nosniff"
    assert inline.headers["content-security-policy"].startswith("default-src 'none'")
    assert "set-cookie" not in inline.headers
    disposition = inline.headers["content-disposition"]
    assert disposition.startswith("inline;") and "\r" not in disposition
    assert "%22" in disposition and "<" not in disposition
    other = console.get(f"/console/reports/{made.id}/attachments/1")
    assert other.headers["content-type"] == "application/octet-stream"
    assert other.headers["content-disposition"].startswith("attachment;")
    forced = console.get(f"/console/reports/{made.id}/attachments/0", download="1")
    assert forced.headers["content-disposition"].startswith("attachment;")
    assert console.get(f"/console/reports/{made.id}/attachments/2").status_code == 404


def test_every_view_and_action_goes_into_the_chained_audit_log(
    sqlite_server: ServerProcess,
) -> None:
    import asyncio

    server = sqlite_server
    made = asyncio.run(make_report(server, ["one", "two"], comment="look"))
    console = Console(server)
    console.sign_in(add_staff(server, "mo", "moderator"))
    console.get("/console/reports")
    console.get(f"/console/reports/{made.id}")
    console.get(f"/console/accounts/{made.sender}")
    console.post(f"/console/reports/{made.id}/act", action="suspend", days="3", confirm="yes")
    console.post("/console/sign-out")
    auditor = Console(server)
    auditor.sign_in(add_staff(server, "au", "auditor"))
    page = auditor.get("/console/audit").text
    assert "Chain intact" in page
    actions = [
        r[0] for r in _db(server).execute("select action from audit_log order by seq").fetchall()
    ]
    for expected in (
        "console.sign_in",
        "console.view",
        "reports.list",
        "reports.show",
        "accounts.history",
        "reports.resolve",
        "console.sign_out",
        "audit.list",
    ):
        assert expected in actions, expected
    days = _db(server).execute("select until_ms from account_status").fetchone()[0]
    assert abs(days - (time.time() * 1000 + 3 * 86_400_000)) < 120_000  # three days, not seven
    history = auditor.get(f"/console/accounts/{made.sender}").text
    assert "suspend" in history and "mo" in history
    with _db(server) as db:  # an edited entry breaks the chain, and the page says so
        db.execute("update audit_log set target='edited' where seq=2")
    assert "CHAIN BROKEN" in auditor.get("/console/audit").text


async def test_the_public_site_is_computed_from_the_log(
    sqlite_server: ServerProcess, tmp_path: Path
) -> None:
    server = sqlite_server
    officer = add_staff(server, "le", "legal")
    (tmp_path / "v1.md").write_text("We keep your phone number.\nNothing else.\n")
    (tmp_path / "v2.md").write_text("We keep your phone number.\nAnd IP addresses for 7 days.\n")
    for v in ("v1.md", "v2.md"):
        admin(server, "policy", "publish", str(tmp_path / v), token=officer)
    policy = httpx.get(server.url + "/policy").text
    assert "Version 2" in policy and "IP addresses for 7 days" in policy
    diff = httpx.get(server.url + "/policy", params={"diff": "2"}).text
    assert re.search(r'class="del">-Nothing else\.', diff)
    assert re.search(r'class="add">\+And IP addresses for 7 days\.', diff)
    # A legal request, so the report has something to count.
    console = Console(server)
    console.sign_in(officer)
    key_dir = tmp_path / "court"
    key_dir.mkdir()
    signed = signed_order(key_dir, order("+14155550000", "DE-9"))
    files = {"public_key": ("court.key.pub", (key_dir / "court.key.pub").read_bytes())}
    added = console.http.post(
        "/console/authorities",
        data={"csrf": console.csrf, "name": "Amtsgericht Berlin", "jurisdiction": "DE"},
        files=files,
    )
    assert added.status_code == 303, added.text
    submitted = console.http.post(
        "/console/legal/submit",
        data={"csrf": console.csrf},
        files={"order": ("signed.json", signed.read_bytes())},
    )
    assert submitted.status_code == 303, submitted.text
    shown = console.get(submitted.headers["location"]).text
    assert "the target is a Parley account" in shown and "failed" in shown  # no such account
    assert "the signature verifies against the authority" in shown
    head = httpx.get(server.url + "/v1/transparency/head").json()
    log_page = httpx.get(server.url + "/log").text
    assert f'<dd id="head-size">{head["size"]}</dd>' in log_page
    quarter = httpx.get(server.url + "/transparency.json").json()
    report = httpx.get(server.url + "/report", params={"quarter": quarter["quarter"]}).text
    totals = quarter["totals"]
    assert f"{totals['requests']} lawful requests: " in report and totals["refused"] == 1
    assert quarter["log_root"] in report
    home = httpx.get(server.url + "/").text
    for link in ('href="/report?quarter=', 'href="/policy"', 'href="/log"', "parley audit"):
        assert link in home
    # A stored policy that no longer matches its log entry is not shown as the policy.
    with _db(server) as db:
        db.execute("update policies set text=? where version=2", (b"We keep everything.",))
    tampered = httpx.get(server.url + "/policy").text
    assert "We keep everything" not in tampered and "does not match its log entry" in tampered
    assert hashlib.sha256(b"We keep everything.").hexdigest() in tampered
