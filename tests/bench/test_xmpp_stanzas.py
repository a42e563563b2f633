"""The benchmark's XMPP stanza parser (parley.bench.xmpp): split a stream into stanzas."""

from parley.bench.xmpp import Element, StanzaParser, message_stanza, sasl_plain

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='localhost' version='1.0'>"
)


def _collect() -> tuple[StanzaParser, list[Element], list[dict[str, str]], list[bool]]:
    stanzas: list[Element] = []
    opened: list[dict[str, str]] = []
    closed: list[bool] = []
    parser = StanzaParser(stanzas.append, opened.append, lambda: closed.append(True))
    return parser, stanzas, opened, closed


def test_stanzas_split_at_any_byte_boundary() -> None:
    stream = (
        HEADER
        + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        + b"<mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms>"
        + b"</stream:features>"
        + b"<message from='a@localhost/x' to='b@localhost/y' type='chat'>"
        + b"<body>1 2 3.5 a&lt;b&amp;c&gt;d</body></message>"
        + b"<presence/>"
        + b"</stream:stream>"
    )
    for step in (1, 3, 7, len(stream)):
        parser, stanzas, opened, closed = _collect()
        for i in range(0, len(stream), step):
            parser.feed(stream[i : i + step])
        assert opened[0]["id"] == "s1"
        assert [s.name for s in stanzas] == ["stream:features", "message", "presence"]
        mechanisms = stanzas[0].find("mechanisms")
        assert mechanisms is not None
        assert [m.text for m in mechanisms.children] == ["PLAIN", "SCRAM-SHA-1"]
        body = stanzas[1].find("body")
        assert body is not None and body.text == "1 2 3.5 a<b&c>d"
        assert stanzas[1].attrs["type"] == "chat"
        assert closed == [True]


def test_reset_starts_a_new_document_after_sasl() -> None:
    parser, stanzas, opened, _ = _collect()
    parser.feed(HEADER + b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    parser.reset()
    parser.feed(HEADER.replace(b"s1", b"s2") + b"<stream:features><bind/></stream:features>")
    assert [o["id"] for o in opened] == ["s1", "s2"]
    assert [s.name for s in stanzas] == ["success", "stream:features"]


def test_outgoing_stanzas_escape_and_encode() -> None:
    assert message_stanza("b@localhost/r'", "x<&>y") == (
        b"<message type='chat' to=\"b@localhost/r'\"><body>x&lt;&amp;&gt;y</body></message>"
    )
    assert sasl_plain("u", "p") == (
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AHUAcA==</auth>"
    )
