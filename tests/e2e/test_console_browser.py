"""The staff console and the public site in a real browser: Debian's Chromium, driven
by chromedriver through Selenium, against a real ``parley-server`` on loopback.

Nothing is downloaded at test time: the driver path is given explicitly (Selenium
Manager never runs) and Chromium starts with its network features off. The tests
skip, saying why, only when ``/usr/bin/chromium`` or ``/usr/bin/chromedriver`` is
missing (``scripts/test.sh`` installs both with apt when it can).

Script that runs where it should not is caught three ways: the server records every
CSP violation report the browser sends (``--csp-report-file``), the browser's console
log is read for CSP errors, and the DOM is checked (no ``window.__pwned``, no script
but ``time.js``, no ``on*`` attribute, no stray ``<style>``, ``<base>`` or ``<meta>``).
A screenshot of each main page is saved under ``$PARLEY_TEST_ARTIFACTS`` (default
``tests/artifacts/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.display import visible
from tests.hostile_text import HOSTILE

from .conftest import register
from .console_helpers import (
    HTML_HOSTILE,
    Console,
    add_staff,
    make_report,
    order,
    png,
    signed_order,
)
from .server import ServerProcess, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(
    os.environ.get("PARLEY_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")
)
# The browser runs in a zone far from UTC, so a localised time is visibly localised.
BROWSER_TZ = "Asia/Kolkata"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them with apt)",
)

Driver = Any  # selenium.webdriver.Chrome (typed loosely: Selenium's stubs are partial)


class Browser:
    """One Chromium with a fresh profile; ``sign_in`` as a staff member."""

    def __init__(self, server: ServerProcess, downloads: Path) -> None:
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.server = server
        self.profile = tempfile.mkdtemp(prefix="parley-chromium-")
        self.downloads = downloads
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--window-size=1280,1000",
            f"--user-data-dir={self.profile}",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(str(CHROMEDRIVER), env={**os.environ, "TZ": BROWSER_TZ})
        self.driver: Driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(30)
        self.driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
        )
        self.console_errors: list[str] = []

    def go(self, path: str) -> None:
        self.driver.get(self.server.url + path if path.startswith("/") else path)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def follow(self, selector: str) -> None:
        """Click something that loads a page, and wait until the new page replaced this one.

        The old page is marked with a window property and the wait is for a loaded
        document without it. Selenium's ``staleness_of`` is not used: while a page is
        being swapped, chromedriver can answer a query about the old element with
        "Node with given id does not belong to the document" (an unknown error, not
        a stale-element one), and that failed a CI run. Errors during the swap are
        retried here until the deadline.
        """
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.wait import WebDriverWait

        self.driver.execute_script("window.__parleyOldPage = true")
        self.css(selector).click()
        WebDriverWait(self.driver, 15, ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.execute_script(
                "return window.__parleyOldPage === undefined && document.readyState === 'complete'"
            )
        )

    def text(self) -> str:
        return str(self.css("body").text)

    def sign_in(self, credential: str) -> None:
        self.go("/console")
        self.css("#credential").send_keys(credential)
        self.follow("#sign-in")
        assert self.driver.current_url.endswith("/console/home"), self.text()

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(ARTIFACTS / f"console-{name}.png"))

    def logs(self) -> list[str]:
        """Browser console lines so far (each read once by Chromium)."""
        lines = [str(e.get("message", "")) for e in self.driver.get_log("browser")]
        self.console_errors += lines
        return lines

    def assert_inert(self) -> None:
        """Nothing ran, nothing was injected, and no CSP violation on this page."""
        d = self.driver
        assert d.execute_script("return window.__pwned === undefined"), "a payload ran"
        scripts = d.execute_script(
            "return Array.from(document.scripts).map(s => s.getAttribute('src'))"
        )
        assert scripts == ["/static/time.js"], scripts
        handlers = d.execute_script(
            "return Array.from(document.querySelectorAll('*')).flatMap(e =>"
            " Array.from(e.attributes).filter(a => a.name.startsWith('on'))"
            ".map(a => e.tagName + ' ' + a.name))"
        )
        assert handlers == [], handlers
        injected = d.execute_script(
            "return document.querySelectorAll('style, base, iframe, object, embed, svg,"
            ' meta[http-equiv], link:not([href="/static/console.css"])\').length'
        )
        assert injected == 0
        links = d.execute_script(
            "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
            ".filter(h => !h.startsWith(location.origin))"
        )
        assert links == [], links
        assert not [line for line in self.logs() if "Content Security Policy" in line]

    def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def csp_file(tmp_path: Path) -> Path:
    return tmp_path / "csp-reports.jsonl"


@pytest.fixture
def site(tmp_path: Path, csp_file: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path,
        f"sqlite:///{tmp_path / 'data' / 'parley.db'}",
        extra=["--csp-report-file", str(csp_file)],
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def browsers(
    site: ServerProcess, tmp_path: Path, csp_file: Path
) -> Iterator[Callable[[], Browser]]:
    made: list[Browser] = []

    def new() -> Browser:
        downloads = tmp_path / f"downloads-{len(made)}"
        downloads.mkdir()
        b = Browser(site, downloads)
        made.append(b)
        return b

    yield new
    for b in made:
        b.quit()
    # No page of any test sent a CSP violation report.
    reports = csp_file.read_text() if csp_file.exists() else ""
    assert reports == "", reports


def _db(server: ServerProcess) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "parley.db")


def test_sign_in_and_sign_out(site: ServerProcess, browsers: Callable[[], Browser]) -> None:
    b = browsers()
    credential = add_staff(site, "Mona", "moderator")
    b.go("/console")
    b.shot("sign-in")
    b.css("#credential").send_keys("0123456789abcdef.wrong")
    b.follow("#sign-in")
    assert "not valid" in b.text(), b.text()
    b.sign_in(credential)
    assert "Mona · moderator" in b.css("#who").text
    cookies = {c["name"]: c for c in b.driver.get_cookies()}
    session = cookies["parley_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert b.driver.execute_script("return document.cookie") == ""  # not readable by script
    b.shot("home")
    b.assert_inert()
    b.follow("#sign-out")
    assert b.driver.current_url.endswith("/console")
    b.go("/console/reports")
    assert "Sign in" in b.text() and "please sign in" in b.text().lower()
    actions = [r[0] for r in _db(site).execute("select action from audit_log").fetchall()]
    assert "console.sign_in_refused" in actions and "console.sign_out" in actions


async def test_a_moderator_resolves_a_report_with_context_and_an_image(
    site: ServerProcess, browsers: Callable[[], Browser]
) -> None:
    made = await make_report(
        site,
        ["hi, remember me?", "here is the thing", "pay me or else"],
        comment="This is extortion.\nSecond line of my comment.",
        files=[(png(), "proof.png"), (b"%PDF-1.4 not an image", "invoice.pdf")],
        category="fraud",
    )
    b = browsers()
    b.sign_in(add_staff(site, "Mona", "moderator"))
    b.go("/console/reports?category=fraud")
    assert "open: 1" in b.css("#counts").text and "open fraud: 1" in b.css("#counts").text
    b.shot("report-queue")
    b.follow("a.open-report")
    messages = b.all("#messages li.message")
    assert [m.find_element("css selector", ".text").text for m in messages] == made.texts
    assert "REPORTED" in messages[-1].text and "REPORTED" not in messages[0].text
    assert "Second line of my comment." in b.css("#comment").text
    times = b.all("#messages time.local")  # localised by time.js, in the browser's zone
    assert times and all("GMT+5:30" in t.text or "IST" in t.text for t in times), [
        t.text for t in times
    ]
    image = b.css("img.evidence")
    assert b.driver.execute_script("return arguments[0].naturalWidth", image) == 4
    assert len(b.all("img.evidence")) == 1  # the PDF is a download, never inline
    assert "invoice.pdf" in b.text() and "proof.png" in b.text()
    assert "Status: active" in b.text() and "Reported 1 time(s)" in b.text()
    b.shot("report")
    b.assert_inert()
    b.css("#action-suspend").click()
    days = b.css("#days")
    days.clear()
    days.send_keys("3")
    b.css("#note").send_keys("extortion, first offence")
    b.follow("#review")
    assert "Suspend the sender from sending for 3 day(s)" in b.css("#confirm-what").text
    b.shot("confirm-action")
    assert _db(site).execute("select status from reports").fetchone()[0] == "open"  # not yet
    b.follow("#confirm")
    assert "resolved: suspend" in b.css("#status").text
    b.follow("#messages a.account")
    rows = b.all("#history .history-row")
    assert len(rows) == 1 and "suspend" in rows[0].text and "3" in rows[0].text
    assert "extortion, first offence" in rows[0].text
    b.shot("account-history")
    b.assert_inert()
    status, until = _db(site).execute("select status, until_ms from account_status").fetchone()
    assert status == "suspended" and abs(until - (time.time() * 1000 + 3 * 86_400_000)) < 300_000


async def test_two_officers_approve_one_request_in_two_sessions_then_export(
    site: ServerProcess, browsers: Callable[[], Browser], tmp_path: Path
) -> None:
    target = await register(site)
    phone = (await target.api.call("GET", "/v1/accounts/me"))["phone"]
    await target.api.close()
    first_credential = add_staff(site, "Olga Officer", "legal")
    second_credential = add_staff(site, "Piet Prosecutor-Checker", "legal")
    court = tmp_path / "court"
    court.mkdir()
    signed = signed_order(court, order(phone, "DE-2026-17", non_disclosure_until=None))
    first, second = browsers(), browsers()
    first.sign_in(first_credential)
    first.go("/console/authorities")
    first.css("#authority-name").send_keys("Amtsgericht Berlin")
    first.css("#authority-jurisdiction").send_keys("DE")
    first.css("#authority-key").send_keys(str(court / "court.key.pub"))
    first.follow("#add-authority-button")
    assert "Amtsgericht Berlin" in first.css("#authorities").text
    first.shot("authorities")
    first.go("/console/legal")
    first.css("#order-file").send_keys(str(signed))
    first.follow("#submit")
    checks = first.all("#checks li")
    assert len(checks) == 11 and all("passed" in c.text for c in checks), [c.text for c in checks]
    assert "messages: refused" in first.css("#parts").text
    assert "StPO §100g" in first.css("#order").text
    first.follow("#approve")
    assert "Approvals so far: 0 of 2" in first.text()
    first.follow("#confirm")
    assert "Olga Officer" in first.css("#approvals").text
    assert first.all("#already-approved") and not first.all("#approve")
    first.shot("legal-request-first-approval")
    request_path = first.driver.current_url.removeprefix(site.url)
    # The same officer cannot approve twice, whatever the page shows.
    again = Console(site)
    again.sign_in(first_credential)
    twice = again.post(request_path + "/decide", decision="approve", confirm="yes")
    assert twice.status_code == 409 and "only once" in twice.text
    # The second officer, in another browser session, sees the first approval.
    second.sign_in(second_credential)
    second.go("/console/legal")
    second.follow("a.open-request")
    assert "Olga Officer" in second.css("#approvals").text and "(1 of 2)" in second.text()
    second.follow("#approve")
    second.follow("#confirm")
    assert second.css("#request-status").text == "approved"
    second.shot("legal-request-approved")
    second.css("#export").click()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list(second.downloads.glob("disclosure-*.json")):
        time.sleep(0.2)
    (package_file,) = list(second.downloads.glob("disclosure-*.json"))
    package = json.loads(package_file.read_text())
    assert phone in json.dumps(package)
    second.go("/console/notices")
    assert "Amtsgericht Berlin" in second.css("#notices").text
    second.shot("notices")
    second.go("/console/legal")
    second.shot("legal-list")
    for b in (first, second):
        b.assert_inert()
    actions = [r[0] for r in _db(site).execute("select action from audit_log").fetchall()]
    assert actions.count("legal.approve") == 2 and "legal.export" in actions


async def test_an_auditor_can_read_but_not_act(
    site: ServerProcess, browsers: Callable[[], Browser]
) -> None:
    made = await make_report(site, ["spam spam spam"], category="spam")
    b = browsers()
    b.sign_in(add_staff(site, "Aud Itor", "auditor"))
    nav = b.css("header nav").text
    assert "Reports" in nav and "Audit log" in nav and "Staff" not in nav
    b.go(f"/console/reports/{made.id}")
    assert "spam spam spam" in b.text()
    assert not b.all("#act") and b.all("#read-only")
    # The form the page does not offer, posted with a session's own token anyway:
    # refused by the server, which checks the role (the same check as the API).
    forged = Console(site)
    forged.sign_in(add_staff(site, "Aud Two", "auditor"))
    refused = forged.post(f"/console/reports/{made.id}/act", action="ban", confirm="yes")
    assert refused.status_code == 403 and "cannot act on reports" in refused.text
    b.go("/console/audit")
    assert "Chain intact" in b.css("#chain").text
    assert "denied" in b.css("#audit").text  # the refused attempt is in the log
    b.shot("audit-log")
    b.go("/console/transparency")
    assert b.css("#head").text and "requests" in b.css("#totals").text
    b.shot("transparency")
    b.go("/console/staff")
    assert "403" in b.text() and "cannot list staff" in b.text()
    b.assert_inert()
    assert _db(site).execute("select status from reports").fetchone()[0] == "open"


async def test_hostile_strings_are_rendered_inert(
    site: ServerProcess, browsers: Callable[[], Browser], tmp_path: Path
) -> None:
    corpus = HOSTILE + HTML_HOSTILE
    no_nul = [h for h in corpus if "\x00" not in h]
    made = []
    for n, start in enumerate(range(0, len(corpus), 6)):
        chunk = corpus[start : start + 6]
        made.append(
            await make_report(
                site,
                chunk,
                comment="\n".join(no_nul[n::4]),
                files=[(png(), HTML_HOSTILE[n]), (b"<script>window.__pwned=7</script>", no_nul[n])],
            )
        )
    officer = add_staff(site, "<img src=x onerror=window.__pwned=8>", "legal")
    moderator = add_staff(site, HTML_HOSTILE[0], "moderator")
    court = tmp_path / "court"
    court.mkdir()
    authority = "<script>window.__pwned=9</script> Court"
    signed = signed_order(
        court,
        order(
            HTML_HOSTILE[1],
            HTML_HOSTILE[3],
            authority=authority,
            case_reference=HTML_HOSTILE[2],
            legal_basis=HOSTILE[4],
            offence_category=HTML_HOSTILE[4],
            requested_data=["phone_number", HTML_HOSTILE[5]],
            extra_field=HTML_HOSTILE[6],
        ),
    )
    legal = browsers()
    legal.sign_in(officer)
    legal.go("/console/authorities")
    legal.css("#authority-name").send_keys(authority)
    legal.css("#authority-jurisdiction").send_keys("DE")
    legal.css("#authority-key").send_keys(str(court / "court.key.pub"))
    legal.follow("#add-authority-button")
    legal.assert_inert()
    legal.go("/console/legal")
    legal.css("#order-file").send_keys(str(signed))
    legal.follow("#submit")
    page = legal.css("#order").text
    for field in (HTML_HOSTILE[1], HTML_HOSTILE[2], HTML_HOSTILE[4], visible(HOSTILE[4])):
        assert field in page, field
    assert "the target is a Parley account" in legal.css("#checks").text
    legal.shot("hostile-order")
    legal.assert_inert()
    for path in ("/console/legal", "/console/authorities", "/console/home"):
        legal.go(path)
        legal.assert_inert()
    mod = browsers()
    mod.sign_in(moderator)
    mod.go("/console/reports")
    mod.assert_inert()
    for report in made:
        mod.go(f"/console/reports/{report.id}")
        shown = mod.css("#messages").text
        for text in report.texts:
            assert visible(text, multiline=True).strip() in shown, text
        comment = mod.css("#comment").text
        for line in report.comment.splitlines():
            assert visible(line).strip() in comment, line
        mod.assert_inert()
        mod.go(f"/console/accounts/{report.sender}")
        mod.assert_inert()
    mod.go(f"/console/reports/{made[0].id}")
    assert HTML_HOSTILE[0] in mod.css("#attachments").text  # a file name, as text
    mod.shot("hostile-report")
    # Opening the non-image attachment's URL downloads it; the page stays, nothing runs.
    mod.go(f"/console/reports/{made[0].id}/attachments/1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list(mod.downloads.iterdir()):
        time.sleep(0.2)
    assert [p.read_bytes() for p in mod.downloads.iterdir()] == [
        b"<script>window.__pwned=7</script>"
    ]
    assert mod.driver.current_url.endswith(f"/console/reports/{made[0].id}")
    mod.assert_inert()
    op = browsers()
    op.sign_in(add_staff(site, "<b>op</b>", "operator"))
    op.go("/console/staff")
    assert "<img src=x onerror=window.__pwned=8>" in op.css("#staff").text
    op.assert_inert()
    op.go("/console/audit")
    op.assert_inert()
    for b in (legal, mod, op):
        assert not [x for x in b.console_errors if "Content Security Policy" in x]


def test_a_cross_site_form_post_is_refused(
    site: ServerProcess, browsers: Callable[[], Browser]
) -> None:
    made = asyncio.run(make_report(site, ["report me"]))
    target = f"{site.url}/console/reports/{made.id}/act"
    attacker = (
        "<!doctype html><title>win a prize</title>"
        f'<form method="post" action="{target}">'
        '<input type="hidden" name="action" value="ban">'
        '<input type="hidden" name="confirm" value="yes">'
        '<input type="hidden" name="csrf" value="guessed">'
        '<button id="go" type="submit">Claim</button></form>'
    ).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(attacker)

        def log_message(self, *_: object) -> None:
            pass

    port = free_port()
    evil = http.server.HTTPServer(("127.0.0.1", port), Page)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        b = browsers()
        b.sign_in(add_staff(site, "Mona", "moderator"))
        b.go(f"http://localhost:{port}/")  # another site: localhost is not 127.0.0.1
        b.follow("#go")
        assert "403" in b.text() or "401" in b.text(), b.text()
        b.shot("cross-site-refused")
        b.go(f"/console/reports/{made.id}")
        assert b.css("#status").text == "open" and b.all("#act")  # still signed in, unharmed
    finally:
        evil.shutdown()
        evil.server_close()
    assert _db(site).execute("select count(*) from account_status").fetchone()[0] == 0
    actions = [r[0] for r in _db(site).execute("select action from audit_log").fetchall()]
    assert "reports.resolve" not in actions


def test_an_expired_session_is_refused(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path,
        f"sqlite:///{tmp_path / 'data' / 'parley.db'}",
        extra=["--console-idle-seconds", "3"],
    )
    server.start()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    b = Browser(server, downloads)
    try:
        b.sign_in(add_staff(server, "Mona", "moderator"))
        b.go("/console/reports")
        assert b.all("#queue")
        time.sleep(3.5)
        b.go("/console/reports")
        assert not b.all("#queue") and "session has ended" in b.css("#message").text
        b.shot("session-expired")
        assert "parley_console" in {c["name"] for c in b.driver.get_cookies()}  # sent, refused
    finally:
        b.quit()
        server.stop()


async def test_the_public_site(
    site: ServerProcess, browsers: Callable[[], Browser], tmp_path: Path
) -> None:
    officer = add_staff(site, "le", "legal")
    from .console_helpers import admin

    (tmp_path / "v1.md").write_text("Policy one.\nWe keep phone numbers.\n")
    (tmp_path / "v2.md").write_text("Policy two.\nWe keep phone numbers.\n<script>x</script>\n")
    for v in ("v1.md", "v2.md"):
        admin(site, "policy", "publish", str(tmp_path / v), token=officer)
    b = browsers()
    b.go("/")
    b.shot("public-home")
    assert "parley audit --server" in b.css("#audit-howto").text
    b.follow("#link-report")
    options = [o.get_attribute("value") for o in b.all("#quarter option")]
    assert options and b.css("#totals").text
    b.shot("public-report")
    b.go("/")
    b.follow("#link-policy")
    assert "Version 2" in b.css("#policy-version").text
    assert "<script>x</script>" in b.css("#policy-text").text
    b.follow("a.diff-link")
    assert "+Policy two." in b.css("#diff").text and "-Policy one." in b.css("#diff").text
    b.shot("public-policy-diff")
    b.go("/")
    b.follow("#link-log")
    assert int(b.css("#head-size").text) >= 2
    b.shot("public-log")
    b.assert_inert()
