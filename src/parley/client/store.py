"""The local profile: one SQLite database per profile, sensitive columns encrypted.

``DIR/profile.db`` (0600 in a 0700 directory). Decided against SQLCipher: the
project takes every primitive from pyca/cryptography, and SQLCipher would bring
a second one. So the database is plain SQLite and its sensitive columns are
AES-256-GCM under keys derived, once per open, from the passphrase with Argon2id
(salt and parameters in the plaintext ``meta`` table):

- ``state``: the profile's small records (device keys and ratchets, contacts,
  groups, key-transparency view, settings), one encrypted row each, rewritten
  only when it changed;
- ``messages``: the history, one encrypted row per message. A message's id and
  chat are stored as HMAC-SHA256 tags (blind indexes), so lookups and the chat
  view use indexes without the database naming a phone number or group;
- ``chats``: the conversation list (last message, unread count), kept in the
  same transaction as each message, so opening a profile does not read history;
- ``terms``: a blind index of the words of each message, for search;
- ``seen``: tags of the server's delivery ids already handled (exactly once).

What the file still shows to someone holding it without the passphrase: how
many messages and chats there are, their order, which are unread, and which
messages share a word. Not their text, senders, numbers or names.

Every change of one operation commits in one transaction (WAL, synchronous
FULL), so a crash loses nothing acknowledged and shows nothing twice. The
``generation`` counter in ``meta`` lets a process that keeps the profile open
(``parley daemon``, ``receive --follow``) see that another process wrote it,
and reload before it touches ratchet state again.

A profile in the earlier format (``profile.meta`` + ``profile.enc``, one
encrypted JSON document) is imported on first open, history included, and the
old files are removed only after the import committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from argon2.low_level import Type, hash_secret_raw

from parley.client.records import ChatSummary, Message
from parley.crypto.primitives import aead_decrypt, aead_encrypt, hkdf, hmac_sha256
from parley.errors import DecryptionError, ParleyError

FORMAT = 2
# Argon2id, RFC 9106's second recommended option scaled to a CLI that derives
# the key once per command: 64 MiB, 3 passes (~0.2 s here).
ARGON2 = {"time_cost": 3, "memory_cost": 64 * 1024, "parallelism": 1}
CHECK = b"parley/profile/check"
MAX_TERMS = 64  # distinct words indexed per message
WORD = re.compile(r"\w{2,32}", re.UNICODE)
SEEN_KEPT = 100_000

SCHEMA = [
    # 1: the first database format
    """
    CREATE TABLE state (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id_tag BLOB NOT NULL UNIQUE,
        chat_tag BLOB NOT NULL,
        outgoing INTEGER NOT NULL,
        unread INTEGER NOT NULL DEFAULT 0,
        status INTEGER NOT NULL DEFAULT 0,
        body BLOB NOT NULL
    );
    CREATE INDEX messages_by_chat ON messages (chat_tag, seq);
    CREATE INDEX messages_unread ON messages (chat_tag, unread) WHERE unread = 1;
    CREATE TABLE chats (
        chat_tag BLOB PRIMARY KEY,
        last_seq INTEGER NOT NULL,
        unread INTEGER NOT NULL DEFAULT 0,
        body BLOB NOT NULL
    );
    CREATE INDEX chats_by_last ON chats (last_seq);
    CREATE TABLE terms (term_tag BLOB NOT NULL, seq INTEGER NOT NULL);
    CREATE INDEX terms_by_tag ON terms (term_tag, seq);
    CREATE TABLE seen (tag BLOB PRIMARY KEY, at INTEGER NOT NULL);
    """,
]

# Delivery state of an outgoing message, in the order it can only move forward.
SENT, DELIVERED, READ = 1, 2, 3
STATUS = {0: "", SENT: "sent", DELIVERED: "delivered", READ: "read"}


class ProfileError(ParleyError):
    code = "profile_error"


class WrongPassphrase(ProfileError):
    code = "wrong_passphrase"


class NoProfile(ProfileError):
    code = "no_profile"


class Profile:
    """One profile directory. ``load``/``save`` move the small records; the
    message methods write into the open transaction, which ``save`` commits."""

    def __init__(self, directory: Path, passphrase: str) -> None:
        self.dir = directory
        self._passphrase = passphrase.encode()
        self._db: sqlite3.Connection | None = None
        self._enc: bytes | None = None
        self._idx: bytes | None = None
        self._written: dict[str, bytes] = {}  # name -> JSON last written (or read)
        self._generation = -1
        self._lock_depth = 0
        # The connection's count of changed rows when the open transaction began (or
        # earlier): ``save`` writes nothing when no row changed since.
        self._changes_at_begin = -1

    @property
    def db_path(self) -> Path:
        return self.dir / "profile.db"

    @property
    def legacy_paths(self) -> tuple[Path, Path]:
        return self.dir / "profile.meta", self.dir / "profile.enc"

    def exists(self) -> bool:
        return self.db_path.exists() or all(p.exists() for p in self.legacy_paths)

    # -- keys and the connection -------------------------------------------------------------

    def _derive(self, salt: bytes, params: dict[str, int]) -> bytes:
        return hash_secret_raw(
            self._passphrase,
            salt,
            params["time_cost"],
            params["memory_cost"],
            params["parallelism"],
            32,
            Type.ID,
        )

    def _set_keys(self, master: bytes) -> None:
        self._enc = hkdf(master, None, b"parley/profile/encrypt", 32)
        self._idx = hkdf(master, None, b"parley/profile/index", 32)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA synchronous = FULL")
        return db

    def open(self) -> None:
        """Derive the key and open the database now rather than on the first ``load``
        (the command line runs the Argon2id while it imports the client). Nothing is
        done for a profile not made yet, nor for one in the earlier format: its import
        is left to ``load``, under the profile's lock."""
        if self.db_path.exists():
            self._conn()

    def _conn(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        if not self.db_path.exists():
            if all(p.exists() for p in self.legacy_paths):
                self._import_legacy()
            else:
                raise NoProfile(f"no Parley profile in {self.dir}: run 'parley register' first")
        try:
            db = self._connect()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise ProfileError(f"unreadable profile database in {self.dir}") from exc
        if int(meta.get("format", 0)) != FORMAT:
            db.close()
            raise ProfileError("profile written by an unknown version of Parley")
        self._set_keys(self._derive(bytes.fromhex(meta["salt"]), json.loads(meta["argon2"])))
        try:
            self._open_blob(bytes.fromhex(meta["check"]), CHECK)
        except DecryptionError as exc:
            db.close()
            self._enc = self._idx = None
            raise WrongPassphrase("wrong passphrase (the profile was not changed)") from exc
        self._db = db
        self._migrate(db, int(meta.get("schema", 0)))
        return db

    def _migrate(self, db: sqlite3.Connection, at: int) -> None:
        if at >= len(SCHEMA):
            return
        with self._transaction(db):
            for script in SCHEMA[at:]:
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(len(SCHEMA)),))

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        self._changes_at_begin = db.total_changes
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _begin(self) -> sqlite3.Connection:
        db = self._conn()
        if not db.in_transaction:
            db.execute("BEGIN IMMEDIATE")
            self._changes_at_begin = db.total_changes
        return db

    def close(self) -> None:
        if self._db is not None:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._db.close()
            self._db = None

    # -- sealing -------------------------------------------------------------------------------

    def _seal(self, data: bytes, ad: bytes) -> bytes:
        assert self._enc is not None
        nonce = secrets.token_bytes(12)
        return nonce + aead_encrypt(self._enc, nonce, data, b"parley/profile/v2|" + ad)

    def _open_blob(self, blob: bytes, ad: bytes) -> bytes:
        assert self._enc is not None
        return aead_decrypt(self._enc, blob[:12], blob[12:], b"parley/profile/v2|" + ad)

    def tag(self, kind: str, value: str) -> bytes:
        if self._idx is None:
            self._conn()
        assert self._idx is not None
        return hmac_sha256(self._idx, f"{kind}\x00{value}".encode())[:16]

    # -- creation, import ------------------------------------------------------------------------

    def create(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.close()
        for path in (self.db_path, *_sidecars(self.db_path), *self.legacy_paths):
            path.unlink(missing_ok=True)
        salt = secrets.token_bytes(16)
        self._build(salt, ARGON2, self._derive(salt, ARGON2), state, [], [])

    def _build(
        self,
        salt: bytes,
        params: dict[str, int],
        master: bytes,
        state: dict[str, Any],
        history: list[dict[str, Any]],
        seen: list[str],
    ) -> None:
        """Write a whole new database beside the final name, then rename it in."""
        tmp = self.db_path.with_name("profile.db.new")
        for path in (tmp, *_sidecars(tmp)):
            path.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._set_keys(master)
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = DELETE")
            with self._transaction(db):
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                check = self._seal(b"", CHECK)
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("format", str(FORMAT)),
                        ("schema", "0"),
                        ("salt", salt.hex()),
                        ("argon2", json.dumps(params)),
                        ("check", check.hex()),
                        ("generation", "0"),
                    ],
                )
            self._migrate(db, 0)
            self._db = db
            with self._transaction(db):
                self._write_state(db, state)
                for entry in history:
                    self.add_message(Message.from_entry(entry), unread=False)
                for frame_id in seen:
                    self.mark_seen(frame_id)
            db.execute("PRAGMA journal_mode = WAL")
        finally:
            self._db = None
            db.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.db_path)
        _fsync_dir(self.dir)
        self._written = {}

    def _import_legacy(self) -> None:
        meta_path, data_path = self.legacy_paths
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_text())
            blob = data_path.read_bytes()
        except (OSError, ValueError) as exc:
            raise ProfileError(f"unreadable profile metadata in {self.dir}") from exc
        if meta.get("format") != 1:
            raise ProfileError("profile written by an unknown version of Parley")
        p = meta["argon2"]
        salt = bytes.fromhex(meta["salt"])
        master = self._derive(salt, p)
        try:
            plain = aead_decrypt(master, blob[:12], blob[12:], b"parley/profile/v1")
        except DecryptionError as exc:
            raise WrongPassphrase("wrong passphrase (the profile was not changed)") from exc
        state: dict[str, Any] = json.loads(plain)
        history = list(state.pop("history", []))
        seen = [str(s) for s in state.pop("seen", [])]
        self._build(salt, p, master, state, history, seen)
        for path in self.legacy_paths:
            path.unlink(missing_ok=True)
        _fsync_dir(self.dir)

    # -- the small records -------------------------------------------------------------------------

    def unchanged(self) -> bool:
        """Nobody else wrote the profile since this process last read or wrote it."""
        if self._db is None:
            return False
        row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) == self._generation

    def load(self) -> dict[str, Any]:
        db = self._conn()
        state: dict[str, Any] = {}
        self._written = {}
        for name, value in db.execute("SELECT name, value FROM state"):
            try:
                plain = self._open_blob(value, b"state|" + name.encode())
            except DecryptionError as exc:
                raise ProfileError(f"the profile's {name!r} record does not authenticate") from exc
            self._written[name] = plain
            state[name] = json.loads(plain)
        row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        self._generation = int(row[0])
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write what changed (records, messages added since) in one commit. When no
        row changed (an operation that found nothing to do), the transaction ends
        without a write: no commit to sync, and the generation stays, since no other
        process has anything to reload."""
        db = self._begin()
        try:
            self._write_state(db, state)
            if db.total_changes == self._changes_at_begin:
                db.execute("COMMIT")  # nothing written: ends the transaction, syncs nothing
                return
            db.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
            )
            self._generation = int(
                db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db is not None and self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _write_state(self, db: sqlite3.Connection, state: dict[str, Any]) -> None:
        for name, value in state.items():
            plain = json.dumps(value, separators=(",", ":")).encode()
            if self._written.get(name) == plain:
                continue
            db.execute(
                "INSERT INTO state VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, self._seal(plain, b"state|" + name.encode())),
            )
            self._written[name] = plain
        for gone in set(self._written) - set(state):
            db.execute("DELETE FROM state WHERE name = ?", (gone,))
            del self._written[gone]

    # -- messages ------------------------------------------------------------------------------------

    def _message_ad(self, id_tag: bytes, chat_tag: bytes) -> bytes:
        return b"message|" + id_tag + chat_tag

    def add_message(self, message: Message, unread: bool) -> int:
        """Append to the history (in the open transaction); returns its sequence number."""
        db = self._begin()
        id_tag, chat_tag = self.tag("id", message.id), self.tag("chat", message.chat)
        body = self._seal(message.to_json(), self._message_ad(id_tag, chat_tag))
        cur = db.execute(
            "INSERT INTO messages (id_tag, chat_tag, outgoing, unread, status, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (id_tag, chat_tag, int(message.outgoing), int(unread), message.status_code, body),
        )
        seq = int(cur.lastrowid or 0)
        summary = json.dumps(
            {
                "chat": message.chat,
                "group": message.group,
                "last": message.preview(),
                "sender": message.sender,
                "sender_name": message.sender_name,
                "sent_at": message.sent_at,
            }
        ).encode()
        db.execute(
            "INSERT INTO chats VALUES (?, ?, ?, ?) ON CONFLICT (chat_tag) DO UPDATE SET "
            "last_seq = excluded.last_seq, unread = chats.unread + excluded.unread, "
            "body = excluded.body",
            (chat_tag, seq, int(unread), self._seal(summary, b"chat|" + chat_tag)),
        )
        words = {w.lower() for w in WORD.findall(message.text)}
        db.executemany(
            "INSERT INTO terms VALUES (?, ?)",
            [(self.tag("word", w), seq) for w in sorted(words)[:MAX_TERMS]],
        )
        return seq

    def has_message(self, message_id: str) -> bool:
        row = (
            self._conn()
            .execute("SELECT 1 FROM messages WHERE id_tag = ?", (self.tag("id", message_id),))
            .fetchone()
        )
        return row is not None

    def _decode(self, row: tuple[Any, ...]) -> Message:
        seq, id_tag, chat_tag, unread, status, body = row
        try:
            plain = self._open_blob(body, self._message_ad(id_tag, chat_tag))
        except DecryptionError as exc:
            raise ProfileError("a message in the profile does not authenticate") from exc
        return Message.from_json(plain, seq=seq, unread=bool(unread), status_code=status)

    _COLUMNS = "seq, id_tag, chat_tag, unread, status, body"

    def find_message(self, message_id: str) -> Message | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {self._COLUMNS} FROM messages WHERE id_tag = ?",  # noqa: S608 - constant columns
                (self.tag("id", message_id),),
            )
            .fetchone()
        )
        return self._decode(row) if row else None

    def messages(
        self, chat: str, limit: int | None = None, before: int | None = None
    ) -> list[Message]:
        """A chat's messages, oldest first: the last ``limit`` before sequence ``before``."""
        query = f"SELECT {self._COLUMNS} FROM messages WHERE chat_tag = ?"  # noqa: S608
        args: list[Any] = [self.tag("chat", chat)]
        if before is not None:
            query += " AND seq < ?"
            args.append(before)
        query += " ORDER BY seq DESC"
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        rows = self._conn().execute(query, args).fetchall()
        return [self._decode(r) for r in reversed(rows)]

    def all_messages(self) -> Iterator[Message]:
        for row in self._conn().execute(
            f"SELECT {self._COLUMNS} FROM messages ORDER BY seq"  # noqa: S608
        ):
            yield self._decode(row)

    def search(self, text: str, limit: int = 100) -> list[Message]:
        """Messages containing every word of ``text``, newest first (the index narrows,
        the decrypted text confirms: a tag collision never shows a wrong message)."""
        words = sorted({w.lower() for w in WORD.findall(text)})
        if not words:
            return []
        tags = [self.tag("word", w) for w in words]
        marks = ",".join("?" * len(tags))
        rows = (
            self._conn()
            .execute(
                f"SELECT {self._COLUMNS} FROM messages WHERE seq IN ("  # noqa: S608
                f"SELECT seq FROM terms WHERE term_tag IN ({marks}) GROUP BY seq "
                "HAVING COUNT(DISTINCT term_tag) = ?) ORDER BY seq DESC",
                [*tags, len(tags)],
            )
            .fetchall()
        )
        found = [
            m
            for m in map(self._decode, rows)
            if set(words) <= {w.lower() for w in WORD.findall(m.text)}
        ]
        return found[:limit]

    def chats(self) -> list[ChatSummary]:
        """The conversation list, most recent first."""
        out = []
        for chat_tag, last_seq, unread, body in self._conn().execute(
            "SELECT chat_tag, last_seq, unread, body FROM chats ORDER BY last_seq DESC"
        ):
            try:
                info = json.loads(self._open_blob(body, b"chat|" + chat_tag))
            except DecryptionError as exc:
                raise ProfileError("a chat in the profile does not authenticate") from exc
            out.append(ChatSummary.from_dict(info, unread=unread, last_seq=last_seq))
        return out

    def mark_read(self, chat: str) -> list[Message]:
        """Mark a chat read (in the open transaction); returns the messages that were unread."""
        db = self._begin()
        chat_tag = self.tag("chat", chat)
        rows = db.execute(
            f"SELECT {self._COLUMNS} FROM messages WHERE chat_tag = ? AND unread = 1 ORDER BY seq",  # noqa: S608
            (chat_tag,),
        ).fetchall()
        db.execute("UPDATE messages SET unread = 0 WHERE chat_tag = ? AND unread = 1", (chat_tag,))
        db.execute("UPDATE chats SET unread = 0 WHERE chat_tag = ?", (chat_tag,))
        return [self._decode(r) for r in rows]

    def set_status(self, message_id: str, chat: str, status: int) -> bool:
        """Move an outgoing message of ``chat`` forward to ``status`` (never back)."""
        cur = self._begin().execute(
            "UPDATE messages SET status = ? WHERE id_tag = ? AND chat_tag = ? AND outgoing = 1 "
            "AND status < ?",
            (status, self.tag("id", message_id), self.tag("chat", chat), status),
        )
        return cur.rowcount > 0

    def seen(self, frame_id: str) -> bool:
        row = (
            self._conn()
            .execute("SELECT 1 FROM seen WHERE tag = ?", (self.tag("seen", frame_id),))
            .fetchone()
        )
        return row is not None

    def mark_seen(self, frame_id: str) -> None:
        db = self._begin()
        db.execute(
            "INSERT OR IGNORE INTO seen VALUES (?, ?)",
            (self.tag("seen", frame_id), time.time_ns()),
        )

    def prune_seen(self) -> None:
        """Keep the newest ``SEEN_KEPT`` delivery ids (the server redelivers only recent ones)."""
        db = self._begin()
        db.execute(
            "DELETE FROM seen WHERE at < (SELECT at FROM seen ORDER BY at DESC LIMIT 1 OFFSET ?)",
            (SEEN_KEPT,),
        )

    # -- the directory ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The profile's lock across processes; re-entered freely within this one
        (the app serialises its own operations with an asyncio lock)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def set_aside(self) -> Path:
        """Rename the whole profile directory to a new sibling, never deleting it;
        returns the new path."""
        self.close()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target, n = self.dir.with_name(f"{self.dir.name}.replaced-{stamp}"), 0
        while target.exists():
            n += 1
            target = self.dir.with_name(f"{self.dir.name}.replaced-{stamp}-{n}")
        os.rename(self.dir, target)
        self._enc = self._idx = None
        return target

    def wipe(self) -> None:
        self.close()
        paths: Iterable[Path] = (
            self.db_path,
            *_sidecars(self.db_path),
            *self.legacy_paths,
            self.dir / "lock",
        )
        for path in paths:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def _sidecars(db: Path) -> tuple[Path, Path, Path]:
    return (
        db.with_name(db.name + "-wal"),
        db.with_name(db.name + "-shm"),
        db.with_name(db.name + "-journal"),
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
