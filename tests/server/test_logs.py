"""The server log's privacy filter (``server/logs.py``), record by record, and a check
that Parley's own log calls pass nothing but exception types and counts."""

from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path

import pytest

from parley.server.logs import PrivateFilter, redact

SRC = Path(__file__).resolve().parents[2] / "src" / "parley"


def _record(
    name: str,
    msg: str,
    *args: object,
    level: int = logging.INFO,
    exc_info: object = None,
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, exc_info)  # type: ignore[arg-type]


def _shown(record: logging.LogRecord) -> str | None:
    """The formatted line, or None when the filter drops the record."""
    if not PrivateFilter().filter(record):
        return None
    return logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)


@pytest.mark.parametrize(
    "secret",
    [
        "127.0.0.1",
        "10.1.2.3:59470",
        "::1",
        "[::1]:8470",
        "2001:db8::8a2e:370:7334",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "fe80::1%eth0",
        "::ffff:192.0.2.1",
        "+14155550101",
        "+44 20 7946 0958",
        "14155550101",
        "3f2b8c1e-9a4d-4c5e-8f7a-1b2c3d4e5f60",  # an account id
        "9f86d081884c7d659a2feaa0c55ad015",  # a message id
        "0123456789abcdef",  # a staff id
        "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTA",  # base64 with a digit
        "dGhpcyBpcyBhIGxvbmcgYmFzZTY0IHRva2Vu_-abcdefghij",  # base64url, 32+
        "3f2b8c1e-9a4d-4c5e-8f7a-1b2c3d4e5f60.1.q2Xy8Kf0mZb1pQ3rLw9sVt4uN6oA7cE5dH2jG8iB0kM",
    ],
)
def test_redact_removes_addresses_numbers_ids_and_tokens(secret: str) -> None:
    shown = redact(f"before {secret} after")
    assert secret not in shown and shown.startswith("before [") and shown.endswith("] after")


def test_redact_removes_a_database_password() -> None:
    shown = redact("cannot connect to postgresql://parley:s3cr3t@db.internal/parley")
    assert "s3cr3t" not in shown and "[userinfo]@db.internal" in shown


@pytest.mark.parametrize(
    "harmless",
    [
        "maintenance: 12 expired messages, 3 connection-log rows pruned",
        "internal error: UnicodeEncodeError",
        "key directory epoch failed: ConnectionRefusedError",
        "parley-server 0.1.0 ready (postgresql database)",
        "at 16:14:53",
        "Started server process [4242]",
    ],
)
def test_redact_keeps_operational_lines(harmless: str) -> None:
    assert redact(harmless) == harmless


def test_uvicorn_per_connection_lines_are_dropped() -> None:
    accepted = '%s - "WebSocket %s" [accepted]'
    assert _shown(_record("uvicorn.error", accepted, "127.0.0.1:59470", "/v1/websocket")) is None
    assert _shown(_record("uvicorn.error", '%s - "WebSocket %s" 403', "::1:1", "/x")) is None
    assert _shown(_record("uvicorn.error", "connection open")) is None
    assert _shown(_record("uvicorn.error", "connection closed")) is None
    assert _shown(_record("uvicorn.access", "%s - %s", "127.0.0.1:1", "GET /")) is None
    frame = '< TEXT \'{"type": "ack", "ids": ["9f86d081884c"]}\' [40 bytes]'
    assert _shown(_record("websockets.server", frame, level=logging.DEBUG)) is None
    assert (
        _shown(_record("uvicorn.error", "%sHTTP connection made", "127.0.0.1:5 - ", level=5))
        is None
    )


def test_uvicorn_start_up_line_names_the_port_only() -> None:
    line = _shown(
        _record(
            "uvicorn.error",
            "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)",
            "http",
            "192.0.2.7",
            8470,
        )
    )
    assert line == "INFO uvicorn.error: parley-server listening on port 8470"


def test_uvicorn_life_cycle_lines_and_warnings_are_kept_redacted() -> None:
    assert _shown(_record("uvicorn.error", "Application startup complete.")) is not None
    warning = _shown(
        _record("uvicorn.error", "Invalid HTTP request from %s", "10.0.0.9", level=logging.WARNING)
    )
    assert warning == "WARNING uvicorn.error: Invalid HTTP request from [ip]"


def test_a_traceback_becomes_its_exception_type_and_redacted_message() -> None:
    try:
        raise KeyError("3f2b8c1e-9a4d-4c5e-8f7a-1b2c3d4e5f60")
    except KeyError:
        record = _record("asyncio", "Task exception", level=logging.ERROR, exc_info=sys.exc_info())
    line = _shown(record)
    assert line == "ERROR asyncio: Task exception (KeyError: '[id]')"
    assert record.exc_info is None and record.exc_text is None


def test_a_traceback_passed_as_text_is_cut_to_its_last_line() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app.py", line 3, in handler\n'
        "    lookup(phone='+14155550101')\n"
        "LookupError: no account for +14155550101"
    )
    line = _shown(_record("uvicorn.error", text, level=logging.ERROR))
    assert line == "ERROR uvicorn.error: (LookupError: no account for [phone])"


def test_a_record_is_one_line_and_shows_controls_as_escapes() -> None:
    line = _shown(_record("parley.server", "failed: %s", "x\n2026-01-01 INFO forged\x1b[2J"))
    assert line == "INFO parley.server: failed: x\\n2026-01-01 INFO forged\\x1b[2J"


def test_a_broken_log_call_does_not_print_its_arguments() -> None:
    line = _shown(_record("parley.server", "%s %s", "+14155550101"))
    assert line is not None and "+14155550101" not in line and "unformattable" in line


# -- Parley's own log calls -----------------------------------------------------------------------

_LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
# What a log call may pass besides its message: an exception's type name, a count,
# the version, the database dialect, or text already passed through ``redact``.
_ALLOWED_NAMES = {"expired", "pruned", "__version__", "kind.__name__"}
_ALLOWED_ATTRIBUTES = {"engine.dialect.name"}


def _allowed(arg: ast.expr) -> bool:
    source = ast.unparse(arg)
    if source in _ALLOWED_NAMES or source in _ALLOWED_ATTRIBUTES:
        return True
    if isinstance(arg, ast.Call) and ast.unparse(arg.func) == "redact":
        return True
    return (
        isinstance(arg, ast.Attribute)
        and arg.attr == "__name__"
        and isinstance(arg.value, ast.Call)
        and ast.unparse(arg.value.func) == "type"
    )


def _log_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LEVELS
            ):
                owner = ast.unparse(node.func.value)
                if owner in ("log", "logger", "self.logger") or owner.startswith(
                    "logging.getLogger("
                ):
                    calls.append((f"{path.relative_to(SRC)}:{node.lineno}", node))
    return calls


def test_parleys_own_log_calls_pass_only_exception_types_and_counts() -> None:
    calls = _log_calls()
    assert len(calls) >= 6  # the scan finds the server's log calls
    bad = []
    for where, call in calls:
        message, *args = call.args
        if not isinstance(message, ast.Constant) or not isinstance(message.value, str):
            bad.append(f"{where}: the message is not a constant string")
        bad += [f"{where}: passes {ast.unparse(a)}" for a in args if not _allowed(a)]
        bad += [
            f"{where}: {k.arg}="
            for k in call.keywords
            if k.arg in ("exc_info", "stack_info", "extra")
        ]
    assert not bad, bad
