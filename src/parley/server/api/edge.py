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

import math
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
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


def check_text(value: str, any_character: bool = False) -> None:
    """``BadRequest`` for a lone surrogate, or a NUL unless ``any_character``."""
    if _SURROGATE.search(value):
        raise _refuse("strings must be valid Unicode (a lone surrogate is not)")
    if not any_character and "\x00" in value:
        raise _refuse("strings may not contain NUL characters")


def _walk(value: Any) -> None:
    """The rules orjson does not apply itself: NUL, integer range, depth. (orjson
    refuses invalid UTF-8, lone surrogates, raw or escaped, and NaN/Infinity; it
    reads an integer past 64 bits as a float, so an integral float out of range
    is refused too: a lax integer field would otherwise take it.) Scalars are
    checked where they are met, not pushed: this runs on every websocket frame."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            _dict(item, depth, stack)
        elif kind is list:
            _list(item, depth, stack)
        else:
            _scalar(item, kind, False)


def _dict(item: dict[str, Any], depth: int, stack: list[tuple[Any, int]]) -> None:
    if depth > MAX_DEPTH:
        raise _refuse(f"JSON may be nested at most {MAX_DEPTH} deep")
    for key, child in item.items():
        if "\x00" in key:
            raise _refuse("strings may not contain NUL characters")
        kind = type(child)
        if kind is str:
            if "\x00" in child and key not in ANY_CHARACTER_KEYS:
                raise _refuse("strings may not contain NUL characters")
        elif kind is dict or kind is list:
            stack.append((child, depth + 1))
        else:
            _scalar(child, kind, False)


def _list(item: list[Any], depth: int, stack: list[tuple[Any, int]]) -> None:
    if depth > MAX_DEPTH:
        raise _refuse(f"JSON may be nested at most {MAX_DEPTH} deep")
    for child in item:
        kind = type(child)
        if kind is dict or kind is list:
            stack.append((child, depth + 1))
        else:
            _scalar(child, kind, False)


def _scalar(item: Any, kind: type, any_character: bool) -> None:
    if kind is str:
        if not any_character and "\x00" in item:
            raise _refuse("strings may not contain NUL characters")
    elif kind is int:
        if not MIN_INT <= item <= MAX_INT:
            raise _refuse("an integer is out of range (signed 64 bits)")
    elif kind is float and (not math.isfinite(item) or abs(item) > MAX_INT):
        raise _refuse("a number is out of range")


def loads(data: str | bytes) -> Any:
    """Decode JSON from a request or frame; ``BadRequest`` for anything outside the
    rules in the module docstring. orjson decodes (about 10x faster than ``json``
    with hooks, which matters per websocket frame); ``_walk`` adds the rest."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "UTF-8" in reason or "surrogate" in reason:
            raise _refuse("JSON must be UTF-8 with no lone surrogate") from exc
        if "depth" in reason:
            raise _refuse(f"JSON may be nested at most {MAX_DEPTH} deep") from exc
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
