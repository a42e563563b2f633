"""A hostile server: the real ``parley-server`` plus the powers of whoever runs it.

The server is the adversary (README, "Threat model"). These fixtures give a test
what an intruder or a compelled operator has: the real process on a free
loopback port, on SQLite and on PostgreSQL, and direct read/write access to
its database (``HostileServer.sql``), so an attack is played exactly as the
server could play it. Each test in this package asserts that the attack is
refused or raised where the user sees it, and that the honest flow still works.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import ServerProcess, database_for


@dataclass
class HostileServer:
    process: ServerProcess

    @property
    def url(self) -> str:
        return self.process.url

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the server's own database (``?`` placeholders)."""
        url = self.process.database_url
        if url.startswith("sqlite"):
            with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
                rows = conn.execute(statement, params).fetchall()
                conn.commit()
                return rows
        text = statement
        for value in params:  # psql has no bind parameters: quote as SQL literals
            literal = (
                "'\\x" + value.hex() + "'::bytea"
                if isinstance(value, bytes)
                else "NULL"
                if value is None
                else str(value)
                if isinstance(value, int)
                else "'" + str(value).replace("'", "''") + "'"
            )
            text = text.replace("?", literal, 1)
        out = subprocess.run(
            ["psql", url, "-tAF", "\t", "-c", text],
            capture_output=True,
            text=True,
            check=True,
        )
        return [tuple(line.split("\t")) for line in out.stdout.splitlines() if line]


@pytest.fixture(params=["sqlite", "postgresql"])
def hostile(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HostileServer]:
    with contextlib.ExitStack() as stack:
        url = database_for(request.param, tmp_path, stack)
        proc = ServerProcess(tmp_path, url)
        proc.start()
        yield HostileServer(proc)
        if proc.proc and proc.proc.poll() is None:
            proc.stop()
