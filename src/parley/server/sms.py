"""Where registration codes go: the SMS adapter interface and its local backends.

``console`` writes "SMS to PHONE: CODE" to the terminal (stdout), standing in
for a carrier during local trials; it is not the server log, which never holds
a code. ``file:PATH`` appends ``PHONE CODE`` lines to PATH, for tests. A real
provider implements ``SmsSender`` and is selected the same way.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Protocol


class SmsSender(Protocol):
    async def send_code(self, phone: str, code: str) -> None: ...


class ConsoleSms:
    async def send_code(self, phone: str, code: str) -> None:
        sys.stdout.write(f"SMS to {phone}: your Parley code is {code}\n")
        sys.stdout.flush()


class FileSms:
    def __init__(self, path: Path) -> None:
        self._path = path

    async def send_code(self, phone: str, code: str) -> None:
        await asyncio.to_thread(self._append, f"{phone} {code}\n")

    def _append(self, line: str) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def from_spec(spec: str) -> SmsSender:
    """``console`` or ``file:PATH``; ``ValueError`` for anything else."""
    if spec == "console":
        return ConsoleSms()
    if spec.startswith("file:") and len(spec) > 5:
        return FileSms(Path(spec[5:]))
    raise ValueError(f"unknown SMS backend {spec!r}: use 'console' or 'file:PATH'")
