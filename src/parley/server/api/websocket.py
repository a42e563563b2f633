"""The push websocket (``/v1/websocket``): Starlette glue around ``DeliverySession``.

The session logic lives in ``handlers/delivery.py`` and talks to a two-method
transport, so the socket can move to a faster stack without touching it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from parley.errors import ApiError
from parley.server.api.routes import client_ip
from parley.server.fanout.local import LocalFanout
from parley.server.handlers.accounts import AccountsHandler
from parley.server.handlers.delivery import CLOSE_POLICY, DeliverySession, FrameError
from parley.server.storage.queue import MessageQueue


class StarletteTransport:
    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def send_text(self, text: str) -> None:
        await self._ws.send_text(text)

    async def close(self, code: int) -> None:
        await self._ws.close(code)


def websocket_endpoint(
    accounts: AccountsHandler, queue: MessageQueue, fanout: LocalFanout, window: int
) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(websocket: WebSocket) -> None:
        try:
            who = await accounts.authenticate(
                websocket.headers.get("authorization"), client_ip(websocket)
            )
        except ApiError:
            await websocket.close(CLOSE_POLICY)
            return
        await websocket.accept()
        session = DeliverySession(
            who.account_id, who.device_id, queue, StarletteTransport(websocket), window
        )
        fanout.register(session)
        pusher = asyncio.create_task(session.run())
        try:
            while not session.closed.is_set():
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    session.close_soon(CLOSE_POLICY)  # binary frames are not part of the protocol
                    break
                try:
                    await session.on_frame(text)
                except FrameError as exc:
                    session.close_soon(exc.code)
                    break
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            fanout.unregister(session)
            session.close_soon(1000)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pusher, 5)

    return endpoint
