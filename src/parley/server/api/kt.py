"""Key-transparency routes: lookups (public), the owner's history and its signed
device list (the account's own credential)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field

from parley.server.api.edge import MAX_INT, MAX_INT32, LogIndexQuery, StrictRoute
from parley.server.api.routes import client_ip
from parley.server.api.schemas import Body, b64
from parley.server.handlers.accounts import AccountsHandler, Principal
from parley.server.handlers.kt import KtHandler
from parley.translog.directory import MAX_DEVICES

AccountPath = Annotated[str, Path(max_length=64)]


class DeviceListIn(Body):
    counter: int = Field(ge=0, le=MAX_INT)
    devices: list[Annotated[int, Field(ge=0, le=MAX_INT32)]] = Field(max_length=MAX_DEVICES)
    signature: str = Field(max_length=128)


def build_kt_router(accounts: AccountsHandler, kt: KtHandler) -> APIRouter:
    router = APIRouter(prefix="/v1/kt", route_class=StrictRoute, tags=["key transparency"])

    async def auth(request: Request) -> Principal:
        return await accounts.authenticate(request.headers.get("authorization"), client_ip(request))

    Auth = Annotated[Principal, Depends(auth)]  # noqa: N806 - a type alias

    @router.get("/lookup/{account_id}")
    async def lookup(account_id: AccountPath, since: LogIndexQuery = 0) -> dict[str, Any]:
        """An account's keys as published in the key directory, with every proof: the
        directory proof, the signed head, the epoch's inclusion, the log after the
        epoch (freshness) and, from ``since`` (the size of the head the client
        verified last), the consistency proof."""
        return await kt.lookup(account_id, since)

    @router.get("/history")
    async def history(
        who: Auth,
        since_version: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
        since: LogIndexQuery = 0,
    ) -> dict[str, Any]:
        """Every version of the caller's own entry after ``since_version``, and its lookup."""
        return await kt.history(who.account_id, since_version, since)

    @router.put("/device-list", status_code=204)
    async def device_list(body: DeviceListIn, who: Auth) -> None:
        """The device list the account's owner signed with its identity key."""
        await kt.put_device_list(
            who.account_id, body.counter, body.devices, b64(body.signature, "signature", 64)
        )

    return router
