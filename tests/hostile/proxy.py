"""A lying front for the real server: what the server says, except where a test lies.

The proxy listens on a free loopback port and forwards every HTTP request to
the real ``parley-server`` unchanged, except paths a test has put in
``answers``: those get the test's answer instead. A client pointed at the
proxy therefore talks to a server whose every honest answer is real and whose
lies are exactly the ones the test chose: what a hostile server could do
(it holds no user's secret; only what it serves changes).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.e2e.server import free_port

Answer = Callable[[Request], Awaitable[dict[str, Any]]]


class LyingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.answers: dict[str, Answer] = {}
        app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._forward,
                    methods=["GET", "POST", "PUT", "DELETE"],
                )
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def upstream_json(self, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.upstream) as http:
            return (await http.get(path)).json()

    async def _forward(self, request: Request) -> Response:
        lie = self.answers.get(request.url.path)
        if lie is not None:
            return JSONResponse(await lie(request))
        headers = {
            k: v for k, v in request.headers.items() if k in ("authorization", "content-type")
        }
        async with httpx.AsyncClient(base_url=self.upstream, timeout=30) as http:
            got = await http.request(
                request.method,
                request.url.path,
                params=request.query_params,
                content=await request.body(),
                headers=headers,
            )
        return Response(
            got.content,
            got.status_code,
            media_type=got.headers.get("content-type"),
            headers={k: v for k, v in got.headers.items() if k == "retry-after"},
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def replay(answer: dict[str, Any]) -> Answer:
    """An answer captured earlier, served again verbatim."""

    async def lie(_request: Request) -> dict[str, Any]:
        await asyncio.sleep(0)
        return answer

    return lie
