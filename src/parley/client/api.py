"""Async transport for the server's HTTP API and push websocket.

Every call returns parsed JSON or raises ``ServerError`` (with the server's
stable error code) or ``Unreachable``. Binary values are base64 strings in
JSON, as in ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from parley.errors import ServerError, Unreachable
from parley.protocol.keys import IdentityKeyPair, KemPreKey, OneTimePreKey, SignedPreKey


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64d(text: str) -> bytes:
    return base64.b64decode(text)


def keys_json(
    signed: SignedPreKey | None = None,
    kem_last_resort: KemPreKey | None = None,
    one_time: list[OneTimePreKey] | None = None,
    kem_one_time: list[KemPreKey] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "one_time_prekeys": [
            {"key_id": k.id, "public_key": b64e(k.key.public)} for k in one_time or []
        ],
        "kem_prekeys": [
            {
                "key_id": k.id,
                "public_key": b64e(k.key.public),
                "signature": b64e(k.signature),
                "last_resort": False,
            }
            for k in kem_one_time or []
        ],
    }
    if signed is not None:
        body["signed_prekey"] = {
            "key_id": signed.id,
            "public_key": b64e(signed.key.public),
            "signature": b64e(signed.signature),
        }
    if kem_last_resort is not None:
        body["kem_last_resort"] = {
            "key_id": kem_last_resort.id,
            "public_key": b64e(kem_last_resort.key.public),
            "signature": b64e(kem_last_resort.signature),
            "last_resort": True,
        }
    return body


class ApiClient:
    def __init__(
        self, base_url: str, credential: str | None = None, timeout: float = 30.0, retries: int = 0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.credential = credential
        self.retries = retries
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.credential}"} if self.credential else {}

    async def call(
        self, method: str, path: str, body: Any = None, content: bytes | None = None
    ) -> Any:
        """One API call. GET, PUT and DELETE are idempotent here (sends carry a client
        message id), so they are retried with backoff when the server cannot be reached."""
        attempts = 1 + (self.retries if method in ("GET", "PUT", "DELETE") else 0)
        for attempt in range(attempts - 1):
            try:
                return await self._call_once(method, path, body, content)
            except Unreachable:
                await asyncio.sleep(min(0.5 * 2**attempt, 2.0))
        return await self._call_once(method, path, body, content)

    async def _call_once(self, method: str, path: str, body: Any, content: bytes | None) -> Any:
        try:
            if content is not None:
                headers = {**self._headers(), "content-type": "application/octet-stream"}
                response = await self._http.request(method, path, content=content, headers=headers)
            else:
                response = await self._http.request(
                    method, path, json=body, headers=self._headers()
                )
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach {self.base_url}: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                code, message = str(error.get("code")), str(error.get("message"))
                details = {k: v for k, v in error.items() if k not in ("code", "message")}
            except (ValueError, KeyError, TypeError, AttributeError):
                code, message, details = "http_error", f"HTTP {response.status_code}", {}
            raise ServerError(response.status_code, code, message, details)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/octet-stream"):
            return response.content
        try:
            return response.json()
        except ValueError as exc:
            raise ServerError(
                response.status_code, "bad_response", "server answered with invalid JSON"
            ) from exc

    # -- registration and devices ---------------------------------------------------------------

    async def request_code(self, phone: str) -> None:
        await self.call("POST", "/v1/registration/code", {"phone": phone})

    async def verify(
        self, phone: str, code: str, identity: IdentityKeyPair, keys: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST",
            "/v1/registration/verify",
            {
                "phone": phone,
                "code": code,
                "identity_key": b64e(identity.public.to_bytes()),
                "keys": keys,
            },
        )
        self.credential = result["credential"]
        return result

    async def link(self, lookup: bytes, keys: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", "/v1/devices/link", {"lookup": b64e(lookup), "keys": keys}
        )
        self.credential = result["credential"]
        return result

    # -- push -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def websocket(self) -> AsyncIterator[ClientConnection]:
        url = "ws" + self.base_url.removeprefix("http") + "/v1/websocket"
        try:
            async with websockets.connect(
                url, additional_headers=self._headers(), max_size=2**22
            ) as ws:
                yield ws
        except (OSError, websockets.InvalidHandshake) as exc:
            raise Unreachable(
                f"cannot open the push socket at {url}: {type(exc).__name__}"
            ) from exc

    @staticmethod
    async def ack(ws: ClientConnection, ids: list[str]) -> None:
        await ws.send(json.dumps({"type": "ack", "ids": ids}))
