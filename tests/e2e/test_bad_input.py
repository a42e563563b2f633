"""Bad input never gets a 5xx: property tests driven by /openapi.json, and websocket frames."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.client.api import ApiClient

from .conftest import register
from .server import ServerProcess

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=5)
    ),
    max_leaves=20,
)
SEGMENT = st.one_of(
    st.text(min_size=1, max_size=40).filter(lambda t: "/" not in t and t not in (".", "..")),
    st.integers(-5, 2**40).map(str),
)


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, str, list[tuple[str, str, dict[str, Any]]]]]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    server = ServerProcess(
        root,
        f"sqlite:///{root / 'data' / 'parley.db'}",
        extra=["--registrations-per-ip-hour", "100000"],
    )
    server.start()
    user = asyncio.run(register(server))
    credential = user.api.credential or ""
    spec = httpx.get(server.url + "/openapi.json").json()
    operations = [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "delete")
    ]
    yield server, credential, operations
    server.stop()
    assert "Traceback" not in "".join(p.read_text() for p in server.log_files)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_no_operation_answers_5xx_to_random_input(
    live: tuple[ServerProcess, str, list[tuple[str, str, dict[str, Any]]]], data: st.DataObject
) -> None:
    server, credential, operations = live
    method, path, _op = data.draw(st.sampled_from(operations))
    concrete = re.sub(r"\{[^}]+\}", lambda _m: quote(data.draw(SEGMENT), safe=""), path)
    auth = data.draw(st.sampled_from(["valid", "none", "garbage"]))
    headers = {
        "valid": {"authorization": f"Bearer {credential}"},
        "none": {},
        "garbage": {
            "authorization": (
                "Bearer "
                + data.draw(
                    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=60)
                )
            ).strip()
        },
    }[auth]
    kind = data.draw(st.sampled_from(["json", "bytes", "none"]))
    kwargs: dict[str, Any] = {}
    if kind == "json":
        kwargs["json"] = data.draw(JSON)
    elif kind == "bytes":
        kwargs["content"] = data.draw(st.binary(max_size=300))
    r = httpx.request(method, server.url + concrete, headers=headers, timeout=10, **kwargs)
    assert r.status_code < 500, (method, concrete, r.status_code, r.text[:200])
    if r.status_code >= 400:
        body = r.json()
        assert set(body["error"]) >= {"code", "message"}


def test_oversized_and_malformed_bodies(
    live: tuple[ServerProcess, str, list[tuple[str, str, dict[str, Any]]]],
) -> None:
    server, _, _ = live
    credential = asyncio.run(
        register(server)
    ).api.credential  # the fuzzer may have deleted its user
    h = {"authorization": f"Bearer {credential}"}
    big = httpx.put(
        server.url + "/v1/keys",
        content=b"{" + b" " * (3 * 1024 * 1024) + b"}",
        headers={**h, "content-type": "application/json"},
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    bad = httpx.put(
        server.url + "/v1/keys",
        content=b"{not json",
        headers={**h, "content-type": "application/json"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    wrong_key = httpx.put(
        server.url + "/v1/keys",
        json={"signed_prekey": {"key_id": 1, "public_key": "AAAA", "signature": "AAAA"}},
        headers=h,
    )
    assert wrong_key.status_code == 400


async def _closed_with(server: ServerProcess, credential: str, frame: str | bytes) -> int | None:
    api = ApiClient(server.url, credential)
    async with api.websocket() as ws:
        await ws.send(frame)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as closed:
            return None if closed.rcvd is None else closed.rcvd.code


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json at all", 1007),
        ('{"type": "nope"}', 1008),
        ('{"type": "ack", "ids": "x"}', 1008),
        (b"\x00\x01binary", 1008),
        ("[1, 2]", 1008),
    ],
)
async def test_malformed_websocket_frames_close_the_socket(
    live: tuple[ServerProcess, str, list[tuple[str, str, dict[str, Any]]]],
    frame: str | bytes,
    code: int,
) -> None:
    server, _, _ = live
    credential = (await register(server)).api.credential or ""
    assert await _closed_with(server, credential, frame) == code


async def test_websocket_without_credentials_is_refused(
    live: tuple[ServerProcess, str, list[tuple[str, str, dict[str, Any]]]],
) -> None:
    server, _, _ = live
    with pytest.raises(Exception) as err:
        async with ApiClient(server.url, "x.1." + secrets.token_hex(8)).websocket() as ws:
            await asyncio.wait_for(ws.recv(), 5)
    assert err.type.__name__ in ("Unreachable", "ConnectionClosedError", "ConnectionClosedOK")


def test_openapi_document_describes_the_api(
    live: tuple[ServerProcess, str, list[tuple[str, str, dict[str, Any]]]],
) -> None:
    server, _, operations = live
    paths = {p for _, p, _ in operations}
    assert {
        "/v1/health",
        "/v1/registration/code",
        "/v1/messages/{account_id}",
        "/v1/groups/{group_id}/messages",
        "/v1/attachments",
    } <= paths
    assert json.loads(httpx.get(server.url + "/openapi.json").text)["info"]["title"] == "Parley"
