"""1:1 and group delivery through the real server, online and offline, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from parley.client.api import ApiClient, b64e
from parley.client.messenger import Messenger
from parley.errors import ServerError

from .conftest import register
from .server import ServerProcess


async def test_online_and_offline_delivery_in_order(
    server: ServerProcess, users: list[Messenger]
) -> None:
    alice, bob, _ = users
    async with bob.api.websocket() as ws:
        assert await bob.receive(ws) == []  # queue_empty at once
        await alice.send_text(bob.account_id, "online hello")
        got = await bob.receive(ws, until_empty=False, timeout=3)
        assert [m.content.text for m in got] == ["online hello"]
        assert got[0].sender == alice.account_id
    for i in range(5):  # bob is offline now
        await alice.send_text(bob.account_id, f"offline {i}")
    async with bob.api.websocket() as ws:
        got = await bob.receive(ws)
    assert [m.content.text for m in got] == [f"offline {i}" for i in range(5)]
    # and back
    await bob.send_text(alice.account_id, "reply")
    async with alice.api.websocket() as ws:
        assert [m.content.text for m in await alice.receive(ws)] == ["reply"]


async def test_unacknowledged_messages_are_redelivered_after_a_dropped_connection(
    server: ServerProcess, users: list[Messenger]
) -> None:
    alice, bob, _ = users
    await alice.send_text(bob.account_id, "must survive a drop")
    async with bob.api.websocket() as ws:
        frame = json.loads(await ws.recv())
        assert frame["type"] == "message"  # received, never acknowledged
    async with bob.api.websocket() as ws:
        again = json.loads(await ws.recv())
        assert again["id"] == frame["id"]
        await ApiClient.ack(ws, [again["id"]])
        assert json.loads(await ws.recv())["type"] == "queue_empty"
    async with bob.api.websocket() as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "queue_empty"


async def test_retry_with_the_same_client_id_is_stored_once(
    server: ServerProcess, users: list[Messenger]
) -> None:
    alice, bob, _ = users
    first = await alice.send_text(bob.account_id, "once", client_id="retry-1")
    second = await alice.send_text(bob.account_id, "once", client_id="retry-1")
    assert first["duplicate"] is False and second["duplicate"] is True
    assert second["server_ms"] == first["server_ms"]
    async with bob.api.websocket() as ws:
        got = await bob.receive(ws)
    assert [m.content.text for m in got] == ["once"]


async def test_stale_device_list_is_refused_with_the_lists(
    server: ServerProcess, users: list[Messenger]
) -> None:
    alice, bob, _ = users
    with pytest.raises(ServerError) as err:
        await alice.api.call(
            "PUT", f"/v1/messages/{bob.account_id}", {"client_id": "x", "messages": []}
        )
    assert err.value.status == 409 and err.value.code == "stale_devices"
    assert err.value.details == {"missing_devices": [1], "extra_devices": []}
    with pytest.raises(ServerError) as err:
        await alice.api.call(
            "PUT",
            f"/v1/messages/{bob.account_id}",
            {
                "client_id": "y",
                "messages": [
                    {"device_id": 1, "envelope": b64e(b"x")},
                    {"device_id": 7, "envelope": b64e(b"x")},
                ],
            },
        )
    assert err.value.details == {"missing_devices": [], "extra_devices": [7]}


async def test_garbage_envelopes_are_refused(server: ServerProcess, users: list[Messenger]) -> None:
    alice, bob, _ = users
    for envelope in (b"", b"\x01\x01junk", b"\x09" * 100):
        with pytest.raises(ServerError) as err:
            await alice.api.call(
                "PUT",
                f"/v1/messages/{bob.account_id}",
                {"client_id": "g", "messages": [{"device_id": 1, "envelope": b64e(envelope)}]},
            )
        assert err.value.status == 400 and err.value.code == "malformed_envelope"


async def test_group_fan_out_membership_and_removal(
    server: ServerProcess, users: list[Messenger]
) -> None:
    alice, bob, carol = users
    gid = await alice.create_group([bob.account_id, carol.account_id])
    for member in (bob, carol):  # receive alice's sender key over the 1:1 session
        async with member.api.websocket() as ws:
            await member.receive(ws)
    await alice.send_group(gid, "hello group")
    for member in (bob, carol):
        async with member.api.websocket() as ws:
            got = await member.receive(ws)
        assert [(m.content.text, m.group) for m in got] == [("hello group", gid)]
    outsider = await register(server)
    with pytest.raises(ServerError) as err:
        await outsider.send_group(
            gid, "let me in"
        ) if gid in outsider.state.groups else await outsider.api.call(
            "PUT", f"/v1/groups/{gid}/messages", {"client_id": "o", "envelope": b64e(b"x")}
        )
    assert err.value.status in (403, 404)
    await alice.remove_member(gid, carol.account_id)
    async with bob.api.websocket() as ws:
        await bob.receive(ws)  # the rotated sender key
    await alice.send_group(gid, "after carol left")
    async with bob.api.websocket() as ws:
        assert [m.content.text for m in await bob.receive(ws)] == ["after carol left"]
    async with carol.api.websocket() as ws:
        assert await carol.receive(ws) == []  # nothing at all reaches a removed member
    with pytest.raises(ServerError) as err:
        await carol.api.call(
            "PUT", f"/v1/groups/{gid}/messages", {"client_id": "c", "envelope": b64e(b"x")}
        )
    assert err.value.status in (403, 404)
    await outsider.api.close()


async def test_one_time_prekeys_are_handed_out_exactly_once_under_concurrency(
    server: ServerProcess,
) -> None:
    owner = await register(server)  # uploaded 20 of each kind
    # 5 fetches per requester and contact (the drain limit), so ten requesters
    fetchers = [await register(server) for _ in range(10)]

    async def fetch(m: Messenger) -> tuple[int | None, int, bool]:
        bundles = await m.api.call("GET", f"/v1/keys/{owner.account_id}")
        d = bundles["devices"][0]
        opk = d["one_time_prekey"]
        return (
            None if opk is None else opk["key_id"],
            d["kem_prekey"]["key_id"],
            d["kem_prekey"]["last_resort"],
        )

    results = await asyncio.gather(*[fetch(fetchers[i % 10]) for i in range(30)])
    one_time = [r[0] for r in results if r[0] is not None]
    kem = [r[1] for r in results if not r[2]]
    assert len(one_time) == 20 and len(set(one_time)) == 20
    assert len(kem) == 20 and len(set(kem)) == 20
    assert sum(1 for r in results if r[2]) == 10  # then the last-resort key
    status = await owner.api.call("GET", "/v1/keys/status")
    assert status == {"one_time_prekeys": 0, "kem_prekeys": 0, "low": True}
    for m in [owner, *fetchers]:
        await m.api.close()


async def test_prekeys_low_is_pushed_to_the_owner(server: ServerProcess) -> None:
    owner = await register(server)
    others = [await register(server) for _ in range(3)]
    async with owner.api.websocket() as ws:
        await owner.receive(ws)
        for i in range(12):
            await others[i % 3].api.call("GET", f"/v1/keys/{owner.account_id}")
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert frame["type"] == "prekeys_low" and frame["one_time_prekeys"] < 10
    for m in [owner, *others]:
        await m.api.close()


async def test_each_delivered_message_carries_a_valid_server_franking_tag(
    sqlite_server: ServerProcess,
) -> None:
    import sqlite3

    from parley.protocol import franking
    from parley.protocol.franking import Opening

    alice, bob = await register(sqlite_server), await register(sqlite_server)
    await alice.send_text(bob.account_id, "tagged")
    gid = await alice.create_group([bob.account_id])
    await alice.send_group(gid, "tagged in a group")
    async with bob.api.websocket() as ws:
        got = [m for m in await bob.receive(ws) if m.content.text]
    with sqlite3.connect(sqlite_server.data_dir / "parley.db") as conn:
        key = conn.execute("select value from server_secrets where name = 'franking'").fetchone()[0]
    for m in got:
        conversation = (
            franking.group_conversation(m.group)
            if m.group
            else franking.direct_conversation(m.sender, bob.account_id)
        )
        opening = Opening.of(m.content, m.sender, conversation)
        franking.verify_report(key, opening, m.commitment, m.server_ms, m.franking_tag)
    assert sorted(m.content.text for m in got) == ["tagged", "tagged in a group"]


async def test_sending_over_the_websocket_answers_like_http(
    server: ServerProcess, users: list[Messenger]
) -> None:
    from parley.protocol.wire import Content

    alice, bob, _ = users
    await alice.send_text(bob.account_id, "http first")  # sets up the session
    content = Content(alice.state.rng(32), 1, "over the socket")
    envelope = b64e(alice.state.encrypt(bob.account_id, 1, content))
    async with alice.api.websocket() as ws:
        await alice.receive(ws)
        frame = {
            "type": "send",
            "request_id": 7,
            "to": bob.account_id,
            "client_id": "ws-1",
            "messages": [{"device_id": 1, "envelope": envelope}],
        }
        await ws.send(json.dumps(frame))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (
            answer["type"] == "response" and answer["request_id"] == 7 and answer["status"] == 200
        )
        assert answer["body"]["duplicate"] is False
        await ws.send(json.dumps(frame))  # a retry is a duplicate, as over HTTP
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["body"]["duplicate"] is True
        await ws.send(json.dumps({**frame, "request_id": "x", "messages": []}))
        stale = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert stale["status"] == 409 and stale["body"]["error"]["code"] == "stale_devices"
        await ws.send(
            json.dumps(
                {
                    "type": "send_group",
                    "request_id": 9,
                    "group": "0" * 32,
                    "client_id": "g",
                    "envelope": b64e(b"x"),
                }
            )
        )
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["status"] in (400, 404)
    async with bob.api.websocket() as ws:
        assert [m.content.text for m in await bob.receive(ws)] == ["http first", "over the socket"]


async def test_a_device_past_its_send_rate_is_refused_and_other_devices_are_not(
    tmp_path: Path,
) -> None:
    # 0.4 a second: bursts of 2, then one more every 2.5 s.
    server = ServerProcess(
        tmp_path, f"sqlite:///{tmp_path / 'parley.db'}", extra=["--sends-per-device-second", "0.4"]
    )
    server.start()
    try:
        alice, bob = await register(server), await register(server)
        await alice.send_text(bob.account_id, "one")
        await alice.send_text(bob.account_id, "two")
        with pytest.raises(ServerError) as err:
            await alice.send_text(bob.account_id, "three")
        assert err.value.status == 429 and err.value.code == "rate_limited"
        await bob.send_text(alice.account_id, "bob's own bucket")
        async with bob.api.websocket() as ws:
            got = await bob.receive(ws)
        assert [m.content.text for m in got] == ["one", "two"]
        for m in (alice, bob):
            await m.api.close()
    finally:
        server.stop()
