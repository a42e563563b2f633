"""``parley daemon``: one process holds the profile open and the push socket, receives
in real time, and serves JSON-RPC 2.0 on a Unix socket (``parley.client.rpc``).

Theory of operation. The daemon opens the profile once (Argon2id runs once), takes
``PROFILE/daemon.lock`` (one daemon per profile), binds the socket 0600 (a stale
socket file is removed; a socket another daemon answers on is refused), and starts
the ``Client``'s listener. Every request runs in the app's turn, so a request and
a received batch never interleave inside the profile; the listener commits each
batch before it acknowledges it, so a daemon killed at any moment loses nothing and
shows nothing twice. What happens (messages, receipts, refusals, alarms, notes)
goes, as notifications, to every connection that subscribed (``subscribeReceive``,
or ``receive`` with ``follow``); what no subscriber was sent is kept in memory (up to
``MAX_BACKLOG``) for the next ``receive`` call (``parley receive``). The notes an
operation makes while it works ("cannot reach the server; retrying") go to the
connection that asked, as ``note`` notifications before the answer.

Nothing another person chose (texts, numbers, names, ids) is ever logged: the log
says that the daemon started and stopped, and names an internal failure by type.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.client import rpc
from parley.client.app import ClientError
from parley.client.core import Client, Event, note_sink
from parley.display import with_iso
from parley.errors import ParleyError

MAX_BACKLOG = 10_000  # events kept for `receive` while nobody subscribes
MAX_OUTBOX = (
    10_000  # messages queued for one connection; a reader that falls further behind is closed
)
SELF_CHECK_S = 600.0  # the key directory is checked, prekeys refilled, this often
QUICK_CHECK_S = 60.0  # a command's self-check within this much of the last one is answered from it
RECEIVE_KINDS = ("message", "refusal", "alarm", "note")  # what `receive` replays


class InvalidParams(Exception):
    """The request's parameters do not fit the method (-32602)."""


def log(line: str) -> None:
    """The daemon's log: events and failure types only, never content."""
    sys.stderr.write(f"parley daemon: {line}\n")
    sys.stderr.flush()


# -- parameters --------------------------------------------------------------------------------------


class Params:
    """A request's named parameters, checked by type; unknown names are refused."""

    def __init__(self, raw: object, allowed: frozenset[str]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidParams("params must be an object of named parameters")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise InvalidParams(f"unknown parameter {unknown[0]!r}")
        self._raw: dict[str, Any] = raw

    def _get(self, name: str, kind: type | tuple[type, ...], default: Any, required: bool) -> Any:
        if name not in self._raw or self._raw[name] is None:
            if required:
                raise InvalidParams(f"missing parameter {name!r}")
            return default
        value = self._raw[name]
        if isinstance(value, bool) and kind is not bool:
            raise InvalidParams(f"{name!r} has the wrong type")
        if not isinstance(value, kind):
            raise InvalidParams(f"{name!r} has the wrong type")
        return value

    def text(self, name: str) -> str:
        return str(self._get(name, str, "", True))

    def opt_text(self, name: str) -> str | None:
        value = self._get(name, str, None, False)
        return None if value is None else str(value)

    def number(self, name: str, default: int | None = None) -> int:
        value = self._get(name, int, default, default is None)
        return int(value)

    def opt_number(self, name: str) -> int | None:
        value = self._get(name, int, None, False)
        return None if value is None else int(value)

    def flag(self, name: str, default: bool = False) -> bool:
        return bool(self._get(name, bool, default, False))

    def opt_flag(self, name: str) -> bool | None:
        value = self._get(name, bool, None, False)
        return None if value is None else bool(value)

    def texts(self, name: str, required: bool = False) -> list[str]:
        value = self._get(name, list, [], required)
        if not all(isinstance(v, str) for v in value):
            raise InvalidParams(f"{name!r} must be a list of strings")
        return [str(v) for v in value]


Handler = Callable[["Daemon", "Connection", Params], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    params: frozenset[str]
    run: Handler


METHODS: dict[str, Method] = {}


def method(name: str, *params: str) -> Callable[[Handler], Handler]:
    def register(run: Handler) -> Handler:
        METHODS[name] = Method(name, frozenset(params), run)
        return run

    return register


# -- connections -------------------------------------------------------------------------------------


class Connection:
    """One caller: requests answered in order; notifications queued beside the answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.subscribed = False
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_OUTBOX)
        self._writing = asyncio.create_task(self._write())

    def push(self, message: dict[str, Any] | list[dict[str, Any]]) -> None:
        try:
            data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        except (TypeError, ValueError):  # a result JSON cannot carry: a bug, said as one
            log("internal error: an answer that is not JSON")
            rid = message.get("id") if isinstance(message, dict) else None
            data = rpc.encode(_error(rid, rpc.INTERNAL_ERROR, "internal error"))
        try:
            self._outbox.put_nowait(data)
        except asyncio.QueueFull:
            log("a connection fell too far behind and was closed")
            self.subscribed = False
            self.writer.close()

    def notify(self, name: str, params: dict[str, Any]) -> None:
        self.push({"jsonrpc": "2.0", "method": name, "params": params})

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while (data := await self._outbox.get()) is not None:
                self.writer.write(data)
                await self.writer.drain()

    async def close(self) -> None:
        self.subscribed = False
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(None)
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(self._writing, 5)
        self._writing.cancel()
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def _peer_is_us(writer: asyncio.StreamWriter) -> bool:
    """Only this user's processes may drive the daemon (the socket is 0600 anyway)."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


# -- the daemon --------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, client: Client, path: Path) -> None:
        self.client = client
        self.path = path
        self.account = ""
        self.connections: set[Connection] = set()
        self.backlog: deque[Event] = deque(maxlen=MAX_BACKLOG)
        self._checked: dict[str, tuple[float, Any]] = {}
        self._stop = asyncio.Event()

    # -- serving ------------------------------------------------------------------------------------

    async def serve(self) -> None:
        me = await self.client.open()
        self.account = str(me["phone"])
        server = await _bind(self.path, self._connected)
        self.client.listen()
        tasks = [
            asyncio.create_task(self._pump()),
            asyncio.create_task(self._watch_listener()),
            asyncio.create_task(self._self_check()),
        ]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log(f"serving JSON-RPC on {self.path}")
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            server.close()
            for conn in list(self.connections):
                await conn.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.close()
            _unlink_if_socket(self.path)
            log("stopped")

    def stop(self) -> None:
        self._stop.set()

    async def _watch_listener(self) -> None:
        """Keep receiving: a listener that ended on an error is started again, waiting
        longer each time (1 s up to 60 s)."""
        wait = 1.0
        while True:
            task = self.client.listen()
            started = time.monotonic()
            try:
                await task
            except ParleyError as exc:
                log(f"receiving stopped ({exc.code}); starting again in {wait:.0f} s")
            except Exception as exc:
                log(f"receiving failed ({type(exc).__name__}); starting again in {wait:.0f} s")
            if time.monotonic() - started > 60:
                wait = 1.0
            await asyncio.sleep(wait)
            wait = min(wait * 2, 60.0)

    async def _self_check(self) -> None:
        while True:
            for name in ("keysCheck", "maintainKeys"):
                with contextlib.suppress(ParleyError):
                    await self._quick(name, force=True)
            await asyncio.sleep(SELF_CHECK_S)

    async def _quick(self, name: str, force: bool = False) -> Any:
        """The self-check every command starts with, answered from the last one when it is
        recent (the daemon runs it itself every ``SELF_CHECK_S``)."""
        last = self._checked.get(name)
        if not force and last is not None and time.monotonic() - last[0] < QUICK_CHECK_S:
            return last[1]
        app = self.client.app
        result = await (
            app.keys_check(retries=0) if name == "keysCheck" else app.maintain_keys(retries=0)
        )
        self._checked[name] = (time.monotonic(), result)
        return result

    async def _pump(self) -> None:
        async for event in self.client.events():
            self.dispatch(event)

    def dispatch(self, event: Event) -> None:
        name, params = self.notification(event)
        delivered = False
        for conn in list(self.connections):
            if conn.subscribed:
                conn.notify(name, params)
                delivered = True
        if not delivered and event.kind in RECEIVE_KINDS:
            self.backlog.append(event)

    def notification(self, event: Event) -> tuple[str, dict[str, Any]]:
        """An event as signal-cli names it: an incoming message is ``receive``."""
        if event.kind == "message":
            return "receive", {"account": self.account, "message": public_message(event.data)}
        return event.kind, dict(event.data)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not _peer_is_us(writer):
            writer.close()
            return
        conn = Connection(reader, writer)
        self.connections.add(conn)
        try:
            await self._serve_connection(conn)
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections.discard(conn)
            await conn.close()

    async def _serve_connection(self, conn: Connection) -> None:
        while True:
            try:
                line = await conn.reader.readline()
            except ValueError:  # longer than MAX_LINE: the rest cannot be framed
                conn.push(_error(None, rpc.INVALID_REQUEST, "request too large"))
                return
            if not line:
                return
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError:
                conn.push(_error(None, rpc.PARSE_ERROR, "parse error"))
                continue
            if isinstance(
                request, list
            ):  # a batch: one array of answers, none if all were notifications
                if not request:
                    conn.push(_error(None, rpc.INVALID_REQUEST, "empty batch"))
                    continue
                answers = [a for r in request if (a := await self.answer(conn, r)) is not None]
                if answers:
                    conn.push(answers)
                continue
            answer = await self.answer(conn, request)
            if answer is not None:
                conn.push(answer)

    async def answer(self, conn: Connection, request: object) -> dict[str, Any] | None:
        """The answer to one request (None for a notification). Never raises."""
        if not isinstance(request, dict):
            return _error(None, rpc.INVALID_REQUEST, "invalid request")
        rid = request.get("id")
        if not (rid is None or isinstance(rid, str) or type(rid) is int):
            return _error(None, rpc.INVALID_REQUEST, "invalid request id")
        name = request.get("method")
        if request.get("jsonrpc") != "2.0" or not isinstance(name, str):
            return _error(rid, rpc.INVALID_REQUEST, "invalid request")
        notification = "id" not in request
        found = METHODS.get(name)
        if found is None:
            return None if notification else _error(rid, rpc.METHOD_NOT_FOUND, "method not found")
        token = note_sink.set(lambda line: conn.notify("note", {"text": line}))
        try:
            result = await found.run(self, conn, Params(request.get("params"), found.params))
        except InvalidParams as exc:
            answer = _error(rid, rpc.INVALID_PARAMS, f"invalid params: {exc}")
        except ParleyError as exc:
            answer = _error(rid, rpc.APPLICATION_ERROR, exc.message, rpc.error_data(exc))
        except Exception as exc:  # the last line of defence: one request, never the daemon
            log(f"internal error in a request ({type(exc).__name__})")
            answer = _error(rid, rpc.INTERNAL_ERROR, "internal error")
        else:
            answer = {"jsonrpc": "2.0", "id": rid, "result": result}
        finally:
            note_sink.reset(token)
        return None if notification else answer


def _error(rid: object, code: int, message: str, data: object = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": rid, "error": error}


def public_message(data: dict[str, Any]) -> dict[str, Any]:
    """A message as notifications, `receive` and `listMessages` carry it: what
    ``receive --json`` prints (no key material), with ``sent_at_iso``."""
    return with_iso(dict(data), "sent_at")


# -- the socket --------------------------------------------------------------------------------------


def _answers(path: Path) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def _unlink_if_socket(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_socket():
            path.unlink()


async def _bind(
    path: Path,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> asyncio.Server:
    """Listen on ``path``, created 0600 (the umask is narrowed around bind: no moment
    when another user could connect)."""
    if path.exists() or path.is_symlink():
        if not path.is_socket():
            raise ClientError(f"{path} exists and is not a socket; not replacing it")
        if _answers(path):
            raise ClientError(f"a daemon already answers on {path}")
        path.unlink()  # stale: its daemon is gone
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handler, path=str(path), limit=rpc.MAX_LINE)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


def _lock(profile_dir: Path) -> int:
    """``PROFILE/daemon.lock``, held while the daemon runs: one daemon per profile."""
    profile_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(profile_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ClientError(f"a daemon already runs for the profile in {profile_dir}") from None
    return fd


async def run(client: Client, profile_dir: Path, path: Path) -> None:
    """Serve until SIGTERM or SIGINT."""
    fd = _lock(profile_dir)
    try:
        await Daemon(client, path).serve()
    finally:
        os.close(fd)


# -- the methods -------------------------------------------------------------------------------------
# Names follow signal-cli where it has one (send, receive, subscribeReceive, listGroups,
# listContacts, listDevices, trust, removeDevice); the rest are Parley's, in its style.


# -- the methods -------------------------------------------------------------------------------------
# Names follow signal-cli where it has one (send, receive, subscribeReceive, listGroups,
# listContacts, listDevices, trust, removeDevice, version); the rest are Parley's.
# Local reads run in the app's turn; operations take it themselves.


@method("version")
async def _version(d: Daemon, conn: Connection, p: Params) -> Any:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"version": version("parley")}
    except PackageNotFoundError:
        return {"version": "unknown"}


@method("whoami")
async def _whoami(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return d.client.whoami()


@method("alarms")
async def _alarms(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return d.client.alarms()


@method("send", "recipient", "groupId", "message", "attachments")
async def _send(d: Daemon, conn: Connection, p: Params) -> Any:
    text = p.opt_text("message") or ""
    files = [Path(a) for a in p.texts("attachments")]
    if any(not f.is_absolute() for f in files):
        raise InvalidParams("attachments are absolute paths")
    group, recipient = p.opt_text("groupId"), p.opt_text("recipient")
    if (group is None) == (recipient is None):
        raise InvalidParams("give 'recipient' or 'groupId'")
    if group is not None:
        if files:
            raise ClientError("attachments go to 1:1 chats only")
        return {"id": await d.client.app.group_send(group, text)}
    assert recipient is not None
    if not recipient.startswith("+"):
        raise InvalidParams("'recipient' is a phone number (+ and the country code)")
    return {"id": await d.client.send(recipient, text, files)}


@method("receive", "follow")
async def _receive(d: Daemon, conn: Connection, p: Params) -> Any:
    """What the daemon received that no subscriber was sent (taken: each once); with
    ``follow``, this connection is then sent what comes next."""
    events = [d.notification(e) for e in d.backlog]
    d.backlog.clear()
    if p.flag("follow"):
        conn.subscribed = True
    return {"events": [{"method": name, "params": params} for name, params in events]}


@method("subscribeReceive")
async def _subscribe(d: Daemon, conn: Connection, p: Params) -> Any:
    conn.subscribed = True
    return True


@method("unsubscribeReceive")
async def _unsubscribe(d: Daemon, conn: Connection, p: Params) -> Any:
    conn.subscribed = False
    return True


@method("listChats")
async def _chats(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return [c.to_dict() for c in d.client.chats()]


@method("listMessages", "chat", "limit", "before")
async def _messages(d: Daemon, conn: Connection, p: Params) -> Any:
    limit = p.number("limit", 50)
    if not 0 < limit <= 1000:
        raise InvalidParams("'limit' is 1..1000")
    async with d.client.turn():
        found = d.client.messages(p.text("chat"), limit, p.opt_number("before"))
    out = []
    for m in found:
        public = m.public()
        public["attachments"] = [{"id": a.id, **a.summary()} for a in m.attachments]
        public["seq"] = m.seq  # page back with "before"
        out.append(public_message(public))
    return out


@method("history", "chat", "limit")
async def _history(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return d.client.app.history(p.text("chat"), p.opt_number("limit"))


@method("search", "text", "limit")
async def _search(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return [m.public() for m in d.client.search(p.text("text"), p.number("limit", 100))]


@method("listContacts")
async def _contacts(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return [c.public() for c in d.client.contacts()]


@method("chatId", "chat")
async def _chat_id(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return d.client.chat_id(p.text("chat"))


@method("groupNames")
async def _group_names(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return d.client.app.group_names()


@method("export")
async def _export(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return d.client.app.export()


@method("markRead", "chat")
async def _mark_read(d: Daemon, conn: Connection, p: Params) -> Any:
    return {"unread": await d.client.mark_read(p.text("chat"))}


@method("createGroup", "name", "members")
async def _group_create(d: Daemon, conn: Connection, p: Params) -> Any:
    return {"id": await d.client.app.group_create(p.text("name"), p.texts("members", True))}


@method("updateGroup", "groupId", "addMember", "removeMember")
async def _group_change(d: Daemon, conn: Connection, p: Params) -> Any:
    add, remove = p.opt_text("addMember"), p.opt_text("removeMember")
    if (add is None) == (remove is None):
        raise InvalidParams("give 'addMember' or 'removeMember'")
    await d.client.app.group_change(p.text("groupId"), add or remove or "", add=add is not None)
    return None


@method("listGroups")
async def _group_list(d: Daemon, conn: Connection, p: Params) -> Any:
    return await d.client.app.group_list()


@method("safetyNumber", "recipient")
async def _safety_number(d: Daemon, conn: Connection, p: Params) -> Any:
    return {"safetyNumber": await d.client.app.safety_number(p.text("recipient"))}


@method("trust", "recipient", "safetyNumber")
async def _trust(d: Daemon, conn: Connection, p: Params) -> Any:
    await d.client.app.trust(p.text("recipient"), p.text("safetyNumber"))
    return None


@method("listDevices")
async def _devices(d: Daemon, conn: Connection, p: Params) -> Any:
    return await d.client.app.devices()


@method("linkCode")
async def _link_code(d: Daemon, conn: Connection, p: Params) -> Any:
    return {"code": await d.client.app.link_code()}


@method("removeDevice", "deviceId")
async def _unlink(d: Daemon, conn: Connection, p: Params) -> Any:
    await d.client.app.unlink(p.number("deviceId"))
    return None


@method("report", "id", "reason", "context", "comment")
async def _report(d: Daemon, conn: Connection, p: Params) -> Any:
    return await d.client.app.report(
        p.text("id"), p.text("reason"), p.number("context", 0), p.opt_text("comment") or ""
    )


@method("notices")
async def _notices(d: Daemon, conn: Connection, p: Params) -> Any:
    return await d.client.app.notices()


@method("policy", "accept")
async def _policy(d: Daemon, conn: Connection, p: Params) -> Any:
    return await d.client.app.policy(p.flag("accept"))


@method("policyVersion")
async def _policy_version(d: Daemon, conn: Connection, p: Params) -> Any:
    """The server's current policy version, verified (None if it has none or is away)."""
    from parley.client.app import verified_policy

    async def act(session: Any) -> int | None:
        try:
            return int((await verified_policy(session.api))["version"])
        except ParleyError:
            return None

    return await d.client.app.run(act, retries=0)


@method("policyWarning", "version")
async def _policy_warning(d: Daemon, conn: Connection, p: Params) -> Any:
    async with d.client.turn():
        return d.client.app.policy_warning(p.opt_number("version"))


@method("keysCheck", "ack", "quick")
async def _keys_check(d: Daemon, conn: Connection, p: Params) -> Any:
    if p.flag("quick"):
        return await d._quick("keysCheck")
    return await d.client.app.keys_check(ack=p.flag("ack"))


@method("maintainKeys", "quick")
async def _maintain_keys(d: Daemon, conn: Connection, p: Params) -> Any:
    if p.flag("quick"):
        return await d._quick("maintainKeys")
    return await d.client.app.maintain_keys()


@method("keysHead")
async def _keys_head(d: Daemon, conn: Connection, p: Params) -> Any:
    return {"head": await d.client.app.keys_head()}


@method("settings", "readReceipts")
async def _settings(d: Daemon, conn: Connection, p: Params) -> Any:
    current = await d.client.app.settings(read_receipts=p.opt_flag("readReceipts"))
    return {"readReceipts": current["read_receipts"]}


@method("saveAttachments", "id", "dir")
async def _save_attachments(d: Daemon, conn: Connection, p: Params) -> Any:
    directory = Path(p.text("dir"))
    if not directory.is_absolute():
        raise InvalidParams("'dir' is an absolute path")
    sizes: list[tuple[str, int]] = []
    saved = await d.client.app.save_attachments(
        p.text("id"), directory, lambda name, size: sizes.append((name, size))
    )
    return [
        {"path": str(path), "name": name, "size": size}
        for path, (name, size) in zip(saved, sizes, strict=True)
    ]
