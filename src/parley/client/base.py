"""The base of the client's operations: the open profile (``Session``) and its
plumbing, the typed errors and the checks every operation shares.

The client is one class, ``App`` (client/app.py), built in layers, one module
per concern, each adding to the one before: base (this), contacts, sending,
monitoring (key transparency), group_flow, receiving, and app (registration,
reports, policy, devices, local data).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.client.api import ApiClient
from parley.client.device import DeviceState
from parley.client.state import ProfileState
from parley.client.store import Profile
from parley.display import visible
from parley.errors import (
    ParleyError,
)
from parley.protocol.wire import MAX_TEXT

LINK_CODE_BYTES = 20
MAX_REPORT_CONTEXT = 5
MAX_REPORT_COMMENT = 1000
MAX_NAME = 64
# What a sender may call its message: the id is how the receiver names it in
# reports and `attachment save`, so it must be plain and unique in the profile.
MESSAGE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# Idempotent calls are retried for about 7 s when the server cannot be reached.
RETRIES = 5
PRIMARY_DEVICE = 1
FOREIGN_IDENTITY = "the key directory published an identity key for your account that is not yours"
KT_GRACE_S = 10.0  # a brand-new account waits for its first epoch (longer under load)
REFILL = 50  # one-time prekeys of each kind uploaded when the server says they run low
BATCH = 200  # received frames committed (and acknowledged) together
GATHER_S = 0.005  # a batch takes the frames that arrive within this of each other
# A key-directory proof (and the server's phone lookup it checked) is reused for
# this long within one process: a burst of sends or of first messages from one
# sender costs one proof, not one each. An answer that would refuse is never
# taken from the cache: it is asked for again first.
PROOF_TTL = 30.0
# The self-check of the key directory and prekeys before every network command
# runs at most this often (``parley keys check`` always runs it).
RECHECK_MS = 60_000


class ClientError(ParleyError):
    code = "client_error"


class IdentityChanged(ClientError):
    code = "identity_changed"


def normalize_phone(raw: str, known: Collection[str] = ()) -> str:
    """``raw`` as E.164, or a ``ClientError`` that says what a number looks like.

    A number written exactly as one in ``known`` (the profile's own and its contacts',
    ``Core.known_phones``) in E.164 form is taken as it is: libphonenumber would give
    it back unchanged, and loading it costs a command about 30 ms. Only the spelling is
    spared: who the number belongs to is proven by the key directory as always."""
    if raw in known and E164.fullmatch(raw):
        return raw
    from parley.phone import InvalidPhone, e164

    try:
        return e164(raw)
    except InvalidPhone as exc:
        raise ClientError(f"{raw!r} is {exc}") from exc


def check_name(name: str) -> None:
    if not name.strip() or len(name) > MAX_NAME:
        raise ClientError(f"a name is 1 to {MAX_NAME} characters")


def check_text(text: str) -> None:
    """The client's side of the shared bound (``wire.MAX_TEXT``), in words."""
    if len(text.encode()) > MAX_TEXT:
        raise ClientError(f"message too long (the limit is {MAX_TEXT // 1024} KiB)")


def safe_filename(name: str, directory: Path) -> Path:
    """A new file in ``directory`` for a name a sender chose: no path, no control
    characters, never an existing file (``name (1).ext`` instead)."""
    base = "".join("_" if visible(ch) != ch else ch for ch in Path(name.replace("\\", "/")).name)
    base = base.strip() or "attachment"
    if base in (".", ".."):
        base = "attachment"
    stem, suffix = Path(base).stem or base, Path(base).suffix
    candidate, n = directory / base, 0
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = directory / f"{stem} ({n}){suffix}"
    return candidate


def write_new_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to a file that must not exist yet (never follows a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Session:
    """A loaded profile: app state plus the device's cryptographic state."""

    state: ProfileState
    device: DeviceState
    api: ApiClient

    @property
    def phone(self) -> str:
        return self.state.phone


class Core:
    """``notify`` receives one-line notes for the user while a command works (the
    server is being retried; a message was refused), so the CLI can print them."""

    def __init__(self, profile: Profile, notify: Callable[[str], None] | None = None) -> None:
        self.profile = profile
        self.notify = notify or (lambda _line: None)
        # Told of every refused message (sender, reason): `receive --json` prints it.
        self.on_refusal: Callable[[str, str], None] = lambda _who, _why: None
        # Told of every key-transparency alarm raised while a command works (a fork
        # found through a message's head): `receive --json` prints it as an event.
        self.on_alarm: Callable[[str], None] = lambda _alarm: None
        # Group changes applied while a message was handled, shown before it (receive).
        self._group_lines: list[dict[str, Any]] = []
        self._session: Session | None = None  # the open profile, reused while unchanged
        self._closing: list[ApiClient] = []
        self._busy = asyncio.Lock()  # one operation at a time in this process (daemon)
        # Told when a receipt moved one of our messages forward: (message id, status).
        self.on_receipt: Callable[[str, str], None] = lambda _id, _status: None
        self._owed: dict[str, list[str]] = {}  # account -> ids received this batch
        # Proofs and lookups reused for PROOF_TTL seconds (client/contacts.py).
        self._proofs: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lookups: dict[str, tuple[float, dict[str, Any]]] = {}
        self._served_keys: dict[str, tuple[tuple[str, tuple[int, ...]], float]] = {}

    # -- profile plumbing ------------------------------------------------------------------------

    def _open(self, retries: int = RETRIES) -> Session:
        """The profile's session (call under the lock): the one already open when no
        other process wrote the profile since, else loaded afresh. Ratchet state is
        never used from a stale copy."""
        s = self._session
        if s is not None and self.profile.unchanged():
            s.api.retries = retries
            return s
        state = ProfileState.from_records(self.profile.load())
        if state.device is None:
            raise ClientError("registration is not finished: run 'parley verify CODE'")
        device = DeviceState.from_dict(state.device, secrets.token_bytes)
        api = ApiClient(state.server, state.credential, retries=retries, on_retry=self.notify)
        api.kt_view = state.kt
        if s is not None:
            self._closing.append(s.api)
        self._session = Session(state, device, api)
        return self._session

    @staticmethod
    def known_phones(s: Session) -> set[str]:
        """The numbers this profile holds: its own and its contacts'."""
        return {s.phone, *s.state.phones}

    def _save(self, s: Session) -> None:
        """Commit the records and messages this operation changed, in one transaction."""
        s.state.device = s.device.to_dict()
        self.profile.save(s.state.records())

    async def run(self, action: Callable[[Session], Awaitable[Any]], retries: int = RETRIES) -> Any:
        async with self._exclusive():
            s = self._open(retries)
            try:
                return await action(s)
            finally:
                self._save(s)
                await self._close_stale()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """This process's turn (the daemon serves requests while it receives), then the
        profile's lock against other processes."""
        async with self._busy:
            with self.profile.locked():
                yield

    async def _close_stale(self) -> None:
        while self._closing:
            await self._closing.pop().close()

    async def close(self) -> None:
        """Close the network client and the profile database."""
        if self._session is not None:
            self._closing.append(self._session.api)
            self._session = None
        await self._close_stale()
        self.profile.close()

    def find_message(self, message_id: str) -> dict[str, Any]:
        """A message of the profile, key material included (for attachments, reports)."""
        self.local_state()
        found = self.profile.find_message(message_id)
        if found is None:
            raise ClientError(f"no message {message_id} in this profile")
        return found.to_entry()

    def local_state(self) -> ProfileState:
        """The profile's state, read without touching the network."""
        with self.profile.locked():
            if self._session is not None and self.profile.unchanged():
                return self._session.state
            state = ProfileState.from_records(self.profile.load())
        if not state.registered:
            raise ClientError("registration is not finished: run 'parley verify CODE'")
        return state
