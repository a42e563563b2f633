"""Shared by the console tests: reports made through the real client, lawful requests
signed with ``parley-authority``, staff made with ``parley-admin``, and an HTTP
client that signs in to the console as a browser does (cookie, CSRF token)."""

from __future__ import annotations

import json
import re
import secrets
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from parley.client.api import b64e
from parley.protocol import attachments
from parley.protocol.wire import AttachmentPointer

from .conftest import register
from .server import ServerProcess
from .test_reports import reveal

# Strings that would run or restyle something if a page treated them as markup,
# beside the terminal corpus (tests/hostile_text.py).
HTML_HOSTILE = [
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror="window.__pwned=2">',
    "'><svg onload=window.__pwned=3>",
    "</textarea><script>window.__pwned=4</script>",
    "<a href=javascript:window.__pwned=5>click</a>",
    "{{ 7*7 }} {% raw %}",
    '<style>body{display:none}</style><link rel=stylesheet href="https://evil.example/x.css">',
    "<meta http-equiv=refresh content='0;url=https://evil.example'>",
    "<base href=https://evil.example/>",
    "\u202eevil\u202c bidi",
]


def png(width: int = 4, height: int = 3) -> bytes:
    """A real (tiny, red) PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def admin(server: ServerProcess, *args: str, token: str | None = None) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.cli.admin",
            "--data-dir",
            str(server.data_dir),
            "--database-url",
            server.database_url,
            *(["--token", token] if token else []),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def add_staff(server: ServerProcess, name: str, role: str) -> str:
    """A new credential, made locally as an operator does."""
    return admin(server, "staff", "add", name, "--role", role).strip().splitlines()[-1]


@dataclass
class Made:
    id: str
    sender: str
    reporter: str
    texts: list[str]
    comment: str


async def make_report(
    server: ServerProcess,
    texts: list[str],
    comment: str = "",
    files: list[tuple[bytes, str]] | None = None,
    category: str = "fraud",
) -> Made:
    """``texts`` sent from one account to another; the receiver reports the last
    (with the others as context) and reveals ``files`` (bytes, name) attached to it."""
    alice, bob = await register(server), await register(server)
    pointers = []
    for data, name in files or []:
        enc = attachments.encrypt(data, secrets.token_bytes)
        up = await alice.api.call("POST", "/v1/attachments", content=enc.blob)
        pointers.append(
            AttachmentPointer(up["id"], enc.key, enc.digest, len(enc.blob), "image/png", name)
        )
    for i, text in enumerate(texts):
        with_files = tuple(pointers) if i == len(texts) - 1 else ()
        await alice.send_content(bob.account_id, alice.content(text, with_files))
    async with bob.api.websocket() as ws:
        got = [m for m in await bob.receive(ws) if m.content.text or m.content.attachments]
    assert [m.content.text for m in got] == texts
    reported = got[-1]
    result = await bob.api.call(
        "POST",
        "/v1/reports",
        {
            "category": category,
            "comment": comment,
            "messages": [reveal(m, bob) for m in got],
            "attachments": [
                {"id": a.id, "key": b64e(a.key), "digest": b64e(a.digest), "name": a.name}
                for a in reported.content.attachments
            ],
        },
    )
    made = Made(result["id"], alice.account_id, bob.account_id, texts, comment)
    for m in (alice, bob):
        await m.api.close()
    return made


def order(target: str, order_id: str, **changes: Any) -> dict[str, Any]:
    base = {
        "order_id": order_id,
        "authority": "Amtsgericht Berlin",
        "jurisdiction": "DE",
        "case_reference": "123 Js 456/26",
        "legal_basis": "StPO §100g",
        "offence_category": "fraud",
        "target": target,
        "time_range": {"from": "2020-01-01T00:00:00Z", "to": "2099-01-01T00:00:00Z"},
        "requested_data": ["ip_addresses", "phone_number", "messages"],
        "issued_at": "2026-01-01T00:00:00Z",
        "expires_at": "2099-01-01T00:00:00Z",
    }
    base.update(changes)
    return base


def authority_tool(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "parley.cli.authority", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def signed_order(tmp: Path, content: dict[str, Any], key: str = "court.key") -> Path:
    """``content`` signed with ``key`` (made by ``parley-authority keygen`` if missing)."""
    if not (tmp / key).exists():
        authority_tool("keygen", "--out", key, cwd=tmp)
    (tmp / "order.json").write_text(json.dumps(content))
    out = f"signed-{secrets.token_hex(4)}.json"
    authority_tool("sign", "order.json", "--key", key, "--out", out, cwd=tmp)
    return tmp / out


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Console:
    """The console over HTTP, as a browser uses it: cookies, forms, CSRF tokens."""

    def __init__(self, server: ServerProcess, **headers: str) -> None:
        self.server = server
        self.origin = server.url
        self.http = httpx.Client(
            base_url=server.url,
            timeout=30,
            follow_redirects=False,
            headers={"origin": server.url, **headers},
        )
        self.csrf = ""

    def sign_in(self, credential: str) -> httpx.Response:
        page = self.http.get("/console")
        token = _CSRF.search(page.text)
        assert token, page.text
        done = self.http.post(
            "/console/sign-in", data={"csrf": token.group(1), "credential": credential}
        )
        if done.status_code == 303:
            home = self.get("/console/home")
            found = _CSRF.search(home.text)
            assert found
            self.csrf = found.group(1)
        return done

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.http.get(path, params=params)

    def post(self, path: str, **data: str) -> httpx.Response:
        return self.http.post(path, data={"csrf": self.csrf, **data})

    def close(self) -> None:
        self.http.close()
