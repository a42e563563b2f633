"""A QR code drawn in a terminal with half-block characters.

Each character cell shows two modules stacked (``▀`` upper, ``▄`` lower, ``█``
both, a space neither), so the code keeps square modules on a terminal whose
cells are about twice as tall as wide. The code is drawn dark on light, with the
four-module quiet zone ISO/IEC 18004 asks for, whatever the terminal's colours.
"""

from __future__ import annotations

import segno
from rich.style import Style
from rich.text import Text

_BLOCKS = {(False, False): " ", (True, False): "▀", (False, True): "▄", (True, True): "█"}
_INK = Style(color="black", bgcolor="white")
QUIET_ZONE = 4


def matrix(data: str) -> list[list[bool]]:
    """The modules of a QR code for ``data`` (True = dark), quiet zone included."""
    code = segno.make(data, error="m", micro=False)
    return [[bool(m) for m in row] for row in code.matrix_iter(scale=1, border=QUIET_ZONE)]


def half_blocks(modules: list[list[bool]]) -> list[str]:
    """Two rows of modules per line of text."""
    lines = []
    for top in range(0, len(modules), 2):
        upper = modules[top]
        lower = modules[top + 1] if top + 1 < len(modules) else [False] * len(upper)
        lines.append("".join(_BLOCKS[u, d] for u, d in zip(upper, lower, strict=True)))
    return lines


def qr_text(data: str) -> Text:
    """A QR code for ``data`` as a rich ``Text``, black on white."""
    return Text("\n".join(half_blocks(matrix(data))), style=_INK, no_wrap=True)
