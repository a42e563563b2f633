"""Fixtures that start real server processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from parley.client.messenger import Messenger

from .server import ServerProcess, postgres_available, postgres_database

_numbers = itertools.count(1)


def new_phone() -> str:
    """A fresh, valid (per libphonenumber) US number, unique within the test run."""
    n = next(_numbers)
    return f"+1415{2000000 + n:07d}"


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    if request.param == "postgresql":
        if not postgres_available():
            pytest.skip("PostgreSQL is not reachable at PARLEY_TEST_POSTGRES; .ci/run starts it")
        with postgres_database() as url:
            proc = ServerProcess(tmp_path, url, extra=getattr(request, "server_args", []))
            proc.start()
            yield proc
            if proc.proc and proc.proc.poll() is None:
                proc.stop()
        return
    proc = ServerProcess(tmp_path, f"sqlite:///{tmp_path / 'data' / 'parley.db'}")
    proc.start()
    yield proc
    if proc.proc and proc.proc.poll() is None:
        proc.stop()


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path, f"sqlite:///{tmp_path / 'data' / 'parley.db'}")
    proc.start()
    yield proc
    if proc.proc and proc.proc.poll() is None:
        proc.stop()


async def register(server: ServerProcess, phone: str | None = None) -> Messenger:
    return await Messenger.register(
        server.url, phone or new_phone(), server.code_for, secrets.token_bytes
    )


@pytest.fixture
async def users(server: ServerProcess) -> AsyncIterator[list[Messenger]]:
    made = [await register(server) for _ in range(3)]
    yield made
    for m in made:
        await m.api.close()
