"""Verifiable reports and moderation through the real server."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sqlite3
import subprocess
import sys
from typing import Any

import httpx
import pytest
import websockets

from parley.client.api import b64e
from parley.client.device import Received
from parley.client.messenger import Messenger
from parley.crypto.primitives import hkdf_expand, sha256
from parley.errors import DecryptionError, ServerError
from parley.protocol import attachments as attachment_crypto
from parley.protocol.franking import direct_conversation, group_conversation
from parley.protocol.wire import AttachmentPointer, Content
from tests.protocol.test_invisible_salamander import salamander

from .conftest import register
from .server import ServerProcess


def admin(
    server: ServerProcess, *args: str, token: str | None = None, remote: bool = True
) -> subprocess.CompletedProcess[str]:
    where = (
        ["--server", server.url]
        if remote
        else ["--data-dir", str(server.data_dir), "--database-url", server.database_url]
    )
    cmd = [
        sys.executable,
        "-m",
        "parley.cli.admin",
        *where,
        *(["--token", token] if token else []),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def add_staff(server: ServerProcess, name: str, role: str) -> str:
    result = admin(server, "staff", "add", name, "--role", role, remote=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def moderator_view(server: ServerProcess, token: str, report_id: str) -> dict[str, Any]:
    """A report as staff see it (``GET /v1/admin/reports/{id}``)."""
    response = httpx.get(
        f"{server.url}/v1/admin/reports/{report_id}",
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def reveal(m: Received, reporter: Messenger) -> dict[str, Any]:
    conversation = (
        group_conversation(m.group)
        if m.group
        else direct_conversation(m.sender, reporter.account_id)
    )
    return {
        "franking_key": b64e(m.content.franking_key),
        "sender": m.sender,
        "conversation": conversation,
        "sent_at_ms": m.content.sent_at_ms,
        "text": m.content.text,
        "attachment_digests": [b64e(a.digest) for a in m.content.attachments],
        "control": b64e(m.content.control),
        "commitment": b64e(m.commitment),
        "server_ms": m.server_ms,
        "tag": b64e(m.franking_tag),
    }


async def _report(
    reporter: Messenger,
    messages: list[dict[str, Any]],
    attachments: list[dict[str, str]] | None = None,
    category: str = "fraud",
) -> str:
    """Report: ``messages`` in delivery order, the reported message last."""
    result = await reporter.api.call(
        "POST",
        "/v1/reports",
        {
            "category": category,
            "comment": "",
            "messages": messages,
            "attachments": attachments or [],
        },
    )
    return str(result["id"])


async def _inbox(m: Messenger) -> list[Received]:
    async with m.api.websocket() as ws:
        return [r for r in await m.receive(ws) if r.content.text or r.content.attachments]


async def test_direct_report_with_context_is_verified_and_moderated(server: ServerProcess) -> None:
    alice, bob = await register(server), await register(server)
    await alice.send_text(bob.account_id, "earlier message")
    await alice.send_text(bob.account_id, "the illegal one")
    got = await _inbox(bob)
    report_id = await _report(bob, [reveal(got[0], bob), reveal(got[1], bob)])
    moderator = add_staff(server, "mo", "moderator")
    listed = json.loads(admin(server, "reports", "list", "--json", token=moderator).stdout)[
        "reports"
    ]
    assert [r["id"] for r in listed] == [report_id]
    shown = json.loads(
        admin(server, "reports", "show", report_id, "--json", token=moderator).stdout
    )
    assert [(m["text"], m["reported"]) for m in shown["messages"]["messages"]] == [
        ("earlier message", False),
        ("the illegal one", True),
    ]
    assert shown["sender_account"] == alice.account_id and shown["group"] is None
    local = json.loads(
        admin(server, "reports", "show", report_id, "--json", token=moderator, remote=False).stdout
    )
    assert local["id"] == report_id
    done = admin(
        server,
        "reports",
        "resolve",
        report_id,
        "--action",
        "suspend",
        "--note",
        "n",
        token=moderator,
    )
    assert done.returncode == 0, done.stderr
    with pytest.raises(ServerError) as err:  # takes effect at once
        await alice.send_text(bob.account_id, "more")
    assert (err.value.status, err.value.code) == (403, "account_suspended")
    assert [n["outcome"] for n in (await bob.api.call("GET", "/v1/notices"))["notices"]] == [
        "action taken"
    ]
    assert [n["action"] for n in (await alice.api.call("GET", "/v1/notices"))["notices"]] == [
        "suspend"
    ]
    for m in (alice, bob):
        await m.api.close()


async def test_group_report_identifies_group_and_sender_and_sender_can_be_removed(
    server: ServerProcess,
) -> None:
    alice, bob, carol = [await register(server) for _ in range(3)]
    gid = await alice.create_group([bob.account_id, carol.account_id])
    for m in (bob, carol):
        await _inbox(m)
    await alice.send_group(gid, "group abuse")
    got = await _inbox(bob)
    report_id = await _report(bob, [reveal(got[0], bob)], category="violence")
    moderator = add_staff(server, "mo", "moderator")
    shown = json.loads(
        admin(server, "reports", "show", report_id, "--json", token=moderator).stdout
    )
    assert (shown["group"], shown["sender_account"]) == (gid, alice.account_id)
    removed = admin(server, "reports", "remove-from-group", report_id, token=moderator)
    assert removed.returncode == 0, removed.stderr
    members = (await bob.api.call("GET", f"/v1/groups/{gid}"))["members"]
    assert alice.account_id not in members
    with pytest.raises(ServerError):
        await alice.api.call(
            "PUT", f"/v1/groups/{gid}/messages", {"client_id": "x", "envelope": b64e(b"x")}
        )


async def test_forged_reports_are_refused(server: ServerProcess) -> None:
    alice, bob, carol = [await register(server) for _ in range(3)]
    await alice.send_text(bob.account_id, "first genuine")
    await alice.send_text(bob.account_id, "second genuine")
    first, second = await _inbox(bob)
    genuine = reveal(second, bob)
    other = reveal(first, bob)
    forgeries = {
        "altered text": {**genuine, "text": "something worse"},
        "altered sender": {**genuine, "sender": carol.account_id},
        "altered conversation": {  # one the reporter is in: a party, so it is verified
            **genuine,
            "conversation": direct_conversation(bob.account_id, carol.account_id),
        },
        "altered time": {**genuine, "server_ms": genuine["server_ms"] + 1},
        "tag from another message": {**genuine, "tag": other["tag"]},
        "opening from another message": {
            **other,
            "commitment": genuine["commitment"],
            "tag": genuine["tag"],
            "server_ms": genuine["server_ms"],
        },
        "altered franking key": {**genuine, "franking_key": b64e(secrets.token_bytes(32))},
    }
    for name, forged in forgeries.items():
        with pytest.raises(ServerError) as err:
            await _report(bob, [forged])
        assert (err.value.status, err.value.code) == (400, "report_invalid"), name
    with pytest.raises(ServerError) as err:  # not a party to the chat
        await _report(carol, [genuine])
    assert err.value.status == 403
    assert await _report(bob, [genuine])  # the genuine one still goes through


async def test_invisible_salamander_attachment_cannot_be_reported_as_another_image(
    sqlite_server: ServerProcess,
) -> None:
    """The sender crafts one blob whose GCM layer opens under the derived keys of
    K1 and K2 to two different 'images'. The key commitment admits only K1: the
    receiver given K2 gets nothing; a report of that message is accepted for its
    text, and shows the moderator the attachment as not opening (never the second
    image); the report with K1 shows the moderator exactly the image the receiver saw."""
    alice, bob = await register(sqlite_server), await register(sqlite_server)
    k1, k2, nonce = secrets.token_bytes(32), secrets.token_bytes(32), secrets.token_bytes(12)
    enc1 = hkdf_expand(k1, b"parley/committing-aead/v1/enc", 32)
    enc2 = hkdf_expand(k2, b"parley/committing-aead/v1/enc", 32)
    blob = (
        hkdf_expand(k1, b"parley/committing-aead/v1/commit", 32)
        + nonce
        + salamander(enc1, enc2, nonce, b"parley/attachment/v1")
    )
    digest = sha256(blob)
    up = await alice.api.call("POST", "/v1/attachments", content=blob)
    for key, text in ((k2, "with the other key"), (k1, "innocent picture")):
        pointer = AttachmentPointer(up["id"], key, digest, len(blob), "image/png", "pic.png")
        await alice.send_content(
            bob.account_id, Content(secrets.token_bytes(32), 1, text, (pointer,))
        )
    wrong, right = await _inbox(bob)
    with pytest.raises(DecryptionError):  # the receiver cannot open it with K2
        attachment_crypto.decrypt(wrong.content.attachments[0].key, digest, blob)
    seen = attachment_crypto.decrypt(k1, digest, blob)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    other_image = AESGCM(enc2).decrypt(nonce, blob[44:], b"parley/attachment/v1")
    assert other_image != seen  # the GCM layer alone really opens to a second image
    claim = {"id": up["id"], "key": b64e(k2), "digest": b64e(digest)}
    moderator = add_staff(sqlite_server, "mo", "moderator")
    with_k2 = await _report(bob, [reveal(wrong, bob)], [claim])
    shown = moderator_view(sqlite_server, moderator, with_k2)
    assert shown["messages"]["messages"][0]["text"] == "with the other key"
    (attachment,) = shown["messages"]["attachments"]
    assert attachment["available"] is False and "does not open" in attachment["reason"]
    assert "data" not in attachment and base64.b64encode(other_image).decode() not in json.dumps(
        shown
    )
    report_id = await _report(bob, [reveal(right, bob)], [{**claim, "key": b64e(k1)}])
    shown = moderator_view(sqlite_server, moderator, report_id)
    assert base64.b64decode(shown["messages"]["attachments"][0]["data"]) == seen


async def test_roles_are_enforced_and_every_staff_action_is_audited(
    sqlite_server: ServerProcess,
) -> None:
    server = sqlite_server
    alice, bob = await register(server), await register(server)
    await alice.send_text(bob.account_id, "bad")
    (msg,) = await _inbox(bob)
    report_id = await _report(bob, [reveal(msg, bob)])
    moderator, auditor, legal = [
        add_staff(server, n, r)
        for n, r in (("mo", "moderator"), ("au", "auditor"), ("le", "legal"))
    ]
    assert (
        admin(server, "reports", "list", "--json", token=auditor).returncode == 0
    )  # auditors read
    denied = admin(server, "reports", "resolve", report_id, "--action", "ban", token=auditor)
    assert denied.returncode == 1 and "cannot act" in denied.stderr
    assert admin(server, "reports", "show", report_id, token=legal).returncode == 1  # not their job
    assert admin(server, "reports", "list", token="nobody.nothing").returncode == 1
    assert (
        admin(server, "staff", "add", "x", "--role", "moderator", token=moderator).returncode == 1
    )  # remote: never
    assert (
        admin(
            server, "reports", "resolve", report_id, "--action", "ban", token=moderator
        ).returncode
        == 0
    )
    with pytest.raises(ServerError) as err:  # banned: no login at all, at once
        await alice.api.call("GET", "/v1/accounts/me")
    assert err.value.code == "account_banned"
    audit = json.loads(admin(server, "audit", "list", "--json", token=auditor).stdout)
    actions = [(e["action"], e["actor"].split(":")[0]) for e in audit["entries"]]
    assert actions == [
        ("staff.add", "operator@local"),
        ("staff.add", "operator@local"),
        ("staff.add", "operator@local"),
        ("reports.list", "auditor"),
        ("denied", "auditor"),
        ("denied", "legal"),
        ("reports.resolve", "moderator"),
    ]
    assert audit["chain_intact"] is True
    with sqlite3.connect(
        server.data_dir / "parley.db"
    ) as conn:  # an edit anywhere breaks the chain
        conn.execute("update audit_log set target = 'tampered' where seq = 5")
    after = json.loads(admin(server, "audit", "list", "--json", token=auditor).stdout)
    assert after["chain_intact"] is False


async def test_restricted_account_cannot_grow_groups_and_ban_closes_sockets(
    sqlite_server: ServerProcess,
) -> None:
    server = sqlite_server
    alice, bob = await register(server), await register(server)
    await alice.send_text(bob.account_id, "x")
    (msg,) = await _inbox(bob)
    moderator = add_staff(server, "mo", "moderator")
    first = await _report(bob, [reveal(msg, bob)])
    assert (
        admin(
            server,
            "reports",
            "resolve",
            first,
            "--action",
            "restrict",
            token=moderator,
            remote=False,
        ).returncode
        == 0
    )
    await asyncio.sleep(1.5)  # a local action reaches the running server within a second
    with pytest.raises(ServerError) as err:
        await alice.api.call("POST", "/v1/groups", {"members": [bob.account_id]})
    assert err.value.code == "account_restricted"
    await alice.send_text(bob.account_id, "restricted accounts can still chat")
    (later,) = await _inbox(bob)
    second = await _report(bob, [reveal(later, bob)])
    async with alice.api.websocket() as ws:
        await alice.receive(ws)
        assert (
            admin(
                server, "reports", "resolve", second, "--action", "ban", token=moderator
            ).returncode
            == 0
        )
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
