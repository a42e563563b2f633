"""What the server logs, and what it never logs.

Theory of operation: every record from every logger (Parley's own, uvicorn's,
the websockets library's, SQLAlchemy's, Python warnings) reaches one handler,
on stderr, and that handler's ``PrivateFilter`` has the last word:

1. **Per-connection lines are dropped.** uvicorn's websocket implementations
   log each handshake (``127.0.0.1:59470 - "WebSocket /v1/websocket"
   [accepted]``) on ``uvicorn.error``, the websockets library logs "connection
   open"/"connection closed" there too, and at DEBUG/TRACE both dump
   connections and frames. From ``uvicorn*`` and ``websockets*`` only
   warnings, errors and the process's own life-cycle lines (start, ready,
   shutting down) pass. uvicorn's start-up line names the bound address; it is
   rewritten to "parley-server listening on port N".
2. **No traceback.** A record's ``exc_info`` and ``stack_info`` (and a
   traceback passed as text, as Starlette does for a failed start-up) are
   replaced by the exception's type and its redacted message, so a traceback
   cannot carry request data into the log. A record is one line: controls and
   newlines are shown as escapes (``display.visible``), so text inside a
   message cannot forge another record.
3. **Redaction.** What remains is formatted, then anything that looks like an IP
   address (v4 or v6, with a port), a phone number, an account id (UUID), a
   long hex or base64 token (message ids, credentials, keys) or a URL's
   user:password is replaced by a placeholder (``[ip]``, ``[phone]``,
   ``[id]``, ``[token]``, ``[userinfo]``).

The filter is the backstop; the rule comes first: Parley's own log calls pass
only exception type names and counts, never an address, number, id or
credential (``tests/server/test_logs.py`` checks both, and
``tests/e2e/test_no_personal_data_in_logs.py`` searches a real server's output
after traffic on every kind of route).

The console SMS backend (``--sms console``) writes "SMS to PHONE: CODE" to
stdout, standing in for a carrier during local trials; it is not a log record
and goes nowhere near this handler.
"""

from __future__ import annotations

import logging
import re
import sys
import types
from typing import Any

from parley.display import visible

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries whose INFO and lower lines are per-connection chatter (or frame dumps).
_CONNECTION_LOGGERS = ("uvicorn", "websockets")
# The life-cycle lines of uvicorn kept at INFO (message templates, before formatting).
_LIFECYCLE = frozenset(
    {
        "Started server process [%d]",
        "Finished server process [%d]",
        "Waiting for application startup.",
        "Application startup complete.",
        "Waiting for application shutdown.",
        "Application shutdown complete.",
        "Shutting down",
        "Waiting for connections to close. (CTRL+C to force quit)",
        "Waiting for background tasks to complete. (CTRL+C to force quit)",
    }
)
_RUNNING = "Uvicorn running on "
_TRACEBACK = "Traceback (most recent call last):"

_HEX = "[0-9A-Fa-f]"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host: a database URL's password is a credential
    (re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]*@"), "[userinfo]@"),
    (re.compile(rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"), "[id]"),
    # IPv6, bracketed or not, with an optional zone, embedded IPv4 and port; a
    # candidate must hold "::" or at least three colons (so "16:14:53" is a time)
    (
        re.compile(
            r"\[?(?<![\w:.])(?=[0-9A-Fa-f:]*::|(?:[0-9A-Fa-f]{0,4}:){3})"
            r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})"
            r"(?:%[\w.]+)?\]?(?::\d{1,5})?(?![\w:])"
        ),
        "[ip]",
    ),
    (re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])"), "[ip]"),
    # E.164 and written-out international numbers; then any long digit run
    (re.compile(r"\+[0-9][0-9 ().-]{5,22}[0-9]"), "[phone]"),
    (re.compile(rf"(?<![0-9A-Za-z]){_HEX}{{16,}}(?![0-9A-Za-z])"), "[token]"),
    # base64 / base64url: 20+ characters with a digit, or any run of 32+
    (
        re.compile(
            r"(?<![A-Za-z0-9+/_=-])(?:(?=[A-Za-z0-9+/_-]*[0-9])[A-Za-z0-9+/_-]{20,}"
            r"|[A-Za-z0-9+/_-]{32,})={0,2}(?![A-Za-z0-9+/_=-])"
        ),
        "[token]",
    ),
    (re.compile(r"(?<![0-9])[0-9]{7,}(?![0-9])"), "[number]"),
]


def redact(text: str) -> str:
    """``text`` with addresses, phone numbers, ids and tokens replaced by placeholders."""
    for pattern, placeholder in _PATTERNS:
        text = pattern.sub(placeholder, text)
    return text


def _exception(exc_info: Any) -> str:
    if isinstance(exc_info, BaseException):
        exc: BaseException | None = exc_info
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        exc = exc_info[1]
    else:
        exc = None
    if exc is None:
        return ""
    detail = str(exc)[:200]
    return f" ({type(exc).__name__}{': ' + detail if detail else ''})"


class PrivateFilter(logging.Filter):
    """Drops per-connection lines and tracebacks, redacts every record that remains."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        template = record.msg if isinstance(record.msg, str) else ""
        if name.startswith(_CONNECTION_LOGGERS) and record.levelno < logging.WARNING:
            if template.startswith(_RUNNING) and record.args:
                args = record.args if isinstance(record.args, tuple) else (record.args,)
                record.msg, record.args = "parley-server listening on port %s", (args[-1],)
                return True
            if template not in _LIFECYCLE:
                return False
        try:
            message = record.getMessage()
        except Exception:  # a broken call must not print its arguments in a logging error
            message = f"unformattable log record ({template[:40]!r})"
        if _TRACEBACK in message:  # Starlette hands uvicorn a formatted traceback as text
            head, _, tail = message.partition(_TRACEBACK)
            lines = tail.strip().splitlines()
            message = f"{head.strip()} ({lines[-1].strip()[:200] if lines else 'exception'})"
        if record.exc_info:
            message += _exception(record.exc_info)
        # one record, one line: a newline in a message cannot forge another record
        record.msg, record.args = visible(redact(message.strip())), None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def configure(level: str = "info") -> None:
    """One stderr handler behind ``PrivateFilter`` for the whole process.

    ``level`` applies to Parley's own loggers; uvicorn's life-cycle lines stay at
    INFO and every other library at WARNING, since their DEBUG output (SQL with
    parameters, frames) is data, not operations.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(PrivateFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("parley").setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.INFO)
    access = logging.getLogger("uvicorn.access")
    access.handlers, access.propagate = [], False  # no access log, ever
    access.setLevel(logging.CRITICAL + 1)
    logging.captureWarnings(True)
    logging.raiseExceptions = False  # a failing handler prints nothing of the record
    sys.excepthook = _log_uncaught
    sys.unraisablehook = _log_unraisable


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, _tb: types.TracebackType | None
) -> None:
    logging.getLogger("parley.server").critical(
        "parley-server failed: %s: %s", kind.__name__, redact(str(exc)[:200])
    )


def _log_unraisable(unraisable: Any) -> None:
    logging.getLogger("parley.server").warning(
        "unraisable exception: %s", type(unraisable.exc_value).__name__
    )
