"""Bad input never gets a 5xx: property tests driven by /openapi.json, and websocket
frames, on SQLite and on PostgreSQL (which refuses more: NUL in text, integers past
31 bits in INTEGER columns). Every request body, path segment and query value is
drawn from random JSON, bytes and text plus what broke the server before: lone
surrogates, integers far past 64 bits, and JSON nested thousands deep."""

from __future__ import annotations

import asyncio
import contextlib
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
from .server import ServerProcess, database_for

Live = tuple[ServerProcess, str, list[tuple[str, str, dict[str, Any]]], list[str]]

LONE_SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
# Text as hostile clients send it: anything, with lone surrogates and NULs mixed in.
TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.characters(), LONE_SURROGATE, st.just("\x00")), max_size=12).map("".join),
)
HUGE = st.one_of(
    st.integers(-(2**200), 2**200),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]),
)


def _nested(depth: int, leaf: str = "0") -> str:
    """JSON text nested ``depth`` deep, lists and objects alternating."""
    opened = "".join("[" if i % 2 else '{"a":' for i in range(depth))
    closed = "".join("]" if i % 2 else "}" for i in reversed(range(depth)))
    return opened + leaf + closed


DEEP = st.integers(20, 5000).map(_nested)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | HUGE
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5),
    max_leaves=20,
)
SEGMENT = st.one_of(
    TEXT.filter(lambda t: t and "/" not in t and t not in (".", "..")),
    HUGE.map(str),
    st.integers(-5, 2**40).map(str),
)
QUERY_VALUE = st.one_of(TEXT, HUGE.map(str), st.integers(-5, 2000).map(str))


def _body(data: st.DataObject, fields: list[str]) -> bytes:
    """A request body: random JSON (ASCII-escaped, so lone surrogates travel as \\ud800),
    an object with the API's own field names, JSON nested deep (alone or under a
    field), a number of thousands of digits, or random bytes."""
    kind = data.draw(st.sampled_from(["json", "fields", "deep", "deep field", "digits", "bytes"]))
    if kind == "json":
        return json.dumps(data.draw(JSON)).encode()
    if kind == "fields":
        names = data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=4))
        return json.dumps({n: data.draw(JSON) for n in names}).encode()
    if kind == "deep":
        return data.draw(DEEP).encode()
    if kind == "deep field":
        return f'{{"{data.draw(st.sampled_from(fields))}": {data.draw(DEEP)}}}'.encode()
    if kind == "digits":
        digits = "9" * data.draw(st.integers(19, 6000))
        return f'{{"{data.draw(st.sampled_from(fields))}": {digits}}}'.encode()
    return data.draw(st.binary(max_size=300))


def _property_names(spec: dict[str, Any]) -> list[str]:
    schemas = spec["components"]["schemas"].values()
    return sorted({name for schema in schemas for name in schema.get("properties", {})})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    with contextlib.ExitStack() as stack:
        url = database_for(request.param, root, stack)
        server = ServerProcess(root, url, extra=["--registrations-per-ip-hour", "100000"])
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
        yield server, credential, operations, _property_names(spec)
        server.stop()
        log = "".join(p.read_text() for p in server.log_files)
        # a handler that failed logs "internal error: TYPE" (app.InternalErrors), also
        # behind a websocket, where no status code would show it
        assert "Traceback" not in log and "internal error" not in log


@pytest.fixture(scope="module")
def fresh_credential(live: Live) -> str:
    """A user registered after the fuzzer ran (it may have deleted its own)."""
    return asyncio.run(register(live[0])).api.credential or ""


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_no_operation_answers_5xx_to_random_input(live: Live, data: st.DataObject) -> None:
    server, credential, operations, fields = live
    method, path, op = data.draw(st.sampled_from(operations))
    concrete = re.sub(
        r"\{[^}]+\}",
        lambda _m: quote(data.draw(SEGMENT), safe="", errors="surrogatepass"),
        path,
    )
    query = [
        (p["name"], data.draw(QUERY_VALUE))
        for p in op.get("parameters", [])
        if p["in"] == "query" and data.draw(st.booleans())
    ]
    if query:
        concrete += "?" + "&".join(
            f"{quote(k)}={quote(v, safe='', errors='surrogatepass')}" for k, v in query
        )
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
    kwargs: dict[str, Any] = {}
    if data.draw(st.booleans()):
        kwargs["content"] = _body(data, fields)
        headers["content-type"] = "application/json"
    r = httpx.request(method, server.url + concrete, headers=headers, timeout=20, **kwargs)
    assert r.status_code < 500, (method, concrete, r.status_code, r.text[:200])
    if r.status_code >= 400:
        body = r.json()
        assert set(body["error"]) >= {"code", "message"}


@pytest.mark.parametrize(
    ("method", "path", "body", "query"),
    [
        # each of these answered 500 before (UnicodeEncodeError, OverflowError, DBAPIError)
        ("POST", "/v1/groups", '{"members": ["\\ud800"]}', ""),
        ("POST", "/v1/groups", '{"members": ["\\u0000"]}', ""),
        ("POST", "/v1/groups", '{"members": ["a"], "\\udfff": 1}', ""),
        ("PUT", "/v1/messages/x", '{"client_id": "\\ud83d", "messages": []}', ""),
        ("GET", "/v1/transparency/entries", "", "start=1" + "0" * 30 + "&end=1" + "0" * 30),
        ("GET", "/v1/transparency/entries", "", "start=3000000000&end=3000000001"),
        ("GET", "/v1/transparency/inclusion", "", "index=" + "9" * 40 + "&size=1"),
        ("GET", "/v1/transparency/consistency", "", "first=1&second=" + "9" * 40),
        ("DELETE", "/v1/devices/" + "9" * 30, "", ""),
        ("DELETE", "/v1/devices/3000000000", "", ""),
        ("GET", "/v1/keys/x/3000000000", "", ""),
        ("GET", "/v1/accounts/%00", "", ""),
        ("GET", "/v1/admin/reports", "", "status=%00"),
        ("PUT", "/v1/keys", _nested(1200), ""),
        ("PUT", "/v1/keys", '{"one_time_prekeys": ' + _nested(500) + "}", ""),
        ("POST", "/v1/messages/ack", '{"ids": [' + "9" * 5000 + "]}", ""),
        ("POST", "/v1/messages/ack", '{"ids": [1e400]}', ""),
        ("POST", "/v1/messages/ack", '{"ids": [NaN]}', ""),
        ("POST", "/v1/registration/code", b'{"phone": "\xed\xa0\x80"}', ""),
    ],
)
def test_lone_surrogates_huge_integers_nul_and_deep_nesting_get_a_400(
    live: Live, fresh_credential: str, method: str, path: str, body: str | bytes, query: str
) -> None:
    server, credential = live[0], fresh_credential
    r = httpx.request(
        method,
        server.url + path + ("?" + query if query else ""),
        content=body or None,
        headers={"authorization": f"Bearer {credential}", "content-type": "application/json"},
        timeout=20,
    )
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["error"]["code"] == "invalid_request"


def test_every_integer_parameter_and_body_field_is_bounded(live: Live) -> None:
    """An unbounded integer reaches SQL as an OverflowError (SQLite, past 64 bits) or
    a DataError (PostgreSQL INTEGER, past 31 bits): /openapi.json gives each a maximum."""
    server, _, operations, _ = live
    spec = httpx.get(server.url + "/openapi.json").json()
    unbounded = [
        f"{method} {path} {p['name']}"
        for method, path, op in operations
        for p in op.get("parameters", [])
        if p["schema"].get("type") == "integer" and "maximum" not in p["schema"]
    ]
    for name, schema in spec["components"]["schemas"].items():
        if name.endswith("In"):
            unbounded += [
                f"{name}.{field}"
                for field, prop in schema.get("properties", {}).items()
                if prop.get("type") == "integer" and "maximum" not in prop
            ]
    assert not unbounded, unbounded
    assert len(operations) > 30


def test_oversized_and_malformed_bodies(live: Live) -> None:
    server, _, _, _ = live
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
        # each of these closed with 1000 before (RecursionError) or reached the handler
        (_nested(1200), 1007),
        (_nested(100), 1007),
        ('{"type": "ack", "ids": ["\\ud800"]}', 1007),
        ('{"type": "ack", "ids": ["\\u0000"]}', 1007),
        ('{"type": "send", "request_id": ' + "9" * 5000 + "}", 1007),
        ('{"type": "send", "request_id": 1, "to": "x", "messages": [{"device_id": 1e999}]}', 1007),
    ],
)
async def test_malformed_websocket_frames_close_the_socket(
    live: Live, frame: str | bytes, code: int
) -> None:
    server, _, _, _ = live
    credential = (await register(server)).api.credential or ""
    assert await _closed_with(server, credential, frame) == code


WS_FRAME = st.one_of(
    JSON.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["ack", "send", "send_group"])},
        optional={
            "ids": JSON,
            "request_id": JSON,
            "to": JSON,
            "group": JSON,
            "client_id": JSON,
            "messages": JSON,
            "envelope": JSON,
        },
    ).map(json.dumps),
    DEEP,
    TEXT,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=WS_FRAME)
def test_any_websocket_frame_is_answered_or_closes_with_1007_or_1008(
    live: Live, fresh_credential: str, frame: str
) -> None:
    """A random frame, then one that is not JSON: the socket closes with 1007 or 1008,
    whichever frame it refused (1000 or 1011 would mean a handler failed)."""
    server, credential = live[0], fresh_credential

    async def run() -> int | None:
        async with ApiClient(server.url, credential).websocket() as ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(frame.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
                await ws.send("not json")
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as closed:
                return None if closed.rcvd is None else closed.rcvd.code

    assert asyncio.run(run()) in (1007, 1008)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer x.1." + secrets.token_hex(8), "Bearer \u00e9\u00ff", "Bearer " + "9" * 4000],
)
async def test_websocket_without_valid_credentials_is_refused(
    live: Live, authorization: str | None
) -> None:
    """Refused in the handshake (HTTP 403), before any frame; the raw websockets client,
    so the check does not depend on how ``ApiClient`` reports it."""
    server, _, _, _ = live
    headers = {} if authorization is None else {"authorization": authorization}
    url = "ws" + server.url.removeprefix("http") + "/v1/websocket"
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(url, additional_headers=headers) as ws:
            await asyncio.wait_for(ws.recv(), 5)
    assert err.value.response.status_code == 403


def test_openapi_document_describes_the_api(live: Live) -> None:
    server, _, operations, _ = live
    paths = {p for _, p, _ in operations}
    assert {
        "/v1/health",
        "/v1/registration/code",
        "/v1/messages/{account_id}",
        "/v1/groups/{group_id}/messages",
        "/v1/attachments",
    } <= paths
    assert json.loads(httpx.get(server.url + "/openapi.json").text)["info"]["title"] == "Parley"
