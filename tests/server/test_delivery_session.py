"""The delivery session against a real (SQLite) queue, without the web framework."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from parley.server.handlers.delivery import DeliverySession
from parley.server.storage import db
from parley.server.storage.queue import MessageQueue, QueuedMessage
from parley.server.storage.tables import messages


class Recorder:
    """A socket that records what it is sent; ``writable`` off plays back-pressure."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.writable = asyncio.Event()
        self.writable.set()

    async def send_text(self, text: str) -> None:
        await self.writable.wait()
        self.frames.append(json.loads(text))

    def try_send(self, text: str) -> bool:
        if not self.writable.is_set():
            return False
        self.frames.append(json.loads(text))
        return True

    async def close(self, code: int) -> None:
        self.frames.append({"type": "closed", "code": code})


def _row(i: int) -> dict[str, Any]:
    return {
        "guid": f"g{i}",
        "account_id": "a",
        "device_id": 1,
        "sender_account": "b",
        "sender_device": 1,
        "group_id": None,
        "envelope": b"e",
        "franking_tag": b"t" * 32,
        "server_ms": 1,
        "expires_ms": 10**15,
    }


async def _setup(
    tmp_path: Path,
) -> tuple[MessageQueue, DeliverySession, Recorder, list[DeliverySession]]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'q.db'}")
    await db.migrate(engine)
    sessions: list[DeliverySession] = []

    async def deliver(rows: list[QueuedMessage], again: list[tuple[str, int]]) -> None:
        for s in sessions:
            s.offer(rows)
            if s.owner in again:
                s.available()

    queue = MessageQueue(engine, deliver)
    queue.start()
    recorder = Recorder()
    session = DeliverySession("a", 1, queue, recorder, window=100)
    sessions.append(session)
    return queue, session, recorder, sessions


async def test_each_message_is_pushed_after_the_previous_was_acknowledged_and_deleted(
    tmp_path: Path,
) -> None:
    """Regression: SQLite reused the rowid of a deleted newest row, so a new message
    looked older than the last one pushed and was never pushed (found by the benchmark)."""
    queue, session, recorder, _ = await _setup(tmp_path)
    runner = asyncio.create_task(session.run())
    await asyncio.sleep(0.05)
    for i in range(6):
        await queue.enqueue([_row(i)], None, 1)
        await asyncio.sleep(0.02)
        await session.on_frame(json.dumps({"type": "ack", "ids": [f"g{i}"]}))
    await asyncio.sleep(0.05)
    pushed = [f["id"] for f in recorder.frames if f["type"] == "message"]
    assert pushed == [f"g{i}" for i in range(6)]
    session.close_soon(1000)
    await runner
    await queue.close()


async def test_window_bounds_unacknowledged_messages_and_acks_refill_it(tmp_path: Path) -> None:
    queue, session, recorder, _ = await _setup(tmp_path)
    await queue.enqueue([_row(i) for i in range(250)], None, 1)
    runner = asyncio.create_task(session.run())
    await asyncio.sleep(0.1)
    first = [f["id"] for f in recorder.frames if f["type"] == "message"]
    assert len(first) == 100
    await session.on_frame(json.dumps({"type": "ack", "ids": first}))
    await asyncio.sleep(0.1)
    pushed = [f["id"] for f in recorder.frames if f["type"] == "message"]
    assert pushed == [f"g{i}" for i in range(200)]
    # acks for ids never pushed to this device are ignored
    await session.on_frame(json.dumps({"type": "ack", "ids": ["g249"]}))
    assert len(await queue.pending("a", 1, 0, 1000, 0)) == 150
    session.close_soon(1000)
    await runner
    await queue.close()


async def test_rows_committed_during_a_backlog_read_are_not_skipped(tmp_path: Path) -> None:
    queue, session, recorder, _ = await _setup(tmp_path)
    await queue.enqueue([_row(i) for i in range(3)], None, 1)
    runner = asyncio.create_task(session.run())
    for i in range(3, 40):  # commits race with the first backlog reads
        await queue.enqueue([_row(i)], None, 1)
    await asyncio.sleep(0.2)
    pushed = [f["id"] for f in recorder.frames if f["type"] == "message"]
    assert pushed == [f"g{i}" for i in range(40)]
    session.close_soon(1000)
    await runner
    await queue.close()


async def test_a_row_committed_elsewhere_with_a_lower_id_is_pushed_when_signalled(
    tmp_path: Path,
) -> None:
    """With several writers (cluster nodes) a row can commit after a row with a higher
    id was pushed: the signal from the other node makes the session read the queue
    from the front, so the row is pushed (a cursor at the highest id would skip it)."""
    queue, session, recorder, _ = await _setup(tmp_path)
    runner = asyncio.create_task(session.run())
    await asyncio.sleep(0.05)
    await queue.enqueue([_row(0)], None, 1)  # id 1
    await asyncio.sleep(0.05)
    await session.on_frame(json.dumps({"type": "ack", "ids": ["g0"]}))
    await asyncio.sleep(0.05)  # deleted: id 1 is free
    await queue.enqueue([_row(1)], None, 1)  # this node's commit (id 2), offered live
    await asyncio.sleep(0.05)
    late = {**_row(2), "id": 1}  # another node's commit, with an id it took earlier
    async with queue._engine.begin() as conn:  # the other node's writer
        await conn.execute(messages.insert().values(late))
    session.available()
    await asyncio.sleep(0.1)
    pushed = [f["id"] for f in recorder.frames if f["type"] == "message"]
    assert pushed == ["g0", "g1", "g2"]
    session.close_soon(1000)
    await runner
    await queue.close()


async def test_an_ack_during_a_read_is_not_pushed_again(tmp_path: Path) -> None:
    queue, session, recorder, _ = await _setup(tmp_path)
    await queue.enqueue([_row(i) for i in range(5)], None, 1)
    runner = asyncio.create_task(session.run())
    await asyncio.sleep(0.1)
    pushed = [f["id"] for f in recorder.frames if f["type"] == "message"]
    assert pushed == [f"g{i}" for i in range(5)]
    for _ in range(20):  # passes and acks interleave; nothing acked comes back
        session.available()
        await session.on_frame(json.dumps({"type": "ack", "ids": pushed[:1]}))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    again = [f["id"] for f in recorder.frames if f["type"] == "message"]
    assert again == pushed
    session.close_soon(1000)
    await runner
    await queue.close()


def _queued(i: int) -> QueuedMessage:
    return QueuedMessage(i, f"g{i}", "a", 1, "b", 1, None, b"e", b"t" * 32, 1)


async def test_live_frames_go_out_at_once_in_order_and_wait_out_back_pressure(
    tmp_path: Path,
) -> None:
    """In live mode an offer, a control frame and an ack that frees the window push
    from the caller's own call (no wake-up of the session's task); a socket that
    stops taking frames leaves them to the task, which sends them in the same order
    once it is writable again."""
    queue, session, recorder, _ = await _setup(tmp_path)
    runner = asyncio.create_task(session.run())
    await asyncio.sleep(0.05)
    assert [f["type"] for f in recorder.frames] == ["queue_empty"]

    def kinds() -> list[str]:
        return [str(f.get("id") or f.get("request_id") or f["type"]) for f in recorder.frames[1:]]

    session.offer([_queued(1)])
    session.send_control({"type": "response", "request_id": "r1"})
    assert kinds() == ["g1", "r1"]  # sent before anything awaited

    recorder.writable.clear()
    session.offer([_queued(2), _queued(3)])
    session.send_control({"type": "response", "request_id": "r2"})
    session.offer([_queued(4)])
    await asyncio.sleep(0.05)
    assert kinds() == ["g1", "r1"]  # nothing while the socket takes nothing
    recorder.writable.set()
    await asyncio.sleep(0.05)
    assert kinds() == ["g1", "r1", "r2", "g2", "g3", "g4"]  # control first, as always

    small = DeliverySession("a", 2, queue, recorder, window=1)
    small._backlog = False  # live, with a window of one
    small._empty_sent = True
    before = len(recorder.frames)
    small.offer([_queued(5), _queued(6)])
    assert [f["id"] for f in recorder.frames[before:]] == ["g5"]
    small.on_ack({"type": "ack", "ids": ["g5"]})
    assert [f["id"] for f in recorder.frames[before:]] == ["g5", "g6"]  # the ack refilled it
    session.close_soon(1000)
    await runner
    await queue.close()
