"""A corpus of hostile strings, and the check that output shows them literally.

Each string is what a hostile sender, reporter, court or server could put in
a field another person will see. ``assert_shown_safely`` is the test every
output path runs: no byte that steers a terminal reached the output, and the
visible form of the text did.
"""

from __future__ import annotations

import unicodedata

from parley.display import visible

HOSTILE = [
    "[/]",
    "[b]bold[/b] [link=https://evil.example]click[/link] [red]x",
    "[group] [attachment: fake.pdf] :thumbs_up:",
    "\x1b[2J\x1b[H cleared",  # CSI: clear screen
    "\x1b]8;;https://evil.example\x07link\x1b]8;;\x07",  # OSC 8 hyperlink
    "\x1b]0;title\x07",  # OSC: set window title
    "\x9b31m C1 CSI",
    "over\rwritten",
    "back\x08\x08space",
    "nul\x00bell\x07del\x7f",
    "\u202eevil\u202c \u2066isolate\u2069 \u200fmark",
    "line\u2028separator",
    "two\nlines: +14155550000: forged",
]

# What must never reach a terminal raw.
_STEERING = {
    "\x1b",
    "\x9b",
    "\r",
    "\x08",
    "\x00",
    "\x07",
    "\x7f",
    "\u202e",
    "\u2066",
    "\u200f",
    "\u2028",
}


def assert_shown_safely(output: str, texts: list[str], multiline: bool = False) -> None:
    """No steering character in ``output``, and each text's visible form is in it."""
    bad = sorted(
        {
            f"U+{ord(c):04X}"
            for c in output
            if c in _STEERING or (unicodedata.category(c) == "Cc" and c not in "\n\t")
        }
    )
    assert not bad, f"raw control characters reached the output: {bad}"
    for text in texts:
        shown = visible(text, multiline)
        assert shown in output, f"{shown!r} is not shown literally in {output!r}"
