"""The SQLite queue's writer process: every queue transaction, in a process of its own.

Why a process. In a thread of the server, the writer and the event loop take turns
with one GIL: ``sqlite3`` lets go of it around each statement and, under load, waits
for the loop to give it back each time. Measured on 2 cores (about 250 messages per
commit): the transaction costs 6 ms of SQLite in a standalone process, and took 15 ms
in the server's thread, while the loop lost the writer's Python work to the GIL too.

How. The server hands the writer ``(rows, key, server_ms)`` enqueues and guid deletes,
collected over one turn of its event loop and sent as one pickled list down a pipe.
A reader thread here drains the pipe as it fills (a send never waits for a commit),
and the writer commits everything that has arrived in one transaction, then answers
with how many lists it committed and their outcome: the ids of each accepted row, or
for a repeated key the first attempt's server time. The server answers a sender only
after that reply, so a message is acknowledged only once it is on disk, as before.

The process only ever sees ciphertext rows (the same as the database holds), never
logs a value, and on an error sends back only the exception's type name. It ends when
the server sends ``None`` (after committing all that came before) or when the pipe
closes (the server died: what it committed is on disk, what it did not was never
acknowledged, and a re-send with its key is stored once).

This module imports only the standard library, so the process starts in about 0.1 s.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import logging
import multiprocessing
import os
import signal
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from queue import Empty, SimpleQueue
from typing import Any

log = logging.getLogger(__name__)

# One enqueue as sent: its rows (``COLUMNS`` order), its key, its server time.
Row = tuple[Any, ...]
Enqueue = tuple[list[Row], bytes | None, int]
Delete = list[str]
# Per enqueue: the ids of its rows (stored), or the first attempt's time (a repeat).
Result = list[int] | int
Reply = list[Result] | str  # str: the error's type name

COLUMNS = (
    "guid",
    "account_id",
    "device_id",
    "sender_account",
    "sender_device",
    "group_id",
    "envelope",
    "franking_tag",
    "server_ms",
    "expires_ms",
)
_INSERT = "INSERT INTO messages (" + ", ".join(COLUMNS) + ") VALUES "  # noqa: S608 - names above
# Rows per statement: 10 parameters each, well under SQLite's 32,766.
CHUNK = 500
# A transaction takes in more of what has arrived while it holds fewer operations
# than this (the PostgreSQL writer takes at most this many), so a burst spans several.
MAX_BATCH = 2000
PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged pipe
RESTART_AFTER_S = 1.0  # a writer that ended is started again at most this often


def chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


def marks(groups: int, width: int) -> str:
    """``groups`` parenthesised groups of ``width`` placeholders: the only text these
    statements are built from is ``?``, commas and parentheses."""
    group = "(" + ", ".join("?" * width) + ")"
    return ", ".join([group] * groups)


def first_uses(
    enqueues: Sequence[tuple[bytes | None, int]], stored: dict[bytes, int]
) -> list[int | None]:
    """The idempotency rule, for ``(key, server_ms)`` in arrival order: an enqueue whose
    key is ``stored`` (or came earlier in this batch) is a repeat, answered with the
    first attempt's time; the others (None here) are stored. ``stored`` gains the
    keys stored now."""
    out: list[int | None] = []
    for key, server_ms in enqueues:
        if key is not None and key in stored:
            out.append(stored[key])
        else:
            if key is not None:
                stored[key] = server_ms
            out.append(None)
    return out


# --- the writer process -------------------------------------------------------------------


def connect(path: str, pragmas: Sequence[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    for pragma in pragmas:
        conn.execute(pragma)
    return conn


class Writer:
    """The transactions themselves, on a connection this process owns."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._synchronous = "FULL"  # as the server's pragmas set it

    def commit(self, enqueues: list[Enqueue], guids: list[str]) -> list[Result]:
        conn = self.conn
        # A batch of deletes alone is not fsynced: the next commit that stores a
        # message fsyncs the WAL, and with it every commit before it. A crash in
        # between only brings acknowledged messages back, which the client drops by
        # id (as with ``delete_soon``); a stored message is always synced before
        # its sender's answer.
        synchronous = "FULL" if enqueues else "NORMAL"
        if synchronous != self._synchronous:
            conn.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous
        conn.execute("BEGIN IMMEDIATE")
        try:
            first: dict[bytes, int] = {}
            for _rows, key, server_ms in enqueues:
                if key is not None:
                    first.setdefault(key, server_ms)
            # Storing a key is also its lookup: what the insert ignores was stored
            # by an earlier batch, and only those need their first time read.
            new: set[bytes] = set()
            for chunk in chunks(list(first.items())):
                new.update(
                    bytes(k)
                    for (k,) in conn.execute(
                        "INSERT OR IGNORE INTO sent_keys (key, server_ms) VALUES "  # noqa: S608 - placeholders
                        + marks(len(chunk), 2)
                        + " RETURNING key",
                        [v for item in chunk for v in item],
                    )
                )
            stored: dict[bytes, int] = {}
            for chunk in chunks([k for k in first if k not in new]):
                found = conn.execute(
                    "SELECT key, server_ms FROM sent_keys WHERE key IN "  # noqa: S608 - placeholders
                    + marks(1, len(chunk)),
                    chunk,
                )
                stored.update((bytes(k), ms) for k, ms in found)
            repeats = first_uses([(key, ms) for _rows, key, ms in enqueues], stored)
            rows = [
                r
                for (op_rows, _k, _ms), rep in zip(enqueues, repeats, strict=True)
                if rep is None
                for r in op_rows
            ]
            ids: dict[str, int] = {}
            for chunk in chunks(rows):
                ids.update(
                    (guid, id_)
                    for id_, guid in conn.execute(
                        _INSERT + marks(len(chunk), len(COLUMNS)) + " RETURNING id, guid",
                        [v for r in chunk for v in r],
                    )
                )
            for chunk in chunks(guids):
                conn.execute(
                    "DELETE FROM messages WHERE guid IN " + marks(1, len(chunk)),  # noqa: S608 - placeholders
                    chunk,
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return [
            [ids[r[0]] for r in op_rows] if rep is None else rep
            for (op_rows, _k, _ms), rep in zip(enqueues, repeats, strict=True)
        ]

    def checkpoint(self) -> None:
        """Finish folding the WAL into the database, between two of this writer's
        commits, so that the next commit writes the WAL from its start again.

        The checkpoint thread (``_checkpoints``) does the bulk of the copying
        beside the commits, but it races them: under load it never catches up with
        the end of the WAL, so the WAL never starts over and grows without bound
        (measured: 45 MB/s, 670 MB in 14 s). Here no queue frame is added while it
        runs, so unless a reader still holds an old snapshot it catches up. It
        costs the commits an fsync of the database (about 1 ms at 2,000 messages/s,
        as the thread flushes what it copied: ``fold``), so it runs
        only when the checkpoint thread finds the WAL long (``WalPolicy``): run
        after every commit that came a second after the last, it took the p99 at
        2,000 messages/s from 6-9 ms to 14-16 ms. Even so, a reader that keeps a
        snapshot can keep the WAL from starting over; measured under load (15 s
        at 12,500 messages/s), it then held a median of 5,200 frames and at most
        34,000, where it used to grow without bound.
        """
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("checkpoint failed: %s", type(exc).__name__)


@dataclass(frozen=True)
class WalPolicy:
    """How the writer process keeps the WAL short (SQLite only)."""

    # Small and often: each checkpoint's fsync then flushes little, and on ext4
    # (data=ordered) a commit's fsync waits behind whatever the checkpoint wrote.
    # Measured, p99 at 2,000 messages/s: 9.9 ms with 1 s and 16,384 frames; 5.2-7.4
    # ms with 0.25 s and 4,096; 4.8-5.5 ms with 0.1 s and 2,048. Since each pass also
    # flushes the database file (``fold``), with 4,096 frames, six 8 s windows each
    # (2026-12-07, 2 cores): 0.25 s 4.2-4.8 ms; 0.1 s 3.5-4.5; 0.05 s 3.0-3.9 (one
    # window of twelve 7.7); 0.02 s 3.2-5.4; 0.01 s 3.2-12.4, with p50 up by 0.2 ms.
    # 2,048 or 8,192 frames at 0.05 s: no difference that shows. Idle, a pass is a
    # PASSIVE checkpoint with nothing to copy and a flush with nothing to write: the
    # idle writer process uses 0.8% of a core.
    checkpoint_s: float = 0.05  # the checkpoint thread's period
    restart_frames: int = 4096  # 16 MiB of 4 KiB pages: the writer then finishes it


DEFAULT_WAL = WalPolicy()


def _checkpoints(
    path: str, pragmas: Sequence[str], policy: WalPolicy, wanted: threading.Event
) -> None:
    """Fold the WAL into the database beside the commits (PASSIVE: never blocks a
    writer), from a connection of its own; when idle, this alone empties the WAL,
    whatever store's commits it holds."""
    conn = connect(path, pragmas)
    database = os.open(path, os.O_RDONLY)
    while True:
        time.sleep(policy.checkpoint_s)
        fold(conn, database, policy, wanted)


def fold(
    conn: sqlite3.Connection, database: int, policy: WalPolicy, wanted: threading.Event
) -> None:
    """One pass of the checkpoint thread.

    The pass also flushes the database file (``database``, a file descriptor).
    SQLite syncs that file only when a checkpoint reaches the end of the WAL, and
    under load only the writer's own (``Writer.checkpoint``) does: it then flushed
    everything this thread had copied since the last one, while commits waited.
    Measured at 2,000 messages/s (2 cores, after 140,000 messages): the writer's
    checkpoint took 5.0-5.6 ms (median) without this flush, 1.0-1.1 ms with it. When
    nothing was copied the flush has nothing to write (about 60 us)."""
    try:
        _busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if done > 0:
            os.fdatasync(database)
    except (sqlite3.Error, OSError) as exc:
        log.warning("checkpoint failed: %s", type(exc).__name__)
        return
    if frames >= policy.restart_frames:
        wanted.set()


def _drain(pipe: Connection, inbox: SimpleQueue[list[Enqueue | Delete] | None]) -> None:
    """Read the pipe as fast as the server fills it, so its sends never wait."""
    while True:
        try:
            item = pipe.recv()
        except (EOFError, OSError):
            item = None
        inbox.put(item)
        if item is None:
            return


def serve(
    path: str,
    pragmas: Sequence[str],
    policy: WalPolicy,
    inbound: Connection,
    outbound: Connection,
) -> None:
    """The writer process's main: commit what arrives until told to stop."""
    # The server decides when this process stops (a Ctrl-C reaches the whole
    # process group): it sends None once everything before it was submitted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.setswitchinterval(0.0005)  # the drain thread gets the GIL back promptly
    writer = Writer(connect(path, pragmas))
    inbox: SimpleQueue[list[Enqueue | Delete] | None] = SimpleQueue()
    threading.Thread(target=_drain, args=(inbound, inbox), daemon=True).start()
    wanted = threading.Event()
    threading.Thread(target=_checkpoints, args=(path, pragmas, policy, wanted), daemon=True).start()
    stop = False
    while not stop:
        first = inbox.get()
        if first is None:
            break
        lists = [first]
        count = len(first)
        while count < MAX_BATCH:
            try:
                item = inbox.get_nowait()
            except Empty:
                break
            if item is None:
                stop = True
                break
            lists.append(item)
            count += len(item)
        enqueues = [op for ops in lists for op in ops if isinstance(op, tuple)]
        guids = [g for ops in lists for op in ops if isinstance(op, list) for g in op]
        reply: Reply
        try:
            reply = writer.commit(enqueues, guids)
        except Exception as exc:
            reply = type(exc).__name__
        try:
            outbound.send((len(lists), reply))
        except OSError:
            break  # the server is gone
        if wanted.is_set():
            wanted.clear()
            writer.checkpoint()
    writer.conn.close()


# --- the server's side ----------------------------------------------------------------------


class WriterGone(Exception):
    """The writer process ended before it answered: nothing it did not answer was
    acknowledged to anyone."""


Token = Any


class WriterProcess:
    """Starts the writer process and talks to it from the event loop.

    ``submit`` queues one operation; all those submitted in one turn of the loop go
    down the pipe together. ``done(tokens, reply)`` is called in commit order with
    the tokens of the operations committed together and the process's reply, or a
    ``WriterGone`` if it ended first.
    """

    def __init__(
        self,
        path: str,
        pragmas: Sequence[str],
        done: Callable[[list[Token], Reply | Exception], None],
        wal: WalPolicy = DEFAULT_WAL,
    ) -> None:
        self._path = path
        self._wal = wal
        self._pragmas = list(pragmas)
        self._done = done
        self._unsent: list[tuple[Token, Enqueue | Delete]] = []
        self._sent: deque[list[Token]] = deque()  # per list sent, its tokens
        self._ended = asyncio.Event()
        self._started = 0.0
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: Any = None
        self._to: Connection | None = None
        self._from: Connection | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()
        # Runs before multiprocessing's own exit handler (registered earlier), which
        # would otherwise wait forever for a process that ignores SIGTERM.
        atexit.register(self._abandon)

    def _abandon(self) -> None:
        """At exit without ``close``: the process sees its pipe end, commits what it
        had, and ends (what it commits was never acknowledged: a re-send is stored
        once)."""
        if self._to is not None:
            with contextlib.suppress(OSError):
                self._to.close()

    def _spawn(self) -> None:
        assert self._loop is not None
        self._started = time.monotonic()
        self._ended = asyncio.Event()
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
        child_in, self._to = ctx.Pipe(duplex=False)
        self._from, child_out = ctx.Pipe(duplex=False)
        for end in (self._to, child_out):
            with contextlib.suppress(OSError):
                fcntl.fcntl(end.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._process = ctx.Process(
            target=serve,
            args=(self._path, self._pragmas, self._wal, child_in, child_out),
            name="parley-queue-writer",
            daemon=True,
        )
        self._process.start()
        child_in.close()
        child_out.close()
        self._loop.add_reader(self._from.fileno(), self._readable)

    def submit(self, token: Token, op: Enqueue | Delete) -> None:
        if self._ended.is_set():
            # Killed (say, by the OOM killer): start another, though not in a loop
            # if it cannot even start. What the dead one did not answer was failed.
            if self._closing or time.monotonic() - self._started < RESTART_AFTER_S:
                raise WriterGone("the queue writer process has ended")
            log.warning("starting the queue writer process again")
            self._close_pipes()
            self._spawn()
        if not self._unsent:
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        self._unsent.append((token, op))

    def _flush(self) -> None:
        if not self._unsent or self._to is None:
            return
        batch, self._unsent = self._unsent, []
        self._sent.append([token for token, _op in batch])
        try:
            self._to.send([op for _token, op in batch])
        except OSError:
            self._gone()

    def _readable(self) -> None:
        assert self._from is not None
        try:
            while self._from.poll():
                count, reply = self._from.recv()
                tokens = [t for _ in range(count) for t in self._sent.popleft()]
                self._done(tokens, reply)
        except (EOFError, OSError):
            self._gone()

    def _gone(self) -> None:
        if self._ended.is_set():
            return
        self._ended.set()
        assert self._loop is not None and self._from is not None
        self._loop.remove_reader(self._from.fileno())
        unanswered = [t for tokens in self._sent for t in tokens]
        unanswered += [t for t, _op in self._unsent]
        self._sent.clear()
        self._unsent.clear()
        if unanswered:
            log.error("the queue writer process ended with operations unanswered")
            self._done(unanswered, WriterGone("the queue writer process ended"))

    async def close(self) -> None:
        """Commit everything submitted so far, then stop the process."""
        if self._process is None:
            return
        self._closing = True
        atexit.unregister(self._abandon)
        self._flush()
        if self._to is not None and not self._ended.is_set():
            with contextlib.suppress(OSError):
                self._to.send(None)
        await self._ended.wait()  # its answers come first, then the end of the pipe
        await asyncio.to_thread(self._process.join)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for end in (self._to, self._from):
            if end is not None:
                end.close()
        self._to = self._from = None
