"""Attacks on abuse reports, each against a real server: a shuffled or padded
context, a report filed twice or flooded across a restart, the server used as
an oracle for leaked transcripts, an attachment that does not open, a context
too large for the body limit, and a group admin silencing a victim by
removing it."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.client.api import b64e
from parley.client.messenger import Messenger
from parley.errors import ServerError
from parley.protocol import attachments as attachment_crypto
from parley.protocol.franking import Opening
from parley.protocol.wire import MAX_CONTROL, MAX_TEXT, AttachmentPointer

from .conftest import register
from .server import ServerProcess
from .test_reports import _inbox, _report, add_staff, moderator_view, reveal


async def _post_report(
    server: ServerProcess, who: Messenger, body: dict[str, Any]
) -> httpx.Response:
    """The raw answer to ``POST /v1/reports`` (status, headers and bytes)."""
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(
            f"{server.url}/v1/reports",
            json=body,
            headers={"authorization": f"Bearer {who.api.credential}"},
        )


def _body(messages: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {"category": "fraud", "comment": "", "messages": messages, "attachments": [], **more}


async def _received(sender: Messenger, receiver: Messenger, texts: list[str]) -> list[Any]:
    """Send ``texts`` one by one (distinct delivery times) and return them as received."""
    for text in texts:
        await sender.send_text(receiver.account_id, text)
        await asyncio.sleep(0.005)
    got = await _inbox(receiver)
    assert [m.content.text for m in got] == texts
    return got


def _forged(like: dict[str, Any], text: str) -> dict[str, Any]:
    """A self-consistent fake: a real opening of made-up text (its commitment
    recomputed), the claimed sender, chat and time, and a made-up server tag."""
    opening = Opening(
        secrets.token_bytes(32),
        like["sender"],
        like["conversation"],
        like["sent_at_ms"],
        text,
        (),
        b"",
    )
    return {
        **like,
        "franking_key": b64e(opening.franking_key),
        "text": text,
        "attachment_digests": [],
        "control": "",
        "commitment": b64e(opening.commitment()),
        "tag": b64e(secrets.token_bytes(32)),
    }


# -- item 4: a report is a set of distinct messages, in delivery order ---------------------------


async def test_shuffled_or_repeated_context_is_refused(sqlite_server: ServerProcess) -> None:
    server = sqlite_server
    alice, bob = await register(server), await register(server)
    m1, m2, m3 = [reveal(m, bob) for m in await _received(alice, bob, ["one", "two", "three"])]
    refused = {
        "the reported message as its own context": [m3, m3],
        "a context message twice": [m1, m1, m3],
        "the same commitment under another tag": [{**m2, "tag": b64e(secrets.token_bytes(32))}, m2],
        "shuffled context": [m2, m1, m3],
        "reported message older than its context": [m3, m1],
    }
    for name, messages in refused.items():
        response = await _post_report(server, bob, _body(messages))
        assert response.status_code == 400, (name, response.text)
        assert response.json()["error"]["code"] == "report_invalid", name
    report_id = await _report(bob, [m1, m2, m3])
    moderator = add_staff(server, "mo", "moderator")
    shown = moderator_view(server, moderator, report_id)["messages"]["messages"]
    assert [(m["text"], m["reported"], m["delivered_ms"]) for m in shown] == [
        ("one", False, m1["server_ms"]),
        ("two", False, m2["server_ms"]),
        ("three", True, m3["server_ms"]),
    ]
    assert all(
        m.keys()
        == {"sender", "text", "sent_at_ms", "delivered_ms", "attachment_digests", "reported"}
        for m in shown
    )
    assert [m["sent_at_ms"] for m in shown] == [m["sent_at_ms"] for m in (m1, m2, m3)]


# -- item 5: the same report twice, and flooding across a restart ---------------------------------


async def test_same_message_reported_twice_returns_the_existing_report(
    server: ServerProcess,
) -> None:
    alice, bob = await register(server), await register(server)
    earlier, reported = [reveal(m, bob) for m in await _received(alice, bob, ["x", "spam"])]
    first = await bob.api.call("POST", "/v1/reports", _body([reported]))
    again = await bob.api.call("POST", "/v1/reports", _body([reported], category="spam"))
    with_context = await bob.api.call("POST", "/v1/reports", _body([earlier, reported]))
    assert again["id"] == with_context["id"] == first["id"]
    assert (first["existing"], again["existing"], with_context["existing"]) == (False, True, True)
    moderator = add_staff(server, "mo", "moderator")
    listed = httpx.get(
        f"{server.url}/v1/admin/reports", headers={"authorization": f"Bearer {moderator}"}
    ).json()["reports"]
    assert [r["id"] for r in listed] == [first["id"]]
    other = await bob.api.call("POST", "/v1/reports", _body([earlier]))  # another message
    assert other["id"] != first["id"] and other["existing"] is False


async def test_report_flood_limit_survives_a_restart(server: ServerProcess) -> None:
    alice, bob = await register(server), await register(server)
    got = [reveal(m, bob) for m in await _received(alice, bob, [f"spam {i}" for i in range(11)])]
    for m in got[:10]:
        await _report(bob, [m])
    flood = await _post_report(server, bob, _body([got[10]]))
    assert flood.status_code == 429 and 1 <= int(flood.headers["retry-after"]) <= 3600
    server.stop()
    server.start()  # the limit is counted from the reports table, so it survives
    after = await _post_report(server, bob, _body([got[10]]))
    assert after.status_code == 429, after.text
    assert after.json()["error"]["code"] == "rate_limited"
    repeat = await _post_report(server, bob, _body([got[3]]))  # an existing one is still answered
    assert repeat.status_code == 200 and repeat.json()["existing"] is True


# -- item 6: no verification oracle for outsiders --------------------------------------------------


async def test_outsider_cannot_use_reports_as_a_verification_oracle(
    sqlite_server: ServerProcess,
) -> None:
    """Carol holds a leaked transcript of Alice and Bob's chat and wants to know if
    it is real. The server answers her the same, byte for byte, for the genuine
    transcript and for a self-consistent fake, in a 1:1 chat and in a group."""
    server = sqlite_server
    alice, bob, carol = [await register(server) for _ in range(3)]
    (leaked,) = [reveal(m, bob) for m in await _received(alice, bob, ["leaked"])]
    gid = await alice.create_group([bob.account_id])
    await _inbox(bob)
    await alice.send_group(gid, "group secret")
    (group_leak,) = [reveal(m, bob) for m in await _inbox(bob)]
    for genuine in (leaked, group_leak):
        answers = [
            await _post_report(server, carol, _body([transcript]))
            for transcript in (genuine, _forged(genuine, "a fake"))
        ]
        assert {a.status_code for a in answers} == {403}
        assert answers[0].content == answers[1].content
    # Two chats in one report: refused as such before anything is verified.
    mixed = [
        await _post_report(server, carol, _body([leaked, other]))
        for other in (group_leak, _forged(group_leak, "fake"))
    ]
    assert {m.status_code for m in mixed} == {400} and mixed[0].content == mixed[1].content
    assert "another chat" in mixed[0].json()["error"]["message"]


# -- item 7b: an attachment that does not open keeps the text reportable -------------------------


async def test_attachment_that_does_not_open_does_not_hide_the_text(
    sqlite_server: ServerProcess,
) -> None:
    server = sqlite_server
    alice, bob = await register(server), await register(server)
    photo = attachment_crypto.encrypt(b"the photo", secrets.token_bytes)
    other = attachment_crypto.encrypt(b"another file", secrets.token_bytes)
    ids = []
    for a in (photo, other):
        ids.append((await alice.api.call("POST", "/v1/attachments", content=a.blob))["id"])
    pointers = tuple(
        AttachmentPointer(i, a.key, a.digest, len(a.blob), "image/png", "p.png")
        for i, a in zip(ids, (photo, other), strict=True)
    )
    await alice.send_content(bob.account_id, alice.content("threat with pictures", pointers))
    (msg,) = await _inbox(bob)
    claims = [
        {"id": ids[0], "key": b64e(secrets.token_bytes(32)), "digest": b64e(photo.digest)},
        {"id": ids[0], "key": b64e(other.key), "digest": b64e(other.digest)},  # another blob's id
    ]
    report_id = await _report(bob, [reveal(msg, bob)], claims)
    shown = moderator_view(server, add_staff(server, "mo", "moderator"), report_id)["messages"]
    assert shown["messages"][0]["text"] == "threat with pictures"
    assert [(a["available"], a["reason"]) for a in shown["attachments"]] == [
        (False, "the key does not open the franked attachment"),
        (False, "the blob under this id is not the franked attachment"),
    ]
    unfranked = {**claims[0], "digest": b64e(secrets.token_bytes(32))}
    with pytest.raises(ServerError) as err:  # still refused: not the reported message's
        await _report(bob, [reveal(msg, bob)], [unfranked])
    assert (err.value.status, err.value.code) == (400, "report_invalid")


# -- item 7d: the largest report a client may send fits the body limit ----------------------------


async def test_context_of_control_characters_at_the_size_limit_is_reportable(
    sqlite_server: ServerProcess,
) -> None:
    """Six messages of MAX_TEXT control characters (JSON: 6 bytes each) and a full
    control field, reported with five as context: about 2.9 MB of JSON, over the
    2 MiB default body limit."""
    server = sqlite_server
    alice, bob = await register(server), await register(server)
    for i in range(6):
        text = chr(1 + i) * MAX_TEXT
        await alice.send_content(bob.account_id, alice.content(text, control=b"\x02" * MAX_CONTROL))
        await asyncio.sleep(0.005)
    got = await _inbox(bob)
    assert [len(m.content.text.encode()) for m in got] == [MAX_TEXT] * 6
    body = _body([reveal(m, bob) for m in got], comment="\x07" * 1000)
    response = await _post_report(server, bob, body)
    assert response.status_code == 200, response.text[:300]
    assert int(response.request.headers["content-length"]) > 2 * 1024 * 1024


# -- item 7e: a group admin cannot silence a victim by removing it ---------------------------------


async def test_admin_removing_the_victim_cannot_block_its_report(server: ServerProcess) -> None:
    alice, bob, carol, dave = [await register(server) for _ in range(4)]
    gid = await alice.create_group([bob.account_id, carol.account_id])
    await _inbox(bob)
    await alice.send_group(gid, "abuse")
    (abuse,) = [reveal(m, bob) for m in await _inbox(bob)]
    await alice.remove_member(gid, bob.account_id)
    report_id = await _report(bob, [abuse])  # a member when it was delivered
    shown = moderator_view(server, add_staff(server, "mo", "moderator"), report_id)
    assert (shown["group"], shown["sender_account"]) == (gid, alice.account_id)
    await alice.api.call("POST", f"/v1/groups/{gid}/members", {"account_id": dave.account_id})
    with pytest.raises(ServerError) as err:  # a member only after it was delivered
        await _report(dave, [abuse])
    assert err.value.status == 403


async def test_removed_members_span_is_kept_90_days_then_pruned(tmp_path: Path) -> None:
    """The span of a removed member is what lets it report; the maintenance loop
    keeps it for 90 days after the removal, then forgets it."""
    server = ServerProcess(
        tmp_path,
        f"sqlite:///{tmp_path / 'data' / 'parley.db'}",
        extra=["--maintenance-interval", "0.1"],
    )
    server.start()
    db = server.data_dir / "parley.db"

    def spans() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("select count(*) from group_departures").fetchone()[0])

    def removed_days_ago(days: int) -> None:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "update group_departures set left_ms = ?",
                (int(time.time() * 1000) - days * 86_400_000,),
            )

    try:
        alice, bob = await register(server), await register(server)
        gid = await alice.create_group([bob.account_id])
        await alice.remove_member(gid, bob.account_id)
        assert spans() == 1
        removed_days_ago(89)
        await asyncio.sleep(1)  # ten maintenance rounds
        assert spans() == 1
        removed_days_ago(91)
        for _ in range(50):
            if spans() == 0:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("a span ended 91 days ago was not pruned")
    finally:
        server.stop()
