"""The server's log never holds an IP address, a phone number, an account id, a
credential or a message id: a real server, at its most verbose level, after
traffic on every kind of route (registration, keys, 1:1 and group messages over
HTTP and the websocket, attachments, reports and staff actions, transparency,
bad requests, 401s and 404s, a refused websocket and websockets closed for bad
frames), then a search of everything it wrote on stdout and stderr."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from parley.client.api import ApiClient, b64e
from parley.client.device import Received
from parley.client.messenger import Messenger
from parley.errors import ServerError
from parley.protocol import attachments
from parley.protocol.franking import direct_conversation
from parley.protocol.wire import AttachmentPointer, Content

from .conftest import new_phone, register
from .server import ServerProcess, database_for, free_port


@pytest.fixture(params=["sqlite", "postgresql"])
def verbose_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with Parley's own loggers at DEBUG."""
    with contextlib.ExitStack() as stack:
        url = database_for(request.param, tmp_path, stack)
        proc = ServerProcess(tmp_path, url, extra=["--log-level", "debug"])
        proc.start()
        yield proc
        if proc.proc and proc.proc.poll() is None:
            proc.stop()


def _admin(server: ServerProcess, *args: str, token: str | None = None) -> str:
    """Remote with a staff credential; local (on the data directory) without."""
    where = (
        ["--server", server.url, "--token", token]
        if token
        else ["--data-dir", str(server.data_dir), "--database-url", server.database_url]
    )
    done = subprocess.run(
        [sys.executable, "-m", "parley.cli.admin", *where, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _inbox(m: Messenger) -> list[Received]:
    async with m.api.websocket() as ws:
        return [r for r in await m.receive(ws) if r.content.text or r.content.attachments]


async def _closed_with(server: ServerProcess, credential: str, frame: str | bytes) -> int | None:
    async with ApiClient(server.url, credential).websocket() as ws:
        await ws.send(frame)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as closed:
            return None if closed.rcvd is None else closed.rcvd.code


async def _traffic(server: ServerProcess) -> dict[str, str]:
    """Run traffic on every kind of route; return what the log must not hold."""
    phones = [new_phone() for _ in range(3)]
    alice, bob, carol = [await register(server, p) for p in phones]
    users = (alice, bob, carol)
    url = server.url

    # accounts, directory, keys
    await alice.api.call("GET", "/v1/accounts/me")
    await alice.api.call("GET", f"/v1/directory/{phones[1]}")
    await alice.api.call("GET", "/v1/devices")
    await alice.api.call("GET", "/v1/keys/status")
    for _ in range(100):  # bob's first key-directory epoch may still be running
        try:
            await alice.api.call("GET", f"/v1/kt/lookup/{bob.account_id}")
            break
        except ServerError as exc:
            if exc.code != "not_found":
                raise
            await asyncio.sleep(0.1)

    # 1:1 over HTTP, with an attachment; received over the websocket (acks there)
    enc = attachments.encrypt(b"attachment body", secrets.token_bytes)
    up = await alice.api.call("POST", "/v1/attachments", content=enc.blob)
    pointer = AttachmentPointer(up["id"], enc.key, enc.digest, len(enc.blob), "text/plain", "a")
    await alice.send_content(bob.account_id, alice.content("over http", (pointer,)))
    got = await _inbox(bob)
    await bob.api.call("GET", f"/v1/attachments/{up['id']}")

    # 1:1 over the websocket
    content = Content(alice.state.rng(32), int(time.time() * 1000), "over the socket")
    frame = {
        "type": "send",
        "request_id": 1,
        "to": bob.account_id,
        "client_id": "ws-1",
        "messages": [
            {"device_id": 1, "envelope": b64e(alice.state.encrypt(bob.account_id, 1, content))}
        ],
    }
    async with alice.api.websocket() as ws:
        await alice.receive(ws)
        await ws.send(json.dumps(frame))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["status"] == 200
    # fetched and acknowledged over HTTP
    fetched = (await bob.api.call("GET", "/v1/messages"))["messages"]
    assert fetched
    await bob.api.call("POST", "/v1/messages/ack", {"ids": [m["id"] for m in fetched]})

    # groups: create, send, list, remove a member
    gid = await alice.create_group([bob.account_id, carol.account_id])
    for m in (bob, carol):
        got += await _inbox(m)
    await alice.send_group(gid, "to the group")
    got += await _inbox(bob)
    await bob.api.call("GET", "/v1/groups")
    await bob.api.call("GET", f"/v1/groups/{gid}")
    await alice.remove_member(gid, carol.account_id)

    # a report, and staff acting on it remotely
    reported = next(m for m in got if m.content.text == "over http")
    report = await bob.api.call(
        "POST",
        "/v1/reports",
        {
            "category": "fraud",
            "comment": "please look",
            "messages": [
                {
                    "franking_key": b64e(reported.content.franking_key),
                    "sender": reported.sender,
                    "conversation": direct_conversation(reported.sender, bob.account_id),
                    "sent_at_ms": reported.content.sent_at_ms,
                    "text": reported.content.text,
                    "attachment_digests": [b64e(a.digest) for a in reported.content.attachments],
                    "control": b64e(reported.content.control),
                    "commitment": b64e(reported.commitment),
                    "server_ms": reported.server_ms,
                    "tag": b64e(reported.franking_tag),
                }
            ],
            "attachments": [],
        },
    )
    await bob.api.call("GET", "/v1/notices")
    staff = _admin(server, "staff", "add", "mo", "--role", "moderator").strip().splitlines()[-1]
    _admin(server, "reports", "list", "--json", token=staff)
    _admin(server, "reports", "show", report["id"], "--json", token=staff)
    _admin(server, "reports", "resolve", report["id"], "--action", "warn", token=staff)
    _admin(server, "audit", "list", "--json", token=staff)

    # public transparency routes
    for path in ("/v1/transparency/head", "/v1/transparency/entries", "/transparency"):
        assert httpx.get(url + path).status_code == 200

    # bad requests, 401s, 404s, 405s
    auth = {"authorization": f"Bearer {alice.api.credential}"}
    json_type = {**auth, "content-type": "application/json"}
    bad = [
        httpx.put(url + "/v1/keys", content=b"{not json", headers=json_type),
        httpx.post(url + "/v1/groups", content=b'{"members": ["\\ud800"]}', headers=json_type),
        httpx.get(url + "/v1/transparency/entries", params={"start": "9" * 40}),
        httpx.get(url + f"/v1/accounts/{phones[2]}", headers=auth),
        httpx.get(url + "/v1/no/such/route"),
        httpx.get(url + "/v1/accounts/me"),
        httpx.get(url + "/v1/accounts/me", headers={"authorization": "Bearer x.1.nope"}),
        httpx.get(url + "/v1/admin/audit", headers={"authorization": "Bearer bad.staff"}),
        httpx.patch(url + "/v1/health"),
        httpx.post(url + "/v1/registration/verify", json={"phone": phones[0], "code": "x"}),
    ]
    assert all(400 <= r.status_code < 500 for r in bad), [r.status_code for r in bad]

    # websockets: refused, and closed for bad frames
    wrong = {"authorization": f"Bearer {alice.account_id}.1.{secrets.token_hex(8)}"}
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect("ws" + url[4:] + "/v1/websocket", additional_headers=wrong):
            pass
    for bad_frame, code in (("not json", 1007), (b"\x00binary", 1008), ('{"type": "?"}', 1008)):
        assert await _closed_with(server, bob.api.credential or "", bad_frame) == code

    # and an account deleted
    await carol.api.call("DELETE", "/v1/accounts/me")

    forbidden = {"client IP": "127.0.0.1"}
    for i, (m, phone) in enumerate(zip(users, phones, strict=True)):
        credential = m.api.credential or ""
        forbidden |= {
            f"phone {i}": phone,
            f"phone {i} (digits)": phone.removeprefix("+"),
            f"account id {i}": m.account_id,
            f"credential {i}": credential,
            f"credential token {i}": credential.rsplit(".", 1)[-1],
        }
    staff_id, staff_token = staff.split(".", 1)
    forbidden |= {"staff id": staff_id, "staff token": staff_token}
    forbidden |= {f"message id {r.id}": r.id for r in got}
    forbidden |= {f"message id {m['id']}": m["id"] for m in fetched}
    forbidden |= {"group id": gid, "report id": report["id"], "attachment id": up["id"]}
    for m in users:
        await m.api.close()
    return forbidden


async def test_the_log_holds_no_address_number_id_or_credential(
    verbose_server: ServerProcess,
) -> None:
    forbidden = await _traffic(verbose_server)
    assert verbose_server.stop() == 0
    log = "".join(p.read_text() for p in verbose_server.log_files)
    # positive controls: the log was captured, and the traffic logged something
    assert "parley-server listening on port" in log and "ready" in log
    leaks = {name: _line_with(log, needle) for name, needle in forbidden.items() if needle in log}
    assert not leaks, f"the server log holds: {leaks}"
    assert "Traceback" not in log


def _line_with(log: str, needle: str) -> str:
    return next(line for line in log.splitlines() if needle in line)


def test_console_sms_is_printed_on_stdout_and_never_logged(tmp_path: Path) -> None:
    """``--sms console`` prints the code on stdout, a stand-in for a carrier; the log
    (stderr) does not hold the number."""
    port, phone = free_port(), new_phone()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "parley.cli.server",
                "--data-dir",
                str(tmp_path / "data"),
                "--port",
                str(port),
                "--sms",
                "console",
            ],
            stdout=stdout,
            stderr=stderr,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                        break
                time.sleep(0.1)
            assert (
                httpx.post(url + "/v1/registration/code", json={"phone": phone}).status_code == 202
            )
            deadline = time.monotonic() + 10
            while phone not in out.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.terminate()
            assert proc.wait(30) == 0
    printed, logged = out.read_text(), err.read_text()
    assert printed.startswith(f"SMS to {phone}: your Parley code is ")  # not a log record
    assert "parley-server listening on port" in logged
    assert phone not in logged and phone.removeprefix("+") not in logged
    assert "127.0.0.1" not in logged
