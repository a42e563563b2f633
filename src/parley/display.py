"""Showing text that came from someone else, literally.

Every string another person chose (message text, display names, file names,
group names, report comments, the fields of a court order) and every string a
server sent (error messages, notices, the privacy policy) reaches a terminal
or a page only through this module:

- it is never read as markup: rich gets ``Text`` objects, never markup strings,
  and HTML gets ``html.escape``;
- characters that steer a terminal or reorder a line are shown as escapes
  (``\\x1b``, ``\\u202e``) instead of being sent: C0 and C1 controls and DEL
  (ESC starts CSI and OSC sequences; CR and BS overwrite what was printed),
  bidirectional overrides, embeddings, isolates and marks (Trojan Source,
  CVE-2021-42574), line and paragraph separators, and lone surrogates.

In single-line mode (a line of ``parley receive``, a table cell) a newline or
tab is an escape too, so a message cannot forge a second line; multi-line
mode keeps them (a policy, a chat bubble) and the caller indents what follows.
"""

from __future__ import annotations

import html
import unicodedata
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # rich is loaded by the first literal() or join(): what needs only visible() or
    # html_text() (the client's core, a command that prints an id) never pays for it.
    from rich.text import Text

# Bidirectional formatting characters (Unicode Standard Annex #9).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SEPARATORS = frozenset("\u2028\u2029")
ESCAPE_STYLE = "reverse"


def _unsafe(ch: str, multiline: bool) -> bool:
    if ch in "\n\t":
        return not multiline
    if ch in _BIDI or ch in _SEPARATORS:
        return True
    return unicodedata.category(ch) in ("Cc", "Cs")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _pieces(text: str, multiline: bool) -> list[tuple[str, bool]]:
    """``text`` split into (piece, is_escape) runs."""
    pieces: list[tuple[str, bool]] = []
    start = 0
    for i, ch in enumerate(text):
        if _unsafe(ch, multiline):
            if start < i:
                pieces.append((text[start:i], False))
            pieces.append((_escape(ch), True))
            start = i + 1
    if start < len(text):
        pieces.append((text[start:], False))
    return pieces


def visible(text: object, multiline: bool = False) -> str:
    """``text`` with every character that could steer a terminal shown as an escape."""
    value = text if isinstance(text, str) else str(text)
    plain = value.isprintable() and not (
        _BIDI.intersection(value) or _SEPARATORS.intersection(value)
    )
    if plain and (multiline or ("\n" not in value and "\t" not in value)):
        return value
    return "".join(piece for piece, _ in _pieces(value, multiline))


def literal(text: object, multiline: bool = False, style: str = "") -> Text:
    """A rich ``Text`` that shows ``text`` literally: no markup, no emoji codes, controls
    as escapes (set off in reverse video on a terminal)."""
    from rich.text import Text

    value = text if isinstance(text, str) else str(text)
    out = Text(style=style)
    for piece, escaped in _pieces(value, multiline):
        out.append(piece, style=ESCAPE_STYLE if escaped else None)
    return out


def join(*parts: object) -> Text:
    """Concatenate ``Text`` parts (kept) and other values (shown literally, single-line)."""
    from rich.text import Text

    out = Text()
    for part in parts:
        out.append_text(part if isinstance(part, Text) else literal(part))
    return out


def html_text(text: object, multiline: bool = False) -> str:
    """``text`` for an HTML page: controls as escapes, then HTML-escaped."""
    return html.escape(visible(text, multiline), quote=True)


def local_time(ms: int | None) -> str:
    """A time in milliseconds since the epoch as local date and time, for people."""
    if ms is None:
        return ""
    try:
        return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"(time {ms} ms out of range)"


def iso_time(ms: int | None) -> str | None:
    """A time in milliseconds as ISO 8601 in UTC, for JSON beside the milliseconds."""
    if ms is None:
        return None
    try:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def with_iso(record: dict[str, object], *fields: str) -> dict[str, object]:
    """``record`` plus ``NAME_iso`` (ISO 8601) beside each millisecond field in ``fields``;
    a field named ``X_ms`` gets ``X_iso``."""
    out = dict(record)
    for name in fields:
        value = record.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            out[name.removesuffix("_ms") + "_iso"] = iso_time(value)
    return out
