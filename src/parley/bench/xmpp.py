"""A minimal XMPP client for the side-by-side server benchmark (``bench server --peers``).

Just enough of RFC 6120/6121 to drive Prosody and ejabberd the way the
Parley generator drives ``parley-server``: plain TCP on loopback (no TLS; the
benchmark configures the peers to allow it), in-band registration
(XEP-0077) of the benchmark's own accounts, SASL PLAIN, resource binding,
initial presence, then ``<message type='chat'>`` stanzas to the peer's full
JID. A message counts as delivered when its stanza reaches the receiving
client. There is no acknowledgement on the hot path: XMPP has none without
XEP-0198, which neither side enables.

``StanzaParser`` splits the incoming stream into stanzas with expat (the
stream restarts after SASL, so it can be reset). ``XmppClient`` is an
``asyncio.Protocol`` whose writes are synchronous, like the raw websocket
client of ``load.py``: both generators share one design.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_REGISTER = "jabber:iq:register"


@dataclass
class Element:
    """One parsed element: expat's qualified name (``stream:features``), attributes, children."""

    name: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def find(self, name: str) -> Element | None:
        for child in self.children:
            if child.name == name:
                return child
        return None


class XmppError(RuntimeError):
    pass


class StanzaParser:
    """Feeds bytes of an XML stream; calls ``on_stanza`` with each complete top-level element.

    ``on_open`` gets the ``<stream:stream>`` attributes, ``on_close`` the
    stream's end. ``reset()`` starts a new document (a stream restart after
    SASL success or STARTTLS).
    """

    def __init__(
        self,
        on_stanza: Callable[[Element], None],
        on_open: Callable[[dict[str, str]], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.on_stanza, self.on_open, self.on_close = on_stanza, on_open, on_close
        self.reset()

    def reset(self) -> None:
        parser = expat.ParserCreate()
        parser.buffer_text = True
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        self._parser = parser
        self._stack: list[Element] = []
        self._depth = 0

    def feed(self, data: bytes) -> None:
        try:
            self._parser.Parse(data, False)
        except expat.ExpatError as exc:
            raise XmppError(f"malformed XML from the server: {exc}") from exc

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self._depth += 1
        if self._depth == 1:
            if self.on_open is not None:
                self.on_open(attrs)
            return
        element = Element(name, attrs)
        if self._stack:
            self._stack[-1].children.append(element)
        self._stack.append(element)

    def _end(self, name: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            if self.on_close is not None:
                self.on_close()
            return
        element = self._stack.pop()
        if self._depth == 1:
            self.on_stanza(element)

    def _text(self, data: str) -> None:
        if self._stack:
            self._stack[-1].text += data


def stream_header(domain: str) -> bytes:
    return (
        "<?xml version='1.0'?><stream:stream to="
        + quoteattr(domain)
        + " xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        " version='1.0'>"
    ).encode()


def message_stanza(to: str, body: str) -> bytes:
    return (
        "<message type='chat' to=" + quoteattr(to) + "><body>" + escape(body) + "</body></message>"
    ).encode()


def sasl_plain(user: str, password: str) -> bytes:
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
    return f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>".encode()


class XmppClient(asyncio.Protocol):
    """One client connection. ``on_body`` receives each incoming message's body text."""

    def __init__(self, domain: str, on_body: Callable[[str], None] | None = None) -> None:
        self.domain = domain
        self.on_body = on_body
        self.on_error: Callable[[], None] | None = None
        self.jid = ""
        self.lost = False
        self.close_code = ""  # the stream error's condition, if the server sent one
        self.transport: asyncio.Transport | None = None
        self.parser = StanzaParser(self._stanza, self._open, self._close)
        self._inbox: asyncio.Queue[Element | None] = asyncio.Queue()
        self._restart = False
        self._live = False
        self.closed = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if self._restart:
            self._restart = False
            self.parser.reset()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._inbox.put_nowait(None)
        if not self.closed.done():
            self.closed.set_result(None)

    # parser callbacks
    def _open(self, attrs: dict[str, str]) -> None:
        pass

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _stanza(self, element: Element) -> None:
        if element.name == "stream:error" and element.children:
            self.close_code = element.children[0].name
        if self._live and element.name == "message":
            if element.attrs.get("type") == "error":
                if self.on_error is not None:
                    self.on_error()
                return
            body = element.find("body")
            if body is not None and self.on_body is not None:
                self.on_body(body.text)
            return
        if element.name == "success" and element.attrs.get("xmlns") == NS_SASL:
            self._restart = True  # the server's next bytes open a new stream
        if not self._live:
            self._inbox.put_nowait(element)

    # set-up
    def write(self, data: bytes) -> bool:
        """Write ``data``; False if the connection is gone."""
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    async def _next(self, timeout: float = 30) -> Element:
        element = await asyncio.wait_for(self._inbox.get(), timeout)
        if element is None:
            raise XmppError("the server closed the connection")
        if element.name == "stream:error":
            raise XmppError("stream error: " + ", ".join(c.name for c in element.children))
        return element

    async def _iq(self, iq_id: str, payload: str, kind: str = "set") -> Element:
        self.write(f"<iq type='{kind}' id='{iq_id}'>{payload}</iq>".encode())
        while True:
            element = await self._next()
            if element.name == "iq" and element.attrs.get("id") == iq_id:
                return element

    async def _features(self) -> Element:
        while True:
            element = await self._next()
            if element.name == "stream:features":
                return element

    async def login(self, user: str, password: str, *, register: bool, resource: str) -> str:
        """Register (if asked), authenticate, bind, announce presence; returns the full JID."""
        self.write(stream_header(self.domain))
        features = await self._features()
        if register:
            answer = await self._iq(
                "reg",
                f"<query xmlns='{NS_REGISTER}'><username>{escape(user)}</username>"
                f"<password>{escape(password)}</password></query>",
            )
            if answer.attrs.get("type") != "result":
                error = answer.find("error")
                conflict = error is not None and error.find("conflict") is not None
                if not conflict:
                    raise XmppError(f"registration of {user} refused: {_describe(answer)}")
        mechanisms = features.find("mechanisms")
        offered = [m.text for m in mechanisms.children] if mechanisms else []
        if "PLAIN" not in offered:
            raise XmppError(f"the server offers no SASL PLAIN without TLS (offered: {offered})")
        self.write(sasl_plain(user, password))
        while True:
            answer = await self._next()
            if answer.name == "success":
                break
            if answer.name == "failure":
                raise XmppError(f"SASL PLAIN refused for {user}: {_describe(answer)}")
        self.write(stream_header(self.domain))
        features = await self._features()
        bound = await self._iq(
            "bind", f"<bind xmlns='{NS_BIND}'><resource>{escape(resource)}</resource></bind>"
        )
        bind, jid = bound.find("bind"), None
        if bind is not None:
            jid = bind.find("jid")
        if bound.attrs.get("type") != "result" or jid is None:
            raise XmppError(f"bind refused: {_describe(bound)}")
        self.jid = jid.text
        session = features.find("session")
        if session is not None and session.find("optional") is None:
            await self._iq("sess", f"<session xmlns='{NS_SESSION}'/>")
        self.write(b"<presence/>")
        self._live = True
        return self.jid

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self.transport.write(b"</stream:stream>")
            self.transport.close()


def _describe(element: Element) -> str:
    def walk(e: Element) -> str:
        inner = " ".join(walk(c) for c in e.children)
        return f"<{e.name}{' ' + inner if inner else ''}{' ' + e.text if e.text else ''}>"

    return walk(element)


async def connect(
    host: str, port: int, domain: str, on_body: Callable[[str], None] | None = None
) -> XmppClient:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: XmppClient(domain, on_body), host, port)
    return protocol
