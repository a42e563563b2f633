"""``parley-admin`` and the server's HTML page show other people's text literally.

A real server; reports whose messages, comments and notes are the hostile
corpus (built through the client library, as a reporter would); a court order
whose fields are hostile; staff and an authority with hostile names. Every
admin path that prints them (tables, lines, ``reports show``/``list``,
``resolve``, ``audit list``, ``legal show``, ``staff add``, ``authority add``),
locally and remotely, and the transparency page must show each one's visible
form and no character that steers a terminal. Times are local; JSON keeps the
milliseconds and adds ISO 8601 beside them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.client.api import b64e
from parley.display import html_text, iso_time, local_time, visible
from parley.protocol import attachments
from parley.protocol.wire import AttachmentPointer
from parley.server.handlers.report_page import render_html
from tests.hostile_text import HOSTILE, assert_shown_safely

from .conftest import register
from .server import ServerProcess
from .test_reports import reveal

# Command-line arguments cannot hold NUL; request bodies refuse it outside franked text.
NO_NUL = [h for h in HOSTILE if "\x00" not in h]
HTML_HOSTILE = '"><script>alert(1)</script>'


def run_admin(
    server: ServerProcess, *args: str, token: str | None = None, remote: bool = True
) -> str:
    where = (
        ["--server", server.url]
        if remote
        else ["--data-dir", str(server.data_dir), "--database-url", server.database_url]
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.cli.admin",
            *where,
            *(["--token", token] if token else []),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "2000"},  # a table cell is not wrapped mid-text
    )
    assert done.returncode == 0, done.stderr
    assert_shown_safely(done.stderr, [])
    return done.stdout


class World:
    """A server holding hostile reports, a hostile order and hostile names."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.reports: list[dict[str, Any]] = []  # id, comment, texts (delivery order)
        self.staff_names = [NO_NUL[1], NO_NUL[5]]
        self.moderator = self.add_staff(self.staff_names[0], "moderator")
        self.legal = self.add_staff(self.staff_names[1], "legal")

    def add_staff(self, name: str, role: str) -> str:
        out = run_admin(self.server, "staff", "add", name, "--role", role, remote=False)
        assert_shown_safely(out, [name])
        return out.strip().splitlines()[-1]

    async def build(self) -> None:
        alice, bob = await register(self.server), await register(self.server)
        enc = attachments.encrypt(b"the picture", secrets.token_bytes)
        up = await alice.api.call("POST", "/v1/attachments", content=enc.blob)
        pointer = AttachmentPointer(up["id"], enc.key, enc.digest, len(enc.blob), "image/png", "p")
        for i, text in enumerate(HOSTILE):
            with_file = (pointer,) if i == 5 else ()
            await alice.send_content(bob.account_id, alice.content(text, with_file))
        async with bob.api.websocket() as ws:
            got = [m for m in await bob.receive(ws) if m.content.text]
        assert [m.content.text for m in got] == HOSTILE  # each arrived as it was written
        # three reports, each revealing up to six messages, the reported one last
        for n, chunk in enumerate((got[0:6], got[6:12], got[12:])):
            comment = NO_NUL[n] + " " + NO_NUL[-1 - n]
            reported = chunk[-1]
            shown_files = [
                {"id": a.id, "key": b64e(a.key), "digest": b64e(a.digest)}
                for a in reported.content.attachments
            ]
            result = await bob.api.call(
                "POST",
                "/v1/reports",
                {
                    "category": "fraud",
                    "comment": comment,
                    "messages": [reveal(m, bob) for m in chunk],
                    "attachments": shown_files,
                },
            )
            self.reports.append(
                {
                    "id": result["id"],
                    "comment": comment,
                    "texts": [m.content.text for m in chunk],
                    "reporter": bob.account_id,
                    "sender": alice.account_id,
                    "attachment": up["id"] if shown_files else None,
                }
            )
        for m in (alice, bob):
            await m.api.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    import asyncio

    root = tmp_path_factory.mktemp("admin-literal")
    server = ServerProcess(root, f"sqlite:///{root / 'data' / 'parley.db'}")
    server.start()
    built = World(server)
    asyncio.run(built.build())
    yield built
    server.stop()


@pytest.mark.parametrize("remote", [True, False], ids=["remote", "local"])
def test_reports_show_prints_every_field_literally_in_delivery_order(
    world: World, remote: bool
) -> None:
    for report in world.reports:
        args = ("reports", "show", report["id"])
        shown = json.loads(
            run_admin(world.server, *args, "--json", token=world.moderator, remote=remote)
        )
        text = run_admin(world.server, *args, token=world.moderator, remote=remote)
        assert_shown_safely(text, [report["comment"], *report["texts"]])
        # the reported message last, marked; the rest before it in delivery order
        messages = text[text.index("messages, oldest first") :]
        # a message line starts with its mark and its local delivery time (an attachment
        # line can start with "  2" too: its id is random hex)
        marks = [ln[0] for ln in messages.splitlines() if re.match(r"[ >] \d{4}-\d{2}-\d{2} ", ln)]
        assert marks == [" "] * (len(report["texts"]) - 1) + [">"]
        positions = [messages.index(visible(t)) for t in report["texts"]]
        assert positions == sorted(positions)
        for field in ("category", "status", "created", "reporter", "sender", "comment"):
            assert f"  {field}" in text
        assert report["reporter"] in text and report["sender"] in text
        assert local_time(shown["created_ms"]) in text
        for m in shown["messages"]["messages"]:
            assert local_time(m["delivered_ms"]) in text and local_time(m["sent_at_ms"]) in text
            assert m["delivered_iso"] == iso_time(m["delivered_ms"])
            assert m["sent_at_iso"] == iso_time(m["sent_at_ms"])
        assert shown["created_iso"] == iso_time(shown["created_ms"])
        if report["attachment"]:
            assert f"{report['attachment']} (SHA-256 " in text and "available, " in text
        else:
            assert "attachments: none revealed" in text
        assert "{" not in text  # not JSON


def test_reports_list_table_and_json(world: World) -> None:
    table = run_admin(world.server, "reports", "list", token=world.moderator)
    assert_shown_safely(table, [r["comment"] for r in world.reports])
    listed = json.loads(run_admin(world.server, "reports", "list", "--json", token=world.moderator))
    for r in listed["reports"]:
        assert r["created_iso"] == iso_time(r["created_ms"])
        assert local_time(r["created_ms"]) in table


def test_resolve_prints_a_sentence_and_the_audit_log_shows_names_and_notes_literally(
    world: World,
) -> None:
    report = world.reports[0]
    note = NO_NUL[2] + " " + NO_NUL[3]
    said = run_admin(
        world.server,
        "reports",
        "resolve",
        report["id"],
        "--action",
        "warn",
        "--note",
        note,
        token=world.moderator,
    )
    assert said.strip() == f"Report {report['id']} resolved: account {report['sender']} warned."
    shown = run_admin(world.server, "reports", "show", report["id"], token=world.moderator)
    assert_shown_safely(shown, [note])
    for remote in (True, False):
        audit = run_admin(world.server, "audit", "list", token=world.legal, remote=remote)
        assert_shown_safely(audit, [*world.staff_names, note])
        assert "chain intact" in audit
        entries = json.loads(
            run_admin(world.server, "audit", "list", "--json", token=world.legal, remote=remote)
        )["entries"]
        assert entries[-1]["action"] == "audit.list"  # the text listing, just before
        for e in entries[:-1]:
            assert e["at_iso"] == iso_time(e["at_ms"]) and local_time(e["at_ms"]) in audit


def test_legal_show_and_authority_names_are_literal_and_the_html_page_is_escaped(
    world: World, tmp_path: Path
) -> None:
    name = NO_NUL[10]
    added = run_admin(
        world.server,
        "authority",
        "add",
        name,
        "--jurisdiction",
        "DE",
        "--public-key",
        str(_public_key(tmp_path)),
        token=world.legal,
    )
    assert_shown_safely(added, [name])
    assert added.startswith("Added the authority ")
    fields = {
        "order_id": NO_NUL[0],
        "authority": NO_NUL[3],  # unknown: refused, but recorded with its fields
        "jurisdiction": "\x1b[",
        "case_reference": NO_NUL[4],
        "legal_basis": NO_NUL[6] + " " + NO_NUL[7],
        "offence_category": HTML_HOSTILE,
        "target": NO_NUL[9],
        "time_range": {"from": NO_NUL[8], "to": "2099-01-01T00:00:00Z"},
        "requested_data": ["ip_addresses", NO_NUL[11]],
        "issued_at": "2026-01-01T00:00:00Z",
        "expires_at": "2099-01-01T00:00:00Z",
    }
    signed = tmp_path / "signed.json"
    signed.write_text(json.dumps({"order": fields, "signature": "AA=="}))
    submitted = json.loads(
        run_admin(world.server, "legal", "submit", str(signed), "--json", token=world.legal)
    )
    assert submitted["status"] == "refused"
    for remote in (True, False):
        text = run_admin(
            world.server, "legal", "show", submitted["id"], token=world.legal, remote=remote
        )
        strings = [v for v in fields.values() if isinstance(v, str)]
        assert_shown_safely(text, [*strings, NO_NUL[8], NO_NUL[11]])
        as_json = json.loads(
            run_admin(
                world.server,
                "legal",
                "show",
                submitted["id"],
                "--json",
                token=world.legal,
                remote=remote,
            )
        )
        assert as_json["created_iso"] == iso_time(as_json["created_ms"])
        assert local_time(as_json["created_ms"]) in text
    audit = run_admin(world.server, "audit", "list", token=world.legal)
    assert_shown_safely(audit, [name])
    page = httpx.get(world.server.url + "/transparency").text
    _assert_html_safe(page, ["\x1b[", HTML_HOSTILE])


def _public_key(tmp_path: Path) -> Path:
    from parley.crypto.primitives import SigningKey

    key = SigningKey.generate(secrets.token_bytes)
    path = tmp_path / "court.pub"
    path.write_text(b64e(key.public))
    return path


def _assert_html_safe(page: str, texts: list[str]) -> None:
    assert_shown_safely(page, [])  # no raw control character
    assert "<script>" not in page
    for text in texts:
        assert html_text(text) in page, html_text(text)


def test_the_report_page_escapes_every_value_a_server_sends() -> None:
    """``parley-admin --html`` renders what a (possibly hostile) server sent."""
    row = {k: 1 for k in ("requests", "granted", "partly_granted", "refused", "pending")}
    hostile = {
        "quarter": HTML_HOSTILE,
        "log_size": "<b>1</b>",
        "log_root": "\u202eevil",
        "totals": {**row, "accounts": "<i>2</i>", "replays": "\x1b[2J"},
        "by_country": {"<s": {**row, "accounts": "<u>"}},
        "by_category": {"\x9b31m": {**row, "accounts": 0, "replays": "<q>"}},
    }
    _assert_html_safe(
        render_html(hostile),
        [HTML_HOSTILE, "<b>1</b>", "\u202eevil", "<i>2</i>", "\x1b[2J", "<s", "<u>", "\x9b31m"],
    )
