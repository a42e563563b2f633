"""JSON-RPC 2.0 over a Unix socket, as ``parley daemon`` speaks it: the pieces the
daemon and its callers share, standard library only (a ``parley`` command that
talks to the daemon must start without loading the cryptography).

Framing follows signal-cli's socket mode: one JSON object per line (UTF-8,
``\\n``-terminated), requests and answers in both directions, notifications
(no ``id``) from the daemon. A line is at most ``MAX_LINE`` bytes.

Errors (https://www.jsonrpc.org/specification#error_object): the standard
codes for bad JSON, a bad request, an unknown method and wrong parameters, and
``APPLICATION_ERROR`` for an operation Parley refused, with the typed error's
stable code in ``data.code`` (``client_error``, ``identity_changed``,
``wrong_passphrase``, a server's code such as ``rate_limited``...), its kind
in ``data.kind`` (``server``, ``unreachable``, ``key_transparency`` or
``parley``) and, for a server's refusal, ``data.status`` and ``data.details``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from parley.errors import ParleyError, ServerError, Unreachable

SOCKET_NAME = "daemon.sock"
SOCKET_ENV = "PARLEY_DAEMON_SOCKET"
MAX_LINE = 1024 * 1024  # one request or answer, in bytes

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
APPLICATION_ERROR = -32000


def socket_path(profile: Path) -> Path:
    """Where a ``parley`` command looks for the profile's daemon: ``PARLEY_DAEMON_SOCKET``
    if set, else ``PROFILE/daemon.sock``."""
    env = os.environ.get(SOCKET_ENV)
    return Path(env) if env else profile / SOCKET_NAME


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def error_data(exc: ParleyError) -> dict[str, Any]:
    """What travels in ``error.data`` for a typed error."""
    if isinstance(exc, Unreachable):
        return {"code": exc.code, "kind": "unreachable"}
    if isinstance(exc, ServerError):
        return {
            "code": exc.code,
            "kind": "server",
            "status": exc.status,
            "details": dict(exc.details),
        }
    if exc.code == "key_transparency":
        return {"code": exc.code, "kind": "key_transparency"}
    return {"code": exc.code, "kind": "parley"}


def error_from(error: dict[str, Any]) -> ParleyError:
    """The typed error an answer's ``error`` object stands for."""
    message = str(error.get("message") or "the daemon refused")
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    assert isinstance(data, dict)
    kind, code = data.get("kind"), str(data.get("code") or "daemon_error")
    if kind == "unreachable":
        return Unreachable(message)
    if kind == "server":
        details = data.get("details")
        status = data.get("status")
        return ServerError(
            status if isinstance(status, int) else 0,
            code,
            message,
            details if isinstance(details, dict) else {},
        )
    if kind == "key_transparency":
        from parley.client.kt import KeyTransparencyError  # only when one happened

        return KeyTransparencyError(message)
    exc = ParleyError(message)
    exc.code = code
    return exc


class Connection:
    """A blocking connection to a daemon, for one command: calls in order, the
    notifications that come before an answer handed to ``on_notification``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._next = 0

    @classmethod
    def open(cls, path: Path, timeout: float = 1.0) -> Connection | None:
        """A connection to the daemon at ``path``, or None when none answers there
        (no socket file, a stale one, or one that is not this user's)."""
        try:
            st = path.stat()
        except OSError:
            return None
        if st.st_uid != os.getuid():
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            return None
        sock.settimeout(None)
        return cls(sock)

    def close(self) -> None:
        self._sock.close()

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        self._next += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next, "method": method}
        if params is not None:
            request["params"] = params
        self._sock.sendall(encode(request))
        return self._next

    def read(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message from the daemon; None after ``timeout`` seconds without one."""
        self._sock.settimeout(timeout)
        try:
            while b"\n" not in self._buffer:
                if len(self._buffer) > MAX_LINE:
                    raise Unreachable("the daemon sent a line that is too long")
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise Unreachable("the daemon closed the connection")
                self._buffer += chunk
        except TimeoutError:
            return None
        finally:
            self._sock.settimeout(None)
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise Unreachable("the daemon sent something that is not JSON") from exc
        if not isinstance(message, dict):
            raise Unreachable("the daemon sent something that is not JSON-RPC")
        return message
