"""Registration, devices, linking and attachments through the real server."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx
import pytest
import websockets

from parley.client.api import ApiClient, b64e, keys_json
from parley.client.device import DeviceState
from parley.client.kt import publish_device_list
from parley.client.messenger import Messenger
from parley.errors import ServerError
from parley.protocol.keys import IdentityKeyPair

from .conftest import new_phone, register
from .server import ServerProcess


async def test_registration_with_file_sms_and_bounded_attempts(
    sqlite_server: ServerProcess,
) -> None:
    phone = new_phone()
    api = ApiClient(sqlite_server.url)
    await api.request_code(phone)
    code = await sqlite_server.code_for(phone)
    state = DeviceState(IdentityKeyPair.generate(secrets.token_bytes), secrets.token_bytes)
    keys = keys_json(state.signed_prekey, state.kem_last_resort)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for attempt in range(5):
        with pytest.raises(ServerError) as err:
            await api.verify(phone, wrong, state.identity, keys)
        # the last allowed miss says so, and how to go on
        expected = "too_many_attempts" if attempt == 4 else "invalid_code"
        assert (err.value.status, err.value.code) == (400, expected)
    with pytest.raises(ServerError) as err:  # exhausted: even the right code is refused now
        await api.verify(phone, code, state.identity, keys)
    assert err.value.code == "no_code" and "ask for a new one" in err.value.message
    await api.request_code(phone)
    code = await sqlite_server.code_for(phone)
    result = await api.verify(phone, code, state.identity, keys)
    assert result["device_id"] == 1
    me = await api.call("GET", "/v1/accounts/me")
    assert me["phone"] == phone and me["devices"] == [1]
    with pytest.raises(ServerError):  # a code works once
        await api.verify(phone, code, state.identity, keys)
    await api.close()


async def test_answers_do_not_reveal_whether_a_number_is_registered(
    sqlite_server: ServerProcess,
) -> None:
    known = await register(sqlite_server)
    me = await known.api.call("GET", "/v1/accounts/me")
    async with httpx.AsyncClient(base_url=sqlite_server.url) as http:
        a = await http.post("/v1/registration/code", json={"phone": me["phone"]})
        b = await http.post("/v1/registration/code", json={"phone": new_phone()})
    assert (a.status_code, a.json()) == (b.status_code, b.json()) == (202, {"status": "sent"})
    await known.api.close()


async def test_code_requests_are_rate_limited_per_number(sqlite_server: ServerProcess) -> None:
    phone = new_phone()
    async with httpx.AsyncClient(base_url=sqlite_server.url) as http:
        answers = [
            await http.post("/v1/registration/code", json={"phone": phone}) for _ in range(4)
        ]
    assert [r.status_code for r in answers[:3]] == [202, 202, 202]
    assert answers[3].status_code == 429
    assert int(answers[3].headers["retry-after"]) > 0
    assert answers[3].json()["error"]["code"] == "rate_limited"


@pytest.mark.parametrize(
    "phone", ["12345", "+1", "+999123456789", "not a number", "+44 20 7946 0000 ext 1234567"]
)
async def test_invalid_numbers_are_refused(sqlite_server: ServerProcess, phone: str) -> None:
    async with httpx.AsyncClient(base_url=sqlite_server.url) as http:
        r = await http.post("/v1/registration/code", json={"phone": phone})
    assert r.status_code == 400 and r.json()["error"]["code"] in (
        "invalid_phone",
        "invalid_request",
    )


async def test_numbers_are_normalised_to_e164(sqlite_server: ServerProcess) -> None:
    m = await Messenger.register(
        sqlite_server.url,
        "+1 (415) 300-1234",
        lambda _p: sqlite_server.code_for("+14153001234"),
        secrets.token_bytes,
    )
    assert (await m.api.call("GET", "/v1/accounts/me"))["phone"] == "+14153001234"
    await m.api.close()


async def _link(server: ServerProcess, primary: Messenger) -> Messenger:
    """Link a device; the provisioning blob carries the identity (the client encrypts it)."""
    lookup = secrets.token_bytes(32)
    await primary.api.call(
        "POST",
        "/v1/devices/provisioning",
        {"lookup": b64e(lookup), "blob": b64e(primary.state.identity.private_bytes())},
    )
    api = ApiClient(server.url)
    identity = IdentityKeyPair.from_private_bytes(primary.state.identity.private_bytes())
    state = DeviceState(identity, secrets.token_bytes)
    ot, kem = state.new_one_time_keys(5)
    result = await api.link(lookup, keys_json(state.signed_prekey, state.kem_last_resort, ot, kem))
    state.account_id, state.device_id = result["account_id"], result["device_id"]
    # the new device signs the account's devices into its device list (key transparency)
    devices = (await api.call("GET", "/v1/devices"))["devices"]
    await publish_device_list(
        api, identity.signing, state.account_id, devices, time.time_ns() // 10**6
    )
    return Messenger(api, state)


async def test_linked_device_receives_and_unlinking_revokes_at_once(server: ServerProcess) -> None:
    alice, bob = await register(server), await register(server)
    bob2 = await _link(server, bob)
    assert bob2.account_id == bob.account_id and bob2.state.device_id == 2
    assert (await bob.api.call("GET", "/v1/devices"))["devices"] == [1, 2]
    await alice.send_text(bob.account_id, "to both devices")
    for device in (bob, bob2):
        async with device.api.websocket() as ws:
            assert [m.content.text for m in await device.receive(ws)] == ["to both devices"]
    async with bob2.api.websocket() as ws:
        await bob2.receive(ws)
        await bob.api.call("DELETE", "/v1/devices/2")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    with pytest.raises(ServerError) as err:
        await bob2.api.call("GET", "/v1/accounts/me")
    assert err.value.status == 401
    # alice's next message goes to bob's remaining device after one 409 round
    await alice.send_text(bob.account_id, "after unlink")
    async with bob.api.websocket() as ws:
        assert [m.content.text for m in await bob.receive(ws)] == ["after unlink"]
    for m in (alice, bob, bob2):
        await m.api.close()


async def test_at_most_five_linked_devices_and_only_the_primary_links(
    sqlite_server: ServerProcess,
) -> None:
    primary = await register(sqlite_server)
    linked = [await _link(sqlite_server, primary) for _ in range(5)]
    with pytest.raises(ServerError) as err:
        await _link(sqlite_server, primary)
    assert err.value.status == 403
    with pytest.raises(ServerError) as err:
        await linked[0].api.call(
            "POST", "/v1/devices/provisioning", {"lookup": b64e(b"k" * 32), "blob": b64e(b"x")}
        )
    assert err.value.status == 403
    with pytest.raises(ServerError) as err:  # a provisioning code works once
        await ApiClient(sqlite_server.url).link(b"\x00" * 32, {})
    assert err.value.status == 400


async def test_attachments_round_trip_with_limits(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path,
        f"sqlite:///{tmp_path / 'data' / 'parley.db'}",
        extra=["--max-attachment-mb", "0.01"],
    )
    server.start()
    try:
        m = await register(server)
        blob = secrets.token_bytes(5000)
        up = await m.api.call("POST", "/v1/attachments", content=blob)
        assert await m.api.call("GET", f"/v1/attachments/{up['id']}") == blob
        with pytest.raises(ServerError) as err:
            await m.api.call("POST", "/v1/attachments", content=b"x" * 20_000)
        assert (err.value.status, err.value.code) == (413, "payload_too_large")
        with pytest.raises(ServerError) as err:
            await m.api.call("GET", "/v1/attachments/" + "0" * 32)
        assert err.value.status == 404
        with pytest.raises(ServerError) as err:
            await ApiClient(server.url).call("GET", f"/v1/attachments/{up['id']}")
        assert err.value.status == 401
        await m.api.close()
    finally:
        server.stop()


async def test_reregistration_replaces_identity_and_devices(sqlite_server: ServerProcess) -> None:
    phone = new_phone()
    first = await register(sqlite_server, phone)
    second = await register(sqlite_server, phone)
    assert second.account_id == first.account_id
    me = await second.api.call("GET", "/v1/accounts/me")
    assert me["identity_key"] == b64e(second.state.identity.public.to_bytes())
    with pytest.raises(ServerError) as err:
        await first.api.call("GET", "/v1/accounts/me")
    assert err.value.status == 401


async def test_delete_account_removes_it(sqlite_server: ServerProcess) -> None:
    m, other = await register(sqlite_server), await register(sqlite_server)
    await m.api.call("DELETE", "/v1/accounts/me")
    with pytest.raises(ServerError) as err:
        await other.api.call("GET", f"/v1/accounts/{m.account_id}")
    assert err.value.status == 404
