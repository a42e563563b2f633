"""The composition root: builds config, stores, handlers and routes. Nothing else wires things.

Start-up runs the migrations, loads (or creates) the server secrets, starts
the queue writer and the maintenance loop (expiry of queued messages,
attachments, codes, provisioning blobs; pruning of the connection log).
Shutdown (SIGTERM via uvicorn) closes sockets, then lets the queue writer
finish every submitted commit before the engine is disposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley import __version__
from parley.crypto.primitives import SigningKey
from parley.errors import ApiError, RateLimited
from parley.server import watchdog
from parley.server.api.admin import build_admin_router
from parley.server.api.console import build_console_router
from parley.server.api.html import SecurityHeaders, error_page, is_html
from parley.server.api.kt import build_kt_router
from parley.server.api.public import build_public_router
from parley.server.api.routes import Handlers, build_router
from parley.server.api.schemas import MAX_REPORT_BODY
from parley.server.api.site import build_site_router
from parley.server.api.websocket import PushService
from parley.server.config import ServerConfig
from parley.server.disclosure.package import DisclosureReader
from parley.server.fanout.cluster import ClusterFanout
from parley.server.fanout.local import LocalFanout
from parley.server.handlers.accounts import AccountsHandler
from parley.server.handlers.attachments import AttachmentsHandler
from parley.server.handlers.console import ConsoleHandler
from parley.server.handlers.delivery import Deliveries
from parley.server.handlers.groups import GroupsHandler
from parley.server.handlers.keys import KeysHandler
from parley.server.handlers.kt import KtHandler
from parley.server.handlers.legal import LegalHandler
from parley.server.handlers.messages import MessagesHandler
from parley.server.handlers.moderation import ModerationHandler
from parley.server.handlers.ratelimit import Limiter, RateLimiter
from parley.server.handlers.reports import MEMBERSHIP_RETENTION_MS, ReportsHandler
from parley.server.handlers.standing import Standing
from parley.server.handlers.transparency import TransparencyHandler
from parley.server.sms import SmsSender, from_spec
from parley.server.storage import db
from parley.server.storage.accounts import AccountStore, CodeStore, ConnectionLog, ProvisioningStore
from parley.server.storage.blobs import BlobStore
from parley.server.storage.buckets import RedisBuckets
from parley.server.storage.groups import GroupStore
from parley.server.storage.keys import KeyStore
from parley.server.storage.kt import KtStore
from parley.server.storage.leases import RENEW_S, Lease
from parley.server.storage.legal import LegalStore
from parley.server.storage.moderation import (
    AuditLog,
    NoticeStore,
    ReportStore,
    SessionStore,
    StaffStore,
    StatusStore,
)
from parley.server.storage.queue import MessageQueue
from parley.server.storage.secrets import load_or_create
from parley.server.storage.transparency import TransparencyStore

log = logging.getLogger("parley.server")
SENT_KEY_RETENTION_MS = 86_400_000
# From the application's shutdown (after uvicorn's 10 s for open connections) to the
# process's end: the lifespan's own shutdown takes milliseconds.
SHUTDOWN_DEADLINE_S = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "additionalProperties": True,
        }
    },
}


def error_body(code: str, message: str, **details: object) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **details}}


class BodyLimit:
    """Refuse bodies over the limit with a 413 JSON error, before they are buffered.
    Attachments and reports have their own limits (a report's is the largest one
    a client may send: ``schemas.MAX_REPORT_BODY``)."""

    def __init__(self, app: ASGIApp, default: int, attachments: int, reports: int) -> None:
        self.app = app
        self.default = default
        self.by_path = {"/v1/attachments": attachments, "/v1/reports": reports}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.default)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(send, limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        response = JSONResponse(
            error_body("payload_too_large", f"request bodies are limited to {limit} bytes"), 413
        )
        await response({"type": "http"}, _no_receive, send)


class InternalErrors:
    """A bug becomes a bare 500 JSON error; the log gets the exception type only,
    never a traceback that could carry request data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        if scope["type"] != "http":  # no response to track: no wrapper per frame sent
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                log.error("internal error: %s", type(exc).__name__)
            return
        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            log.error("internal error: %s", type(exc).__name__)
            if scope["type"] == "http" and not started:
                response = JSONResponse(error_body("internal", "internal server error"), 500)
                await response(scope, _no_receive, send)


class _TooLarge(Exception):
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(config: ServerConfig, sms: SmsSender | None = None) -> FastAPI:  # noqa: PLR0915 - the composition root
    engine = db.create_engine(config.database_url)
    node = secrets.token_hex(8)  # this process, as the cluster knows it
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:  # noqa: PLR0915 - start-up, in order
        await db.migrate(engine)
        pepper = await load_or_create(engine, "pepper")
        franking_key = await load_or_create(engine, "franking")
        local_limits = RateLimiter(time.monotonic)
        limiter: Limiter = local_limits
        redis: Redis | None = None
        fanout: LocalFanout
        if config.redis_url:
            redis = Redis.from_url(
                config.redis_url,
                socket_timeout=2,
                socket_connect_timeout=2,
                health_check_interval=5,
                decode_responses=True,
            )
            cluster = ClusterFanout(redis, pepper, node)
            fanout = cluster
            limiter = RedisBuckets(redis, pepper, local_limits)
        else:
            cluster = None
            fanout = LocalFanout()
        app.state.fanout = fanout
        # A single node does all singleton work itself; a cluster node holds the lease.
        lease = Lease(engine, "leader", node, now_ms) if config.redis_url else None
        queue = MessageQueue(engine, fanout.deliver)
        codes, provisioning, connections = (
            CodeStore(engine),
            ProvisioningStore(engine),
            ConnectionLog(engine),
        )
        blobs = BlobStore(engine, config.data_dir / "attachments")
        accounts = AccountsHandler(
            config,
            AccountStore(engine),
            codes,
            provisioning,
            connections,
            sms or from_spec(config.sms),
            limiter,
            pepper,
            now_ms,
        )
        accounts.on_device_removed = fanout.disconnect
        keys = KeysHandler(
            accounts,
            KeyStore(engine),
            limiter,
            config.prekeys_low,
            lambda a, d, ot, kem: fanout.notify(
                a, d, {"type": "prekeys_low", "one_time_prekeys": ot, "kem_prekeys": kem}
            ),
        )
        groups_store = GroupStore(engine)
        handlers = Handlers(
            accounts=accounts,
            keys=keys,
            messages=MessagesHandler(
                accounts,
                groups_store,
                queue,
                limiter,
                franking_key,
                pepper,
                config.message_ttl_ms,
                now_ms,
                config.sends_per_device_s,
            ),
            groups=GroupsHandler(accounts, groups_store, limiter, now_ms),
            attachments=AttachmentsHandler(
                blobs, limiter, config.max_attachment_bytes, config.attachment_ttl_ms, now_ms
            ),
        )
        app.include_router(build_router(handlers))
        staff_side = await build_staff_side(
            engine, groups_store, blobs, local_limits, franking_key, pepper, config
        )
        moderation, reports_handler = staff_side.moderation, staff_side.reports
        standing = Standing(StatusStore(engine), now_ms)
        standing.on_banned = fanout.disconnect_account
        accounts.check_login = standing.check_login
        handlers.messages.check_send = standing.check_send
        handlers.groups.check_grow = standing.check_grow_groups

        async def status_changed() -> None:
            await standing.refresh()
            if cluster is not None:
                cluster.standing_changed()  # every node reloads, and closes a ban's sockets

        moderation.on_status_changed = status_changed
        await standing.refresh()
        app.include_router(build_admin_router(accounts, reports_handler, moderation))
        app.include_router(
            build_public_router(
                staff_side.transparency,
                staff_side.legal,
                moderation,
                now_ms,
            )
        )
        console = ConsoleHandler(
            SessionStore(engine),
            moderation,
            AuditLog(engine),
            pepper,
            int(config.console_idle_s * 1000),
            int(config.console_max_s * 1000),
            now_ms,
        )
        app.include_router(
            build_console_router(
                console,
                moderation,
                staff_side.legal,
                staff_side.transparency,
                now_ms,
                config.csp_report_file,
            )
        )
        app.include_router(build_site_router(staff_side.transparency, staff_side.legal, now_ms))
        state["push"] = PushService(
            accounts, handlers.messages, Deliveries(queue, config.delivery_window, fanout)
        )
        queue.start()
        state.update(queue=queue, handlers=handlers, engine=engine)
        tasks: list[asyncio.Task[Any]] = []
        kt_handler = KtHandler(KtStore(engine), staff_side.transparency, now_ms, lease)
        if cluster is not None:
            cluster.on_account_changed = accounts.forget_account
            cluster.on_signals = _caching(accounts)
            cluster.on_standing = _spawner(tasks, standing.refresh)
            cluster.on_kt = kt_handler.wake
            kt_handler.notify_cluster = cluster.kt_changed
            accounts.on_account_changed = cluster.account_changed
            tasks.append(asyncio.create_task(cluster.run()))
        if lease is not None:
            await lease.renew()
            tasks.append(asyncio.create_task(_lead(lease, kt_handler)))
        singleton: list[Callable[[int], Awaitable[object]]] = [
            codes.prune,
            provisioning.prune,
            blobs.prune,
            _notices_due(staff_side.legal),
            lambda now: groups_store.prune_departures(now - MEMBERSHIP_RETENTION_MS),
        ]
        tasks.append(asyncio.create_task(_maintain(config, lease, queue, singleton, connections)))
        # With signals, standing changes are pushed; the poll stays as a safety net
        # for changes made by parley-admin straight in the database.
        tasks.append(
            asyncio.create_task(standing.refresh_loop(10.0 if cluster is not None else 1.0))
        )
        with contextlib.suppress(Exception):
            await kt_handler.publish()  # an epoch failing here is retried by the loop
        state["kt"] = kt_handler
        app.include_router(build_kt_router(accounts, kt_handler))
        previous_removed = accounts.on_device_removed

        def keys_changed(account: str, device: int) -> None:
            previous_removed(account, device)
            kt_handler.request_epoch()

        accounts.on_device_removed = keys_changed
        accounts.on_keys_changed = kt_handler.request_epoch
        tasks.append(asyncio.create_task(kt_handler.loop(config.kt_epoch_s)))
        # Long-lived objects (routes, models, SQLAlchemy metadata) need no cycle
        # collection: freezing them keeps gen-2 pauses out of delivery latency.
        gc.collect()
        gc.freeze()
        # no host here: the log names no address (server/logs.py)
        if cluster is not None:
            log.info(
                "parley-server %s ready (%s database, cluster node)",
                __version__,
                engine.dialect.name,
            )
        else:
            log.info("parley-server %s ready (%s database)", __version__, engine.dialect.name)
        try:
            yield {"push": state["push"]}  # uvicorn hands it to each PushProtocol
        finally:
            # Bounded: whatever still holds the process after this is reported and
            # ended by the watchdog (server/watchdog.py) rather than hanging it.
            watchdog.arm(SHUTDOWN_DEADLINE_S)
            for task in tasks:
                task.cancel()
            # Awaited before the engine goes: a task cancelled in the middle of a
            # query must hand its connection back while the pool still exists.
            if tasks:
                await asyncio.wait(tasks, timeout=SHUTDOWN_DEADLINE_S / 2)
            await fanout.close_all()
            await queue.close()
            if lease is not None:
                with contextlib.suppress(Exception):
                    await lease.release()
            if redis is not None:
                with contextlib.suppress(Exception):
                    await redis.aclose()
            await engine.dispose()
            log.info("parley-server stopped; every submitted commit finished")

    app = FastAPI(
        title="Parley", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.parley = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        if is_html(request.url.path):  # the console and the public site: an error page
            return error_page(exc.http_status, exc.code, exc.message)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        return JSONResponse(
            error_body(exc.code, exc.message, **exc.details()), exc.http_status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if is_html(request.url.path):
            return error_page(400, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")
        return JSONResponse(
            error_body("invalid_request", f"{where}: {first.get('msg', 'invalid input')}"), 400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc.__cause__, ApiError):  # raised while FastAPI read the body (edge.py)
            return await api_error(request, exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        if is_html(request.url.path):
            return error_page(exc.status_code, code, str(exc.detail))
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)

    app.add_middleware(
        BodyLimit,
        default=config.max_body_bytes,
        attachments=config.max_attachment_bytes,
        reports=max(config.max_body_bytes, MAX_REPORT_BODY),
    )
    app.add_middleware(SecurityHeaders)  # the console and public pages: CSP, nosniff, no framing
    app.add_middleware(InternalErrors)
    return app


@dataclasses.dataclass(frozen=True, slots=True)
class StaffSide:
    moderation: ModerationHandler
    reports: ReportsHandler
    legal: LegalHandler
    transparency: TransparencyHandler


async def build_staff_side(
    engine: Any,
    groups: GroupStore,
    blobs: BlobStore,
    limiter: RateLimiter,
    franking_key: bytes,
    pepper: bytes,
    config: ServerConfig,
) -> StaffSide:
    """Moderation, lawful requests and the transparency log, shared by the server
    and ``parley-admin --data-dir``."""
    reports = ReportStore(engine)
    notices = NoticeStore(engine)
    audit = AuditLog(engine)
    moderation = ModerationHandler(
        StaffStore(engine), reports, StatusStore(engine), notices, audit, groups, pepper, now_ms
    )
    log = TransparencyHandler(
        TransparencyStore(engine),
        SigningKey.from_private_bytes(await load_or_create(engine, "log")),
        now_ms,
    )
    legal_store = LegalStore(engine)
    legal = LegalHandler(
        legal_store,
        AccountStore(engine),
        DisclosureReader(engine),
        log,
        audit,
        notices,
        SigningKey.from_private_bytes(await load_or_create(engine, "disclosure")),
        config.ip_retention_ms,
        now_ms,
    )
    # Reports are limited from their own table (the limit survives a restart), so
    # ``limiter`` is no longer used here; the parameter stays for parley-admin.
    reports_handler = ReportsHandler(reports, groups, blobs, franking_key, now_ms)
    return StaffSide(moderation, reports_handler, legal, log)


def _notices_due(legal: LegalHandler) -> Callable[[int], Awaitable[object]]:
    async def due(_now: int) -> object:
        return await legal.send_due_notices()

    return due


async def _maintain(
    config: ServerConfig,
    lease: Lease | None,
    queue: MessageQueue,
    singleton: list[Callable[[int], Awaitable[object]]],
    connections: ConnectionLog,
) -> None:
    """Expire and prune on a schedule, on the lease holder only (notices must go out
    once); a failure is logged and retried next round."""
    while True:
        now = now_ms()
        try:
            if lease is None or lease.held:
                expired = await queue.prune(now, now - SENT_KEY_RETENTION_MS)
                pruned = await connections.prune(now - config.ip_retention_ms)
                for work in singleton:
                    await work(now)
                if expired or pruned:
                    log.info(
                        "maintenance: %d expired messages, %d connection-log rows pruned",
                        expired,
                        pruned,
                    )
        except Exception as exc:
            log.warning("maintenance failed: %s", type(exc).__name__)
        await asyncio.sleep(config.maintenance_interval_s)


async def _lead(lease: Lease, kt: KtHandler) -> None:
    """Hold or contend for the lease; a node that takes it publishes an epoch soon."""
    while True:
        await asyncio.sleep(RENEW_S)
        was = lease.held
        try:
            held = await lease.renew()
        except Exception as exc:
            log.warning("lease renewal failed: %s", type(exc).__name__)
            continue
        if held and not was:
            kt.wake()


def _caching(accounts: AccountsHandler) -> Callable[[bool], None]:
    def signals(up: bool) -> None:
        accounts.forget_all()  # what was missed while signals were down
        accounts.caching = up

    return signals


def _spawner(
    tasks: list[asyncio.Task[Any]], work: Callable[[], Awaitable[None]]
) -> Callable[[], None]:
    """A signal handler is synchronous: it starts the work and returns."""

    def start() -> None:
        task = asyncio.ensure_future(work())
        tasks.append(task)
        task.add_done_callback(lambda t: tasks.remove(t) if t in tasks else None)

    return start
