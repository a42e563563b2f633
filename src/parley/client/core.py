"""``Client``: one async client of a profile, the core the command line, the daemon
(``parley daemon``) and the terminal app (``parley tui``) share.

It keeps the profile open (the passphrase's Argon2id runs once), runs the push
socket when asked (``listen``), and turns what happens into ``Event`` records on
one stream: incoming messages and group changes, receipts, refusals, alarms and
notes. Reads (chat list, history, search) touch only the local database.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import mimetypes
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley.client.app import App, ClientError
from parley.client.records import ChatSummary, Message
from parley.client.state import ContactRecord
from parley.client.store import Profile
from parley.errors import ParleyError

MAX_EVENTS = 10_000  # events kept for a slow reader; the oldest are dropped first

# Where the notes of the operation running in this context go (the daemon sets it
# per request, so a caller sees the notes of its own command, as a command run
# alone prints them); unset, notes are events on the stream.
note_sink: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "parley_note_sink", default=None
)


@dataclass
class Event:
    """``kind`` is one of: ``message`` (``data`` is a message's public form),
    ``receipt`` (``id``, ``status``), ``refusal`` (``sender``, ``reason``),
    ``alarm`` (``text``), ``note`` (``text``)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.data}


class Client:
    def __init__(self, profile: Profile) -> None:
        self.app = App(profile, notify=self._note)
        self.app.on_refusal = lambda who, why: self._emit("refusal", sender=who, reason=why)
        self.app.on_alarm = lambda text: self._emit("alarm", text=text)
        self.app.on_receipt = lambda mid, status: self._emit("receipt", id=mid, status=status)
        self._queue: asyncio.Queue[Event] = asyncio.Queue(MAX_EVENTS)
        self._listening: asyncio.Task[None] | None = None

    # -- life ------------------------------------------------------------------------------------

    async def open(self) -> dict[str, Any]:
        """Open the profile (derives the key once); returns who it is."""
        return self.app.whoami()

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError, ParleyError):
                await self._listening
            self._listening = None
        await self.app.close()

    # -- events ----------------------------------------------------------------------------------

    def _emit(self, kind: str, **data: Any) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(Event(kind, data))

    def _note(self, line: str) -> None:
        sink = note_sink.get()
        if sink is not None:
            sink(line)
            if not line.startswith("ALARM"):
                return
        self._emit("alarm" if line.startswith("ALARM") else "note", text=line)

    def listen(self) -> asyncio.Task[None]:
        """Start receiving in real time (reconnecting while the server is away)."""
        if self._listening is None or self._listening.done():
            self._listening = asyncio.create_task(self._receive())
        return self._listening

    async def _receive(self) -> None:
        def shown(entry: dict[str, Any]) -> None:
            message = Message.from_entry(entry)
            public = message.public()
            # attachment ids too: what `attachment save` and `receive --json` name them by
            public["attachments"] = [{"id": a.id, **a.summary()} for a in message.attachments]
            self._emit("message", **public)

        await self.app.receive(follow=True, timeout=None, on_message=shown)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()

    def pending_events(self) -> list[Event]:
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    # -- local reads -----------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        return self.app.whoami()

    def chats(self) -> list[ChatSummary]:
        """The conversation list, most recent first, titled by contact or group name."""
        return self.app.chats()

    def messages(self, chat: str, limit: int = 50, before: int | None = None) -> list[Message]:
        """A chat's last ``limit`` messages (before sequence ``before``), oldest first."""
        self.app.local_state()
        chat = self.chat_id(chat)
        return self.app.profile.messages(chat, limit=limit, before=before)

    def search(self, text: str, limit: int = 100) -> list[Message]:
        self.app.local_state()
        return self.app.profile.search(text, limit)

    def chat_id(self, ref: str) -> str:
        """A chat named by a phone number, or a group by id or name."""
        if ref.startswith("+"):
            from parley.client.app import normalize_phone

            return normalize_phone(ref)
        return self.app.group_id(self.app.local_state(), ref)

    def contacts(self) -> list[ContactRecord]:
        """The profile's contacts, by account id."""
        state = self.app.local_state()
        return [c for _a, c in sorted(state.contacts.items())]

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """The app's turn, for local reads between its operations (the daemon reads while
        its listener receives): never inside another operation's open transaction.
        Not re-entrant: call no ``App`` operation inside it."""
        async with self.app._exclusive():
            yield

    def alarms(self) -> list[str]:
        return self.app.warnings()

    async def current_alarms(self) -> list[str]:
        """``alarms()`` taken in the app's turn: never in the middle of another operation
        (``warnings`` writes the profile, which would commit that operation's half-done
        transaction). The terminal app calls it while its listener receives."""

        async def act(_s: Any) -> list[str]:
            return self.app.warnings()

        return list(await self.app.run(act, retries=0))

    # -- actions ---------------------------------------------------------------------------------

    async def send(self, recipient: str, text: str, attachments: list[Path] | None = None) -> str:
        """Send to a phone number, or to a group (by id or name); returns the message id."""
        files = [_read(p) for p in attachments or []]
        if recipient.startswith("+"):
            return await self.app.send(recipient, text, files, lambda _n, _s: None)
        if files:
            raise ClientError("attachments go to 1:1 chats only")
        return await self.app.group_send(recipient, text)

    async def mark_read(self, chat: str) -> int:
        return await self.app.mark_read(self.chat_id(chat))


def _read(path: Path) -> tuple[str, bytes, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or 'unreadable'}") from exc
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.name, data, kind
