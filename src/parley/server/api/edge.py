"""What every request passes at the edge, before a route or a handler sees it.

Bad input gets a 4xx JSON error, never a 500: the checks that are the same for
every route live here, once.

- **JSON** (every HTTP body and every websocket frame goes through ``loads``):
  UTF-8 only (RFC 8259 §8.1); no lone surrogate (``"\\ud800"`` decodes to a
  string that no database, hash or UTF-8 encoder accepts); no NUL character,
  which PostgreSQL text cannot hold, except in the franked ``text`` of a
  revealed message or a policy (any character a sender put there must stay
  reportable; both are stored as bytes); integers within signed 64 bits; no
  ``NaN``/``Infinity``; nesting at most ``MAX_DEPTH`` deep (1,000 levels would
  exhaust the recursion limit in the decoder or in whatever walks the value).
- **Paths and query strings**: no NUL (URL decoding turns invalid UTF-8 into
  U+FFFD, so no surrogate can arrive this way); every integer parameter is one
  of the bounded types below (``tests/e2e/test_bad_input.py`` checks that
  /openapi.json gives each a maximum).

``StrictRoute`` installs both for HTTP routes; ``websocket.py`` calls ``loads``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Path, Query, Request, Response
from fastapi.routing import APIRoute

from parley.errors import BadRequest

MAX_DEPTH = 32
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)
# PostgreSQL INTEGER columns (device ids, transparency log indexes) hold 31 bits.
MAX_INT32 = 2**31 - 1
# Keys whose string value may hold any character (see the module docstring).
ANY_CHARACTER_KEYS = frozenset({"text"})

DeviceIdPath = Annotated[int, Path(ge=0, le=MAX_INT32)]
LogIndexQuery = Annotated[int, Query(ge=0, le=MAX_INT32)]
LogSizeQuery = Annotated[int, Query(ge=1, le=MAX_INT32)]

_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse(message: str) -> BadRequest:
    return BadRequest(message, "invalid_request")


def _int(text: str) -> int:
    if len(text) > 20:  # also keeps int() away from 4,300-digit strings
        raise _refuse("an integer is out of range (signed 64 bits)")
    value = int(text)
    if not MIN_INT <= value <= MAX_INT:
        raise _refuse("an integer is out of range (signed 64 bits)")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _refuse("a number is out of range")
    return value


def _constant(name: str) -> Any:
    raise _refuse(f"{name} is not JSON")


def check_text(value: str, any_character: bool = False) -> None:
    """``BadRequest`` for a lone surrogate, or a NUL unless ``any_character``."""
    if _SURROGATE.search(value):
        raise _refuse("strings must be valid Unicode (a lone surrogate is not)")
    if not any_character and "\x00" in value:
        raise _refuse("strings may not contain NUL characters")


def _walk(value: Any) -> None:
    stack: list[tuple[Any, int, bool]] = [(value, 1, False)]
    while stack:
        item, depth, any_character = stack.pop()
        if isinstance(item, str):
            check_text(item, any_character)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise _refuse(f"JSON may be nested at most {MAX_DEPTH} deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    check_text(key)
                    stack.append((child, depth + 1, key in ANY_CHARACTER_KEYS))
            else:
                stack.extend((child, depth + 1, False) for child in item)


def loads(data: str | bytes) -> Any:
    """Decode JSON from a request or frame; ``BadRequest`` for anything outside the
    rules in the module docstring."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise _refuse("JSON must be UTF-8") from exc
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError as exc:
        raise _refuse(f"JSON may be nested at most {MAX_DEPTH} deep") from exc
    except ValueError as exc:  # JSONDecodeError, and int() limits
        raise _refuse("not valid JSON") from exc
    _walk(value)
    return value


class StrictRequest(Request):
    """A request whose JSON body is decoded by ``loads``."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictRoute(APIRoute):
    """Every HTTP route: NUL-free path and query, and ``loads`` for the body.

    FastAPI turns an error raised while it reads the body into a 400
    ``HTTPException`` whose cause is our ``BadRequest``; ``app.py`` renders that
    cause."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            query = request.query_params.multi_items()
            if "\x00" in request.scope["path"] or any("\x00" in k + v for k, v in query):
                raise _refuse("paths and query strings may not contain NUL characters")
            return await handler(StrictRequest(request.scope, request.receive))

        return strict
