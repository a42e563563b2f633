"""Async transport for the server's HTTP API and push websocket.

Every call returns parsed JSON or raises ``ServerError`` (with the server's
stable error code) or ``Unreachable``. Binary values are base64 strings in
JSON, as in ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx

from parley.client.state import KtView
from parley.errors import ParleyError, ServerError, Unreachable
from parley.protocol.keys import IdentityKeyPair, KemPreKey, OneTimePreKey, SignedPreKey

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


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


class InvalidServerUrl(ParleyError):
    code = "invalid_server_url"


def check_server_url(url: str) -> str:
    """The server URL without a trailing slash, or ``InvalidServerUrl`` saying what is wrong."""
    if not url.startswith(("http://", "https://")):
        raise InvalidServerUrl(f"the server URL must start with http:// or https:// (got {url!r})")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidServerUrl(f"{url!r} is not a valid server URL") from exc
    if not parsed.host:
        raise InvalidServerUrl(f"{url!r} names no host")
    return url.rstrip("/")


def _tls_context(base_url: str) -> ssl.SSLContext | bool:
    """What httpx verifies TLS with: for an ``https://`` server its default (certifi's
    roots, checked hostname). Every request goes to a path of ``base_url`` and
    redirects are not followed, so an ``http://`` client never makes a TLS connection:
    it gets a context with no trusted roots that would refuse any certificate, instead
    of loading certifi's ~150 roots for nothing (30 to 50 ms of every command)."""
    if base_url.startswith("https://"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostname checked, no roots


def _backoff(attempt: int) -> float:
    return min(0.5 * 2.0**attempt, 2.0)


class ApiClient:
    """``on_retry`` is told once per call, at the first failed attempt, that the
    server is being retried (the CLI prints it, so nobody waits in silence)."""

    def __init__(
        self,
        base_url: str,
        credential: str | None = None,
        timeout: float = 30.0,
        retries: int = 0,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.base_url = check_server_url(base_url)
        self.credential = credential
        self.retries = retries
        self.on_retry = on_retry
        # The key-transparency view every verification through this client uses and
        # advances (pinned log key, last verified head...: ``client.kt``); the app
        # points it at the profile's ``state.kt``, a library client keeps it in memory.
        self.kt_view = KtView()
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, verify=_tls_context(self.base_url)
        )

    def _retrying(self, attempt: int) -> None:
        if attempt == 0 and self.on_retry is not None:
            total = sum(_backoff(a) for a in range(self.retries))
            self.on_retry(f"cannot reach {self.base_url}; retrying for up to {total:.0f} s")

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
                self._retrying(attempt)
                await asyncio.sleep(_backoff(attempt))
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
        except httpx.TimeoutException as exc:
            raise Unreachable(f"the server at {self.base_url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the server at {self.base_url}") from exc
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
        """The push socket, retried like an idempotent call while the server is down;
        a refused credential is a ``ServerError`` at once."""
        import websockets  # only for the push socket: a send need not load it

        url = "ws" + self.base_url.removeprefix("http") + "/v1/websocket"
        for attempt in range(self.retries + 1):
            try:
                ws = await websockets.connect(
                    url, additional_headers=self._headers(), max_size=2**22
                )
                break
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise ServerError(
                        status, "unauthorized", "the server refused this device's credential"
                    ) from exc
                failure: Exception = exc
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                failure = exc
            if attempt == self.retries:
                raise Unreachable(f"cannot open the push socket at {self.base_url}") from failure
            self._retrying(attempt)
            await asyncio.sleep(_backoff(attempt))
        async with ws:
            yield ws

    @staticmethod
    async def ack(ws: ClientConnection, ids: list[str]) -> None:
        await ws.send(json.dumps({"type": "ack", "ids": ids}))
