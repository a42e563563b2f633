"""The queue's writer (SQLite: one call per group commit in its own process;
PostgreSQL: one transaction of array statements): the ids it hands on are the
database's, a repeated idempotency key stores nothing, and deletes commit with the
batch they came in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage import db, sqlite_writer
from parley.server.storage import queue as queue_module
from parley.server.storage.queue import MessageQueue, QueuedMessage, Stored
from parley.server.storage.sqlite_writer import CHUNK, WalPolicy, WriterGone
from parley.server.storage.tables import messages, sent_keys
from tests.e2e.server import database_for


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


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The queue on either database: the writer process for SQLite, the same rules in
    one transaction of array statements for PostgreSQL."""
    (tmp_path / "data").mkdir()
    with contextlib.ExitStack() as stack:
        engine = db.create_engine(database_for(request.param, tmp_path, stack))
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
    any_engine: AsyncEngine,
) -> None:
    engine = any_engine
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
    assert first == Stored(100, False)
    assert list(results[:3]) == [Stored(200, False), Stored(300, False), Stored(100, True)]
    async with engine.connect() as conn:
        stored = {r.guid: r.id for r in await conn.execute(select(messages))}
    assert set(stored) == {"g1", "g2", "g3"}  # g0 deleted, g9 a duplicate
    assert {m.guid: m.id for m in handed if m.guid != "g0"} == stored
    assert [m.id for m in handed] == sorted(m.id for m in handed)
    assert ("bob", 1) in again


async def test_a_batch_larger_than_one_statement_keeps_every_row_key_and_delete(
    any_engine: AsyncEngine,
) -> None:
    engine = any_engine
    """More rows, keys and deletes than one multi-row statement carries (``CHUNK``)."""
    on_commit = Handed()
    handed = on_commit.rows
    queue = MessageQueue(engine, on_commit)
    queue.start()
    n = 2 * CHUNK + 7
    await asyncio.gather(*(queue.enqueue([_row(f"old{i}")], None, 1) for i in range(n)))
    key = [i.to_bytes(32, "big") for i in range(n)]
    results = await asyncio.gather(
        *(queue.enqueue([_row(f"new{i}")], key[i], 1000 + i) for i in range(n)),
        queue.delete([f"old{i}" for i in range(n)]),
        # every key again, in the same batch: each a duplicate of its first use
        *(queue.enqueue([_row(f"dup{i}")], key[i], 5) for i in range(n)),
    )
    await queue.close()
    assert results[:n] == [Stored(1000 + i, False) for i in range(n)]
    assert results[n + 1 :] == [Stored(1000 + i, True) for i in range(n)]
    async with engine.connect() as conn:
        stored = {r.guid: r.id for r in await conn.execute(select(messages))}
    assert set(stored) == {f"new{i}" for i in range(n)}
    assert {m.guid: m.id for m in handed if m.guid.startswith("new")} == stored


async def _guids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return {r.guid for r in await conn.execute(select(messages))}


async def _until_gone(engine: AsyncEngine, guid: str, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while guid in await _guids(engine):
        assert asyncio.get_running_loop().time() < deadline, f"{guid} was not deleted"
        await asyncio.sleep(0.01)


async def test_an_acks_delete_rides_with_the_next_enqueue_and_is_never_handed_out_meanwhile(
    any_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``delete_soon`` (an ack) is held for the next enqueue's transaction: at low
    rates it would otherwise be a commit and a writer round trip of its own."""
    engine = any_engine
    monkeypatch.setattr(queue_module, "DELETE_HOLD_S", 60.0)  # only an enqueue releases it
    queue = MessageQueue(engine, Handed())
    queue.start()
    await queue.enqueue([_row("g0"), _row("g1")], None, 1)
    queue.delete_soon(["g0"])
    await asyncio.sleep(0.3)  # long enough for a commit of its own
    assert await _guids(engine) == {"g0", "g1"}  # not committed yet...
    assert [m.guid for m in await queue.pending("bob", 1, 0, 10, 0)] == ["g1"]  # ...nor handed out
    await queue.enqueue([_row("g2")], None, 2)  # answered after its commit: the same one
    assert await _guids(engine) == {"g1", "g2"}
    # Closing commits what is held.
    queue.delete_soon(["g1"])
    await queue.close()
    assert await _guids(engine) == {"g2"}


async def test_a_held_delete_commits_after_a_short_wait_or_when_many_are_held(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = MessageQueue(engine, Handed())
    queue.start()
    n = queue_module.DELETE_HOLD_MAX
    await queue.enqueue([_row(f"g{i}") for i in range(n + 1)], None, 1)
    # No enqueue follows: the timer releases it.
    queue.delete_soon(["g0"])
    await _until_gone(engine, "g0", 10 * queue_module.DELETE_HOLD_S)
    # Enough guids held release at once, whatever the timer.
    monkeypatch.setattr(queue_module, "DELETE_HOLD_S", 60.0)
    queue.delete_soon([f"g{i}" for i in range(1, n)])  # one short of the bound: held
    await asyncio.sleep(0.3)
    assert len(await _guids(engine)) == n
    queue.delete_soon([f"g{n}"])
    await _until_gone(engine, f"g{n}", 10)
    assert await _guids(engine) == set()
    # ``delete`` (the HTTP ack, which answers after the commit) never waits for one.
    await queue.enqueue([_row("h")], None, 2)
    await asyncio.wait_for(queue.delete(["h"]), 10)
    assert await _guids(engine) == set()
    await queue.close()


async def test_page_reads_asked_together_are_one_query_on_postgresql_with_each_its_own_page(
    any_engine: AsyncEngine,
) -> None:
    """A cluster node reads a device's queue on every "messages available" signal: on
    PostgreSQL the reads asked for together go as one statement, and each still gets
    exactly its own device's rows after its cursor, up to its limit, unexpired and not
    being deleted (SQLite reads one by one: the same answers)."""
    engine = any_engine
    queue = MessageQueue(engine, Handed())
    queue.start()
    rows = [{**_row(f"b1-{i}", 1)} for i in range(6)]
    rows += [{**_row(f"b2-{i}", 2)} for i in range(3)]
    rows += [{**_row(f"c1-{i}", 1), "account_id": "carol"} for i in range(4)]
    rows += [{**_row("b1-old", 1), "expires_ms": 50}]
    await queue.enqueue(rows, None, 1)
    ids = {m.guid: m.id for m in await queue.pending("bob", 1, 0, 100, 0)}
    ids.update({m.guid: m.id for m in await queue.pending("bob", 2, 0, 100, 0)})
    ids.update({m.guid: m.id for m in await queue.pending("carol", 1, 0, 100, 0)})
    queue.delete_soon(["c1-1"])  # held: never handed out
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    reads = [
        ("bob", 1, 0, 4, 100),  # a full page: its last id comes back
        ("bob", 1, ids["b1-3"], 10, 100),  # the same device, on from a cursor
        ("bob", 2, 0, 10, 100),
        ("carol", 1, 0, 10, 100),
        ("bob", 1, 0, 10, 10),  # before b1-old expired
        ("dave", 1, 0, 10, 100),  # nothing queued
    ]
    got = await asyncio.gather(*(queue.page(*r) for r in reads))
    event.remove(engine.sync_engine, "before_cursor_execute", count)
    await queue.close()
    pages = [([m.guid for m in found], last) for found, last in got]
    assert pages == [
        (["b1-0", "b1-1", "b1-2", "b1-3"], ids["b1-3"]),
        (["b1-4", "b1-5"], None),
        (["b2-0", "b2-1", "b2-2"], None),
        (["c1-0", "c1-2", "c1-3"], None),
        (["b1-0", "b1-1", "b1-2", "b1-3", "b1-4", "b1-5", "b1-old"], None),
        ([], None),
    ]
    if engine.dialect.name == "postgresql":
        assert len(statements) == 1, statements


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


async def test_a_commit_handed_on_at_once_still_waits_for_an_earlier_ones_signal(
    engine: AsyncEngine,
) -> None:
    """``on_commit`` may return nothing to wait for (the single node: the outcome is
    handed on and answered straight from the writer's reply) or something to wait for
    (a cluster's signal). A later commit is handed on only after an earlier one's wait,
    and answered after it."""
    gate = asyncio.get_running_loop().create_future()
    order: list[str] = []

    def on_commit(rows: list[QueuedMessage], again: list[tuple[str, int]]) -> Any:
        order.extend(m.guid for m in rows)
        if rows[0].guid == "slow":
            return gate  # as a signal to another node that has not gone out yet
        return None

    queue = MessageQueue(engine, on_commit)
    queue.start()
    await queue.enqueue([_row("first")], None, 1)  # answered without a wait
    slow = asyncio.ensure_future(queue.enqueue([_row("slow")], None, 2))
    while "slow" not in order:
        await asyncio.sleep(0.01)
    fast = asyncio.ensure_future(queue.enqueue([_row("fast")], None, 3))
    await asyncio.sleep(0.3)  # committed long since, but behind the slow one's wait
    assert order == ["first", "slow"] and not slow.done() and not fast.done()
    gate.set_result(None)
    assert await asyncio.wait_for(asyncio.gather(slow, fast), 10) == [
        Stored(2, False),
        Stored(3, False),
    ]
    assert order == ["first", "slow", "fast"]
    await queue.close()


def _wal_bytes(engine: AsyncEngine) -> int:
    return Path(f"{engine.url.database}-wal").stat().st_size


async def test_the_writer_checkpoints_so_the_wal_starts_over(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Asked to (here after every checkpoint-thread pass), the writer finishes the
    checkpoint between its own commits and the WAL is written again from its start:
    3 commits' worth here. Without that, the checkpoint thread alone races the
    commits and the WAL grows by each (mutation: 18 commits' worth). Writes made
    elsewhere while the queue is idle reach the database file too."""
    queue = MessageQueue(engine, Handed(), wal=WalPolicy(checkpoint_s=0.01, restart_frames=1))
    queue.start()
    big = {"envelope": b"e" * 2000}
    await queue.enqueue([{**_row(f"first{j}"), **big} for j in range(20)], None, 1)
    one_commit = _wal_bytes(engine)
    for i in range(80):  # back to back: the checkpoint thread alone never catches up
        await queue.enqueue([{**_row(f"g{i}-{j}"), **big} for j in range(20)], None, 1)
    assert _wal_bytes(engine) < 8 * one_commit
    # Idle queue: another store's commits reach the database file all the same
    # (read here from a copy of that file alone, without its WAL).
    for i in range(40):
        async with engine.begin() as conn:
            await conn.execute(insert(sent_keys), [{"key": i.to_bytes(32, "big"), "server_ms": 1}])
    await asyncio.sleep(0.1)
    copy = tmp_path / "copy.db"
    shutil.copyfile(str(engine.url.database), copy)
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        assert conn.execute("SELECT count(*) FROM sent_keys").fetchone() == (40,)
    await queue.close()


def test_a_checkpoint_pass_flushes_the_database_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint thread flushes the database file after each pass that copied
    frames, so the writer's own checkpoint has little left to flush while commits
    wait, and asks the writer for that checkpoint once the WAL is long. Mutation: no
    flush (or one of another file)."""
    path = str(tmp_path / "queue.db")
    writer = sqlite_writer.connect(path, db.SQLITE_PRAGMAS)
    writer.execute("CREATE TABLE t (x BLOB)")
    checkpointer = sqlite_writer.connect(path, db.SQLITE_PRAGMAS)
    database = os.open(path, os.O_RDONLY)
    flushed: list[str] = []
    real = os.fdatasync

    def recorded(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", recorded)
    wanted = threading.Event()
    try:
        writer.execute("INSERT INTO t VALUES (?)", (b"x" * 20_000,))
        sqlite_writer.fold(checkpointer, database, WalPolicy(1, restart_frames=1000), wanted)
        assert flushed == [os.path.realpath(path)] and not wanted.is_set()
        writer.execute("INSERT INTO t VALUES (?)", (b"y" * 20_000,))
        sqlite_writer.fold(checkpointer, database, WalPolicy(1, restart_frames=5), wanted)
        assert len(flushed) == 2 and wanted.is_set()
    finally:
        os.close(database)
        writer.close()
        checkpointer.close()


async def test_a_killed_writer_fails_what_it_had_not_answered_and_is_started_again(
    engine: AsyncEngine,
) -> None:
    """The writer process killed with an enqueue in its hands: that sender gets an
    error (never an acknowledgement), and the next enqueue, a second later, starts a
    new writer and is stored; nothing else is lost."""
    queue = MessageQueue(engine, Handed())
    queue.start()
    writer = queue._sqlite
    assert writer is not None
    await queue.enqueue([_row("before")], None, 1)
    pid = writer._process.pid
    os.kill(pid, signal.SIGSTOP)  # holds the next enqueue unanswered
    pending = asyncio.ensure_future(queue.enqueue([_row("lost")], b"x" * 32, 2))
    await asyncio.sleep(0.2)
    assert not pending.done()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WriterGone):
        await asyncio.wait_for(pending, 10)
    await asyncio.sleep(1.0)
    # The re-send of the failed one (same key) is stored once, by a new writer.
    assert (await queue.enqueue([_row("lost-again")], b"x" * 32, 3)).server_ms in (2, 3)
    assert writer._process.pid != pid
    await queue.close()
    # After the end, an ack's delete fails quietly: the caller never sees it raise, and
    # the row stays (delivered again; the client drops it by id).
    queue.delete_soon(["before"])
    await asyncio.sleep(0.1)
    async with engine.connect() as conn:
        guids = {r.guid for r in await conn.execute(select(messages))}
    assert "before" in guids and len(guids & {"lost", "lost-again"}) == 1
