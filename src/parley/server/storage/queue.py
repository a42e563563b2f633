"""The durable message queue, with group commit.

Theory of operation. One writer owns all queue writes. Handlers submit
operations (enqueue a set of rows, or delete acknowledged ones) and await a
future. The writer takes everything that has arrived, runs it in one
transaction (a few statements per batch, not per message), commits, hands
the committed rows to ``on_commit`` in id order and waits for what it returns (a
cluster signals the nodes holding the recipients there), then resolves every future.
A message is therefore acknowledged to its sender only after it is on disk,
and after its recipients' nodes were told, at thousands per second
(DESIGN-NOTES: group commit).

On SQLite the transactions run in a writer process of their own
(``sqlite_writer.py``, which says why and how): the event loop sends each turn's
operations down a pipe, the process commits everything that has arrived in a few
statements of up to 500 rows each, and answers with the stored ids; the loop hands
each outcome on (``on_commit``, then the futures) in commit order. Measured under
load (2 cores, about 240 messages per commit): through the async engine, with an
event-loop turn per statement, a commit took 50-85 ms; in one call on a thread, with
a statement per row, 23 ms; with a statement per chunk, 15 ms; the same transaction
costs 6 ms of SQLite alone. PostgreSQL keeps the async engine (asyncpg, no threads),
with statements whose text does not depend on the batch's size (see ``_PG_INSERT``).
Both apply the same idempotency rule (``sqlite_writer.first_uses``).

Idempotency: an enqueue may carry a key (HMAC of sender, device and client
message id). A key already present makes the whole enqueue a duplicate:
nothing is stored and the sender gets the first attempt's timestamp. The
recipients of a duplicate are handed to ``on_commit`` again (``again``): the
first attempt may have committed on a node that died before telling anyone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, Integer, any_, bindparam, delete, func, insert, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage.db import SQLITE_PRAGMAS, is_sqlite
from parley.server.storage.sqlite_writer import (
    COLUMNS,
    DEFAULT_WAL,
    MAX_BATCH,
    Reply,
    Result,
    WalPolicy,
    WriterGone,
    WriterProcess,
    first_uses,
)
from parley.server.storage.tables import messages, sent_keys

log = logging.getLogger(__name__)


class QueuedMessage(NamedTuple):
    """A stored message, as handed to its recipient. A named tuple, not a frozen
    dataclass: one is made per message on the hot path, and a frozen dataclass sets
    each field through ``object.__setattr__`` (about 1 us for these ten)."""

    id: int
    guid: str
    account_id: str
    device_id: int
    sender_account: str
    sender_device: int
    group_id: str | None
    envelope: bytes
    franking_tag: bytes
    server_ms: int


class Stored(NamedTuple):
    """An enqueue's outcome: its server time, or the first attempt's for a repeat."""

    server_ms: int
    duplicate: bool


class _Enqueue:
    __slots__ = ("duplicate", "future", "key", "rows", "server_ms")

    def __init__(
        self,
        rows: list[dict[str, Any]],
        key: bytes | None,
        server_ms: int,
        future: asyncio.Future[Stored],
    ) -> None:
        self.rows = rows
        self.key = key
        self.server_ms = server_ms
        self.duplicate = False
        self.future = future


class _Delete:
    __slots__ = ("future", "guids")

    def __init__(self, guids: list[str], future: asyncio.Future[None]) -> None:
        self.guids = guids
        self.future = future


def _to_message(row: Any) -> QueuedMessage:
    return QueuedMessage(
        row.id,
        row.guid,
        row.account_id,
        row.device_id,
        row.sender_account,
        row.sender_device,
        row.group_id,
        bytes(row.envelope),
        bytes(row.franking_tag),
        row.server_ms,
    )


Device = tuple[str, int]
# Returns what to wait for before the senders are answered, or None (nothing: the
# single node's fan-out only appends to sessions' outboxes).
OnCommit = Callable[[list[QueuedMessage], list[Device]], Awaitable[None] | None]
Op = _Enqueue | _Delete
# A batch's outcome: its rows and the devices to signal again, or the error.
Outcome = tuple[list[QueuedMessage], list[Device]] | Exception

_COLUMNS = itemgetter(*COLUMNS)
# An ack's delete (``delete_soon``) waits up to this long for an enqueue to ride with,
# or until this many are held: at low rates each would otherwise be a transaction and,
# on SQLite, a round trip to the writer process of its own. Held guids are in
# ``_deleting`` from the start, so no read hands them out again meanwhile. Measured at
# 2,000 messages/s offered (2 cores): the writer process's CPU fell from 37-38% to
# 30-32%, as its deletes-only commits went.
DELETE_HOLD_S = 0.05
DELETE_HOLD_MAX = 1000
_BY_ID = attrgetter("id")


def _queued(id_: int, r: dict[str, Any]) -> QueuedMessage:
    return QueuedMessage(id_, *_COLUMNS(r)[:-1])  # all but the expiry


def _outcome(enqueues: list[_Enqueue], results: list[Result]) -> Outcome:
    """What either backend's transaction decided, per enqueue (its rows' ids, or a
    repeat's first server time), made into what is handed on: the rows in id order,
    and the recipients of each repeat, to be signalled again (the first attempt may
    have committed on a node that died before telling anyone). A repeat's operation
    takes its first server time."""
    committed: list[QueuedMessage] = []
    again: dict[Device, None] = {}
    for op, result in zip(enqueues, results, strict=True):
        if isinstance(result, int):
            op.server_ms, op.duplicate = result, True
            again.update(((r["account_id"], r["device_id"]), None) for r in op.rows)
        else:
            committed.extend(_queued(id_, r) for id_, r in zip(result, op.rows, strict=True))
    committed.sort(key=_BY_ID)
    return committed, list(again)


def _array(name: str, column: Any) -> Any:
    return bindparam(name, type_=ARRAY(column.type))


# PostgreSQL: each statement's text is the same whatever the batch's size, one array
# parameter per column (``= ANY``, ``unnest``), so each is prepared once per connection.
# With an IN list and a multi-row VALUES, every batch size was a new statement to
# parse and plan: asyncpg's prepare was 4.4% of a cluster node's event loop.
_PG_FIND_KEYS = select(sent_keys.c.key, sent_keys.c.server_ms).where(
    sent_keys.c.key == any_(_array("keys", sent_keys.c.key))
)
_PG_INSERT = (
    insert(messages)
    .from_select(list(COLUMNS), select(*[func.unnest(_array(c, messages.c[c])) for c in COLUMNS]))
    .returning(messages.c.id, messages.c.guid)
)
_PG_DELETE = delete(messages).where(messages.c.guid == any_(_array("guids", messages.c.guid)))
# Every ``page`` read asked for while the previous one ran, in one statement: one row
# of the arrays per read, each read its own ``LIMIT`` through a lateral join. A
# cluster node reads a device's queue on every "messages available" signal, and one
# query each was a PostgreSQL round trip and SQLAlchemy's execution path per device.
_PG_WANTED = (
    func.unnest(
        bindparam("accounts", type_=ARRAY(messages.c.account_id.type)),
        bindparam("devices", type_=ARRAY(Integer())),
        bindparam("afters", type_=ARRAY(Integer())),
        bindparam("limits", type_=ARRAY(Integer())),
        bindparam("nows", type_=ARRAY(BigInteger())),
    )
    .table_valued("account_id", "device_id", "after_id", "lim", "now_ms", with_ordinality="n")
    .render_derived()
)
_PG_PAGE_ROWS = (
    select(messages)
    .where(
        messages.c.account_id == _PG_WANTED.c.account_id,
        messages.c.device_id == _PG_WANTED.c.device_id,
        messages.c.id > _PG_WANTED.c.after_id,
        messages.c.expires_ms > _PG_WANTED.c.now_ms,
    )
    .order_by(messages.c.id)
    .limit(_PG_WANTED.c.lim)
    .lateral()
)
_PG_PAGES = (
    select(_PG_WANTED.c.n, _PG_PAGE_ROWS)
    .select_from(_PG_WANTED.join(_PG_PAGE_ROWS, true()))
    .order_by(_PG_WANTED.c.n, _PG_PAGE_ROWS.c.id)
)
MAX_PAGE_READS = 500  # reads per statement

PageRead = tuple[str, int, int, int, int]  # account, device, after id, limit, now


class _PageReads:
    """PostgreSQL: ``page`` reads folded into one statement (``_PG_PAGES``). One runs at
    a time; the reads asked for meanwhile wait and go together in the next."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._waiting: list[tuple[PageRead, asyncio.Future[list[Any]]]] = []
        self._running: asyncio.Task[None] | None = None

    async def read(self, wanted: PageRead) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((wanted, future))
        if self._running is None:
            self._running = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:MAX_PAGE_READS]
                del self._waiting[:MAX_PAGE_READS]
                try:
                    found = await self._query([wanted for wanted, _f in batch])
                except Exception as exc:  # each reader sees it (a session retries)
                    for _w, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for i, (_w, future) in enumerate(batch):
                    if not future.done():
                        future.set_result(found[i])
        finally:
            self._running = None

    async def _query(self, reads: list[PageRead]) -> list[list[Any]]:
        columns = list(zip(*reads, strict=True))
        async with self._engine.connect() as conn:
            result = await conn.execute(
                _PG_PAGES,
                {
                    "accounts": list(columns[0]),
                    "devices": list(columns[1]),
                    "afters": list(columns[2]),
                    "limits": list(columns[3]),
                    "nows": list(columns[4]),
                },
            )
            rows = result.all()
        found: list[list[Any]] = [[] for _ in reads]
        for row in rows:
            found[row.n - 1].append(row)  # ordinality counts from 1
        return found


def _answer(batch: list[Op]) -> None:
    for op in batch:
        if not op.future.done():
            if isinstance(op, _Enqueue):
                op.future.set_result(Stored(op.server_ms, op.duplicate))
            else:
                op.future.set_result(None)


class MessageQueue:
    def __init__(
        self,
        engine: AsyncEngine,
        on_commit: OnCommit,
        wal: WalPolicy = DEFAULT_WAL,
    ) -> None:
        """``wal``: SQLite only, how the writer process keeps the WAL short."""
        self._engine = engine
        self._on_commit = on_commit
        self._loop: asyncio.AbstractEventLoop  # set by ``start``
        self._ops: list[Op] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Acknowledged but not yet committed as deleted: never handed out again,
        # even to a reconnecting device, while their delete is in flight.
        self._deleting: set[str] = set()
        self._held: list[str] = []  # acked guids waiting for an enqueue (``delete_soon``)
        self._hold_timer: asyncio.TimerHandle | None = None
        # SQLite: outcomes from the writer process that wait for an earlier one's
        # ``on_commit``, with what their own returned if it was called already.
        self._outcomes: asyncio.Queue[tuple[list[Op], Outcome, Awaitable[None] | None] | None] = (
            asyncio.Queue()
        )
        self._handing_on = False  # ``_hand_on`` is waiting for an ``on_commit``
        self._sqlite = (
            WriterProcess(str(engine.url.database), SQLITE_PRAGMAS, self._replied, wal)
            if is_sqlite(engine)
            else None
        )
        self._page_reads = None if self._sqlite is not None else _PageReads(engine)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._sqlite is not None:
            self._sqlite.start()
            self._task = asyncio.create_task(self._hand_on(), name="queue-hand-on")
        else:
            self._task = asyncio.create_task(self._writer(), name="queue-writer")

    async def close(self) -> None:
        """Finish every submitted operation, then stop (graceful shutdown)."""
        self._closing = True
        self._release()
        if self._sqlite is not None:
            await self._sqlite.close()  # its last outcomes are queued before this returns
            self._outcomes.put_nowait(None)
        else:
            self._wakeup.set()
        if self._task is not None:
            await self._task

    def enqueue(
        self, rows: list[dict[str, Any]], key: bytes | None, server_ms: int
    ) -> asyncio.Future[Stored]:
        """Store rows durably; the future resolves once they are committed (with the
        earlier server time for a duplicate key). A future, not a coroutine: the
        websocket path answers from its callback, with no task per send."""
        if self._closing:
            raise RuntimeError("queue is closing")
        op = _Enqueue(rows, key, server_ms, self._loop.create_future())
        self._release()  # held deletes go in the same transaction
        self._submit(op)
        return op.future

    async def delete(self, guids: list[str]) -> None:
        """Delete now, and wait for the commit."""
        self.delete_soon(guids)
        pending = self._release()
        if pending is not None:
            await pending

    def delete_soon(self, guids: list[str]) -> None:
        """Queue a delete of acknowledged messages without waiting for its commit.

        If the server dies first, the messages are delivered again and the client
        drops them by id (at-least-once delivery, exactly-once display). Held for the
        next enqueue's transaction (at most ``DELETE_HOLD_S``), as one operation with
        every other ack held meanwhile: an operation and a future per ack cost about
        3 us a message.
        """
        self._deleting.update(guids)
        self._held.extend(guids)
        if self._closing or len(self._held) >= DELETE_HOLD_MAX:
            self._release()
        elif self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(DELETE_HOLD_S, self._release)

    def _release(self) -> asyncio.Future[None] | None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if not self._held:
            return None
        guids, self._held = self._held, []
        op = _Delete(guids, self._loop.create_future())
        op.future.add_done_callback(partial(self._deleted, guids))
        self._submit(op)
        return op.future

    def _deleted(self, guids: list[str], future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved, so a failed delete is not reported as unhandled
        self._deleting.difference_update(guids)

    def _submit(self, op: Op) -> None:
        if self._sqlite is not None:
            # A writer that is gone fails the operation's future, never its caller:
            # an ack handled during shutdown must not raise in the frame handler.
            try:
                if isinstance(op, _Enqueue):
                    self._sqlite.submit(op, ([_COLUMNS(r) for r in op.rows], op.key, op.server_ms))
                else:
                    self._sqlite.submit(op, op.guids)
            except WriterGone as exc:
                op.future.set_exception(exc)
        else:
            self._ops.append(op)
            self._wakeup.set()

    def _replied(self, batch: list[Op], reply: Reply | Exception) -> None:
        outcome: Outcome
        if isinstance(reply, Exception):
            outcome = reply
        elif isinstance(reply, str):
            outcome = RuntimeError(f"queue commit failed in the writer process: {reply}")
        else:
            outcome = _outcome([op for op in batch if isinstance(op, _Enqueue)], reply)
        # Straight from the pipe's callback when nothing earlier is still being handed
        # on (the single node's fan-out never waits): no task step per commit, which
        # at low rates is one per message.
        if self._handing_on or not self._outcomes.empty():
            self._outcomes.put_nowait((batch, outcome, None))
            return
        pending = self._hand(batch, outcome)
        if pending is not None:
            self._outcomes.put_nowait((batch, outcome, pending))

    async def _hand_on(self) -> None:
        while (item := await self._outcomes.get()) is not None:
            self._handing_on = True
            try:
                await self._finish(*item)
            finally:
                self._handing_on = False

    async def _writer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._ops:
                batch, self._ops = self._ops[:MAX_BATCH], self._ops[MAX_BATCH:]
                outcome: Outcome
                try:
                    outcome = _outcome(
                        [op for op in batch if isinstance(op, _Enqueue)], await self._commit(batch)
                    )
                except Exception as exc:
                    outcome = exc
                await self._finish(batch, outcome)
            if self._closing:
                return

    async def _finish(
        self, batch: list[Op], outcome: Outcome, pending: Awaitable[None] | None = None
    ) -> None:
        """Hand committed rows on, then answer every operation of the batch. With
        ``pending``, they were handed on already (by ``_replied``) and this is what
        ``on_commit`` returned: wait for it, then answer."""
        if pending is None:
            pending = self._hand(batch, outcome)
        if pending is not None:
            await self._settle(pending)
            _answer(batch)

    def _hand(self, batch: list[Op], outcome: Outcome) -> Awaitable[None] | None:
        """Hand committed rows on and answer the batch; or, if ``on_commit`` returned
        something to wait for, return it (the caller answers after it)."""
        if isinstance(outcome, Exception):
            log.error("queue commit failed: %s", type(outcome).__name__)
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(outcome)
            return None
        committed, again = outcome
        if committed or again:
            try:
                pending = self._on_commit(committed, again)
            except Exception as exc:  # committed all the same: never un-acknowledge
                log.warning("handing on committed rows failed: %s", type(exc).__name__)
                pending = None
            if pending is not None:
                return pending
        _answer(batch)
        return None

    @staticmethod
    async def _settle(pending: Awaitable[None]) -> None:
        try:
            await pending
        except Exception as exc:  # committed all the same: never un-acknowledge
            log.warning("handing on committed rows failed: %s", type(exc).__name__)

    async def _commit(self, batch: Sequence[_Enqueue | _Delete]) -> list[Result]:
        """PostgreSQL: the batch in one transaction; per enqueue, its rows' ids or a
        repeat's first server time (as the SQLite writer process answers)."""
        enqueues = [op for op in batch if isinstance(op, _Enqueue)]
        # Sessions accept acks only for guids they pushed to that device, and
        # guids are random UUIDs, so deleting by guid touches only the owner's queue.
        guids = [g for op in batch if isinstance(op, _Delete) for g in op.guids]
        async with self._engine.begin() as conn:
            keyed = [op.key for op in enqueues if op.key is not None]
            stored: dict[bytes, int] = {}
            if keyed:
                found = await conn.execute(_PG_FIND_KEYS, {"keys": keyed})
                stored = {bytes(r.key): r.server_ms for r in found}
            known = set(stored)
            repeats = first_uses([(op.key, op.server_ms) for op in enqueues], stored)
            new_keys = [{"key": k, "server_ms": ms} for k, ms in stored.items() if k not in known]
            if new_keys:
                await conn.execute(insert(sent_keys), new_keys)
            rows = [
                r for op, rep in zip(enqueues, repeats, strict=True) if rep is None for r in op.rows
            ]
            ids: dict[str, int] = {}
            if rows:
                columns = {c: [r[c] for r in rows] for c in COLUMNS}
                ids = {r.guid: r.id for r in await conn.execute(_PG_INSERT, columns)}
            if guids:
                await conn.execute(_PG_DELETE, {"guids": guids})
        return [
            [ids[r["guid"]] for r in op.rows] if rep is None else rep
            for op, rep in zip(enqueues, repeats, strict=True)
        ]

    # -- reads and maintenance (outside the writer: WAL readers do not block it) ------

    async def pending(
        self, account_id: str, device_id: int, after_id: int, limit: int, now_ms: int
    ) -> list[QueuedMessage]:
        """Queued rows in id order, skipping expired ones and those being deleted."""
        return (await self.page(account_id, device_id, after_id, limit, now_ms))[0]

    async def page(
        self, account_id: str, device_id: int, after_id: int, limit: int, now_ms: int
    ) -> tuple[list[QueuedMessage], int | None]:
        """Like ``pending``, plus the id of the last row read, or None if fewer than
        ``limit`` rows were left (the queue is drained up to now)."""
        # PostgreSQL folds concurrent reads into one statement (``_PageReads``); SQLite
        # has no lateral joins, and a single node has no signals to fold.
        # Snapshot first: a delete can commit (and leave ``_deleting``) while the
        # query runs, and the query may still have seen the row.
        excluded = set(self._deleting)
        raw: Sequence[Any]
        if self._page_reads is not None:
            raw = await self._page_reads.read((account_id, device_id, after_id, limit, now_ms))
        else:
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    select(messages)
                    .where(
                        messages.c.account_id == account_id,
                        messages.c.device_id == device_id,
                        messages.c.id > after_id,
                        messages.c.expires_ms > now_ms,
                    )
                    .order_by(messages.c.id)
                    .limit(limit)
                )
                raw = rows.all()
        last = raw[-1].id if len(raw) == limit else None
        excluded |= self._deleting
        return [_to_message(r) for r in raw if r.guid not in excluded], last

    async def prune(self, now_ms: int, sent_key_before_ms: int) -> int:
        async with self._engine.begin() as conn:
            gone = await conn.execute(delete(messages).where(messages.c.expires_ms < now_ms))
            await conn.execute(delete(sent_keys).where(sent_keys.c.server_ms < sent_key_before_ms))
        return int(gone.rowcount)
