"""HTTP routes (FastAPI). Each parses, authenticates, calls one handler and renders.

No ``from __future__ import annotations`` here: FastAPI reads the route
signatures at run time, including the local ``Auth`` dependency alias.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.requests import HTTPConnection

from parley.errors import BadRequest
from parley.server.api import schemas as s
from parley.server.api.edge import MAX_INT32, DeviceIdPath, StrictRoute
from parley.server.api.schemas import b64, enc
from parley.server.handlers.accounts import AccountsHandler, Principal
from parley.server.handlers.attachments import AttachmentsHandler
from parley.server.handlers.groups import GroupsHandler
from parley.server.handlers.keys import (
    DeviceBundle,
    KemKey,
    KeysHandler,
    OneTimeKey,
    SignedKey,
    validate_upload,
)
from parley.server.handlers.messages import MessagesHandler, QueuedMessage


@dataclass(frozen=True, slots=True)
class Handlers:
    accounts: AccountsHandler
    keys: KeysHandler
    messages: MessagesHandler
    groups: GroupsHandler
    attachments: AttachmentsHandler


def client_ip(request: HTTPConnection) -> str:
    return request.client.host if request.client else "unknown"


def _keys(body: s.KeysIn) -> tuple[SignedKey | None, KemKey | None, list[OneTimeKey], list[KemKey]]:
    signed = (
        SignedKey(
            body.signed_prekey.key_id,
            b64(body.signed_prekey.public_key, "signed_prekey", 32),
            b64(body.signed_prekey.signature, "signature", 64),
        )
        if body.signed_prekey
        else None
    )

    def kem(k: s.KemPreKeyIn) -> KemKey:
        return KemKey(
            k.key_id,
            b64(k.public_key, "kem public_key", 1184),
            b64(k.signature, "signature", 64),
            k.last_resort,
        )

    return (
        signed,
        kem(body.kem_last_resort) if body.kem_last_resort else None,
        [
            OneTimeKey(k.key_id, b64(k.public_key, "one_time public_key", 32))
            for k in body.one_time_prekeys
        ],
        [kem(k) for k in body.kem_prekeys],
    )


def _required_keys(
    body: s.KeysIn, identity_key: bytes
) -> tuple[SignedKey, KemKey, list[OneTimeKey], list[KemKey]]:
    signed, last_resort, one_time, kem_one_time = _keys(body)
    if signed is None or last_resort is None:
        raise BadRequest(
            "a new device must upload a signed prekey and a last-resort KEM key", "invalid_request"
        )
    validate_upload(identity_key, signed, last_resort, one_time, kem_one_time)
    return signed, last_resort, one_time, kem_one_time


def _bundle(b: DeviceBundle) -> s.DeviceBundleOut:
    return s.DeviceBundleOut(
        device_id=b.device_id,
        signed_prekey=s.SignedPreKeyOut(
            key_id=b.signed_prekey.key_id,
            public_key=enc(b.signed_prekey.public_key),
            signature=enc(b.signed_prekey.signature),
        ),
        kem_prekey=s.KemPreKeyOut(
            key_id=b.kem_prekey.key_id,
            public_key=enc(b.kem_prekey.public_key),
            signature=enc(b.kem_prekey.signature),
            last_resort=b.kem_prekey.last_resort,
        ),
        one_time_prekey=None
        if b.one_time_prekey is None
        else s.OneTimePreKeyOut(
            key_id=b.one_time_prekey.key_id, public_key=enc(b.one_time_prekey.public_key)
        ),
    )


def _message(m: QueuedMessage) -> s.MessageOut:
    return s.MessageOut(
        id=m.guid,
        sender=m.sender_account,
        sender_device=m.sender_device,
        group=m.group_id,
        server_ms=m.server_ms,
        envelope=enc(m.envelope),
        franking_tag=enc(m.franking_tag),
    )


def build_router(h: Handlers) -> APIRouter:  # noqa: PLR0915 - one route table, read top to bottom
    router = APIRouter(prefix="/v1", route_class=StrictRoute)

    async def auth(request: Request) -> Principal:
        return await h.accounts.authenticate(
            request.headers.get("authorization"), client_ip(request)
        )

    Auth = Annotated[Principal, Depends(auth)]  # noqa: N806 - a type alias

    @router.get("/health", tags=["server"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # -- registration -------------------------------------------------------------------

    @router.post("/registration/code", status_code=202, tags=["registration"])
    async def request_code(body: s.CodeRequest, request: Request) -> dict[str, str]:
        """Send a one-time code by SMS. The answer is the same whether or not the number is registered."""
        await h.accounts.request_code(body.phone, client_ip(request))
        return {"status": "sent"}

    @router.post("/registration/verify", tags=["registration"])
    async def verify(body: s.VerifyRequest, request: Request) -> s.RegisteredOut:
        identity = b64(body.identity_key, "identity_key", 64)
        keys = _required_keys(body.keys, identity)
        creds = await h.accounts.verify(body.phone, body.code, identity, client_ip(request))
        await h.keys.store_validated(Principal(creds.account_id, creds.device_id), *keys)
        return s.RegisteredOut(
            account_id=creds.account_id,
            device_id=creds.device_id,
            credential=f"{creds.account_id}.{creds.device_id}.{creds.token}",
        )

    # -- accounts and devices -------------------------------------------------------------------

    @router.get("/accounts/me", tags=["accounts"])
    async def me(who: Auth) -> s.AccountOut:
        a = await h.accounts.account(who.account_id)
        return s.AccountOut(
            account_id=a.id,
            phone=a.phone,
            identity_key=enc(a.identity_key),
            created_day=a.created_day,
            last_seen_day=a.last_seen_day,
            devices=await h.accounts.device_ids(a.id),
        )

    @router.delete("/accounts/me", status_code=204, tags=["accounts"])
    async def delete_me(who: Auth) -> Response:
        await h.accounts.delete_account(who)
        return Response(status_code=204)

    @router.get("/directory/{phone}", tags=["accounts"])
    async def lookup(phone: str, who: Auth) -> s.ContactOut:
        a = await h.accounts.lookup(who, phone)
        return s.ContactOut(
            account_id=a.id,
            identity_key=enc(a.identity_key),
            devices=await h.accounts.device_ids(a.id),
        )

    @router.get("/accounts/{account_id}", tags=["accounts"])
    async def contact(account_id: str, who: Auth) -> s.ContactOut:
        a = await h.accounts.account(account_id)
        return s.ContactOut(
            account_id=a.id,
            identity_key=enc(a.identity_key),
            devices=await h.accounts.device_ids(a.id),
        )

    @router.get("/devices", tags=["devices"])
    async def devices(who: Auth) -> s.DevicesOut:
        return s.DevicesOut(devices=await h.accounts.device_ids(who.account_id))

    @router.post("/devices/provisioning", tags=["devices"])
    async def provision(body: s.ProvisionIn, who: Auth) -> s.ProvisionOut:
        expires = await h.accounts.start_linking(
            who, b64(body.lookup, "lookup", 32), b64(body.blob, "blob", max_length=65_536)
        )
        return s.ProvisionOut(expires_ms=expires)

    @router.post("/devices/provisioning/open", tags=["devices"])
    async def open_provisioning(body: s.LookupIn, request: Request) -> s.BlobOut:
        """The new device reads the encrypted provisioning message before it links."""
        blob = await h.accounts.provisioning_blob(
            b64(body.lookup, "lookup", 32), client_ip(request)
        )
        return s.BlobOut(blob=enc(blob))

    @router.post("/devices/link", tags=["devices"])
    async def link(body: s.LinkIn, request: Request) -> s.LinkOut:
        lookup_key = b64(body.lookup, "lookup", 32)
        creds, blob = await h.accounts.link(lookup_key, client_ip(request))
        account = await h.accounts.account(creds.account_id)
        try:
            keys = _required_keys(body.keys, account.identity_key)
        except Exception:
            await h.accounts.unlink(Principal(creds.account_id, creds.device_id), creds.device_id)
            raise
        await h.keys.store_validated(Principal(creds.account_id, creds.device_id), *keys)
        return s.LinkOut(
            account_id=creds.account_id,
            device_id=creds.device_id,
            credential=f"{creds.account_id}.{creds.device_id}.{creds.token}",
            blob=enc(blob),
        )

    @router.delete("/devices/{device_id}", status_code=204, tags=["devices"])
    async def unlink(device_id: DeviceIdPath, who: Auth) -> Response:
        await h.accounts.unlink(who, device_id)
        return Response(status_code=204)

    # -- keys --------------------------------------------------------------------------------------

    @router.put("/keys", status_code=204, tags=["keys"])
    async def upload_keys(body: s.KeysIn, who: Auth) -> Response:
        await h.keys.upload(who, *_keys(body))
        return Response(status_code=204)

    @router.get("/keys/status", tags=["keys"])
    async def key_status(who: Auth) -> s.KeyStatusOut:
        one_time, kem, low = await h.keys.status(who)
        return s.KeyStatusOut(one_time_prekeys=one_time, kem_prekeys=kem, low=low)

    @router.get("/keys/{account_id}", tags=["keys"])
    async def bundles(account_id: str, who: Auth) -> s.BundlesOut:
        identity, found = await h.keys.fetch(who, account_id, None)
        return s.BundlesOut(identity_key=enc(identity), devices=[_bundle(b) for b in found])

    @router.get("/keys/{account_id}/{device_id}", tags=["keys"])
    async def bundle(account_id: str, device_id: DeviceIdPath, who: Auth) -> s.BundlesOut:
        identity, found = await h.keys.fetch(who, account_id, device_id)
        return s.BundlesOut(identity_key=enc(identity), devices=[_bundle(b) for b in found])

    # -- messages ----------------------------------------------------------------------------------

    @router.put("/messages/{account_id}", tags=["messages"])
    async def send(account_id: str, body: s.SendDirectIn, who: Auth) -> s.SentOut:
        envelopes = {
            m.device_id: b64(m.envelope, "envelope", max_length=300_000) for m in body.messages
        }
        r = await h.messages.send_direct(who, account_id, body.client_id, envelopes)
        return s.SentOut(server_ms=r.server_ms, duplicate=r.duplicate)

    @router.get("/messages", tags=["messages"])
    async def fetch(who: Auth, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> s.MessagesOut:
        return s.MessagesOut(messages=[_message(m) for m in await h.messages.fetch(who, limit)])

    @router.post("/messages/ack", status_code=204, tags=["messages"])
    async def ack(body: s.AckIn, who: Auth) -> Response:
        await h.messages.ack(who, body.ids)
        return Response(status_code=204)

    # -- groups --------------------------------------------------------------------------------------

    def _group(gid: str, members: dict[str, bool]) -> s.GroupOut:
        return s.GroupOut(
            group_id=gid, members=sorted(members), admins=sorted(m for m, a in members.items() if a)
        )

    @router.post("/groups", tags=["groups"])
    async def create_group(body: s.GroupCreateIn, who: Auth) -> s.GroupOut:
        gid = await h.groups.create(who, body.members)
        return _group(gid, await h.groups.members(who, gid))

    @router.get("/groups", tags=["groups"])
    async def my_groups(who: Auth) -> s.GroupsOut:
        return s.GroupsOut(groups=[_group(g, m) for g, m in await h.groups.mine(who)])

    @router.get("/groups/{group_id}", tags=["groups"])
    async def group(group_id: str, who: Auth) -> s.GroupOut:
        return _group(group_id, await h.groups.members(who, group_id))

    @router.post("/groups/{group_id}/members", tags=["groups"])
    async def add_member(group_id: str, body: s.GroupMemberIn, who: Auth) -> s.GroupOut:
        await h.groups.add(who, group_id, body.account_id)
        return _group(group_id, await h.groups.members(who, group_id))

    @router.delete("/groups/{group_id}/members/{account_id}", status_code=204, tags=["groups"])
    async def remove_member(group_id: str, account_id: str, who: Auth) -> Response:
        await h.groups.remove(who, group_id, account_id)
        return Response(status_code=204)

    @router.put("/groups/{group_id}/changes/{version}", tags=["groups"])
    async def put_group_change(
        group_id: str,
        version: Annotated[int, Path(ge=0, le=MAX_INT32)],
        body: s.GroupChangeIn,
        who: Auth,
    ) -> s.GroupChangeOut:
        sealed = b64(body.change, "change", max_length=300_000)
        await h.groups.append_change(who, group_id, version, sealed)
        return s.GroupChangeOut(version=version)

    @router.get("/groups/{group_id}/changes", tags=["groups"])
    async def group_changes(
        group_id: str,
        who: Auth,
        since: Annotated[int, Query(ge=0, le=MAX_INT32)] = 0,
        limit: Annotated[int, Query(ge=1, le=100)] = 100,
    ) -> s.GroupChangesOut:
        page, next_version = await h.groups.changes(who, group_id, since, limit)
        return s.GroupChangesOut(
            changes=[s.SealedChangeOut(version=v, change=enc(blob)) for v, blob in page],
            next_version=next_version,
        )

    @router.put("/groups/{group_id}/messages", tags=["groups"])
    async def send_group(group_id: str, body: s.SendGroupIn, who: Auth) -> s.SentOut:
        r = await h.messages.send_group(
            who, group_id, body.client_id, b64(body.envelope, "envelope", max_length=300_000)
        )
        return s.SentOut(server_ms=r.server_ms, duplicate=r.duplicate)

    # -- attachments ---------------------------------------------------------------------------------

    @router.post(
        "/attachments",
        tags=["attachments"],
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
                "required": True,
            }
        },
    )
    async def upload(request: Request, who: Auth) -> s.AttachmentOut:
        blob_id, expires = await h.attachments.upload(who, await request.body())
        return s.AttachmentOut(id=blob_id, expires_ms=expires)

    @router.get("/attachments/{attachment_id}", tags=["attachments"], response_class=Response)
    async def download(attachment_id: str, who: Auth) -> Response:
        return Response(
            await h.attachments.download(who, attachment_id), media_type="application/octet-stream"
        )

    return router
