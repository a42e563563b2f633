"""The SQLite queue writer (one call per group commit on its own thread): the ids it
hands on are the database's, a repeated idempotency key stores nothing, and
deletes commit with the batch they came in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage import db
from parley.server.storage.queue import _CHUNK, MessageQueue, QueuedMessage
from parley.server.storage.tables import messages


def _row(guid: str, device: int = 1) -> dict[str, Any]:
    return {
        "guid": guid,
        "account_id": "bob",
        "device_id": device,
        "sender_account": "alice",
        "sender_device": 1,
        "group_id": None,
        "envelope": b"ciphertext",
        "franking_tag": b"t" * 32,
        "server_ms": 5,
        "expires_ms": 10**15,
    }


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'q.db'}")
    await db.migrate(engine)
    yield engine
    await engine.dispose()


class Handed:
    """``on_commit``: records what the queue hands on (after ``delay`` seconds)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.rows: list[QueuedMessage] = []
        self.again: list[tuple[str, int]] = []
        self.delay = delay

    async def __call__(self, rows: list[QueuedMessage], again: list[tuple[str, int]]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.rows.extend(rows)
        self.again.extend(again)


async def test_ids_handed_on_are_the_stored_ones_and_a_repeated_key_stores_nothing(
    engine: AsyncEngine,
) -> None:
    on_commit = Handed()
    handed, again = on_commit.rows, on_commit.again
    queue = MessageQueue(engine, on_commit)
    queue.start()
    first = await queue.enqueue([_row("g0")], b"k" * 32, 100)
    # One batch: two devices of one send, a plain send, a repeat of the first key
    # (made again later: its server time must be the first one's), and a delete.
    results = await asyncio.gather(
        queue.enqueue([_row("g1", 1), _row("g2", 2)], b"a" * 32, 200),
        queue.enqueue([_row("g3")], None, 300),
        queue.enqueue([_row("g9")], b"k" * 32, 400),
        queue.delete(["g0"]),
    )
    await queue.close()
    assert first == 100 and list(results[:3]) == [200, 300, 100]
    async with engine.connect() as conn:
        stored = {r.guid: r.id for r in await conn.execute(select(messages))}
    assert set(stored) == {"g1", "g2", "g3"}  # g0 deleted, g9 a duplicate
    assert {m.guid: m.id for m in handed if m.guid != "g0"} == stored
    assert [m.id for m in handed] == sorted(m.id for m in handed)
    assert ("bob", 1) in again


async def test_a_batch_larger_than_one_statement_keeps_every_row_key_and_delete(
    engine: AsyncEngine,
) -> None:
    """More rows, keys and deletes than one multi-row statement carries (``_CHUNK``)."""
    on_commit = Handed()
    handed = on_commit.rows
    queue = MessageQueue(engine, on_commit)
    queue.start()
    n = 2 * _CHUNK + 7
    await asyncio.gather(*(queue.enqueue([_row(f"old{i}")], None, 1) for i in range(n)))
    key = [i.to_bytes(32, "big") for i in range(n)]
    results = await asyncio.gather(
        *(queue.enqueue([_row(f"new{i}")], key[i], 1000 + i) for i in range(n)),
        queue.delete([f"old{i}" for i in range(n)]),
        # every key again, in the same batch: each a duplicate of its first use
        *(queue.enqueue([_row(f"dup{i}")], key[i], 5) for i in range(n)),
    )
    await queue.close()
    assert results[:n] == [1000 + i for i in range(n)]
    assert results[n + 1 :] == [1000 + i for i in range(n)]
    async with engine.connect() as conn:
        stored = {r.guid: r.id for r in await conn.execute(select(messages))}
    assert set(stored) == {f"new{i}" for i in range(n)}
    assert {m.guid: m.id for m in handed if m.guid.startswith("new")} == stored


async def test_commits_are_handed_on_in_order_and_answered_only_after(
    engine: AsyncEngine,
) -> None:
    """The writer thread runs commit after commit; the loop still hands each on in
    commit order, and a sender hears back only once its rows were handed on."""
    on_commit = Handed(delay=0.002)  # slower than a commit: outcomes queue up behind it
    handed = on_commit.rows
    queue = MessageQueue(engine, on_commit)
    queue.start()
    answered_before_handed: list[str] = []

    async def send(i: int) -> None:
        await asyncio.sleep(i % 7 * 0.001)  # spread over several commits
        await queue.enqueue([_row(f"m{i}")], None, i)
        if f"m{i}" not in {m.guid for m in handed}:
            answered_before_handed.append(f"m{i}")

    await asyncio.gather(*(send(i) for i in range(300)))
    await queue.close()
    assert not answered_before_handed
    assert len(handed) == 300
    assert [m.id for m in handed] == sorted(m.id for m in handed)
