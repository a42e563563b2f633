"""``ParleyApp``: the terminal app, a thin shell around one ``Client``.

Theory of operation. The app opens the client's profile, starts its push socket
(``Client.listen``) and reads its event stream in a worker for as long as it
runs. Each event is handed to the chat screen (messages, receipts) or becomes an
alarm or a toast. Every network operation (send, group changes, safety numbers,
reports, the policy, devices) runs in a worker, so the interface never waits on
the network; the client's ``App`` serialises them with the listener.

The app keeps the alarms (``alarms``: key -> text); every screen shows them in a
banner at its top until they are acknowledged (F8) or resolved (the contact's new
safety number trusted, the policy accepted). An acknowledged alarm stays hidden
until it changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType

from parley.client.core import Client, Event
from parley.client.tui.widgets import AlarmBanner, shown
from parley.errors import ParleyError

POLICY_ALARM = "policy"
LISTENER_ALARM = "listener"


def system_open(path: Path) -> None:
    """Open a file with the desktop's default application (no shell; one argument)."""
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    program = shutil.which(opener)
    if program is None:
        raise ParleyError(f"no {opener} here to open {path}; it was saved there")
    subprocess.Popen(  # noqa: S603 - a fixed program and one path argument, no shell
        [program, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class ParleyApp(App[None]):
    """The terminal app. ``downloads`` is where "save" offers to put attachments;
    ``opener`` opens a saved attachment (the desktop's default application)."""

    CSS_PATH = "parley.tcss"
    TITLE = "Parley"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f8", "acknowledge", "Acknowledge alarms", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        client: Client,
        downloads: Path | None = None,
        opener: Callable[[Path], None] = system_open,
    ) -> None:
        super().__init__()
        self.client = client
        self.downloads = downloads or Path.home() / "Downloads"
        self.opener = opener
        self.me: dict[str, Any] = {}
        self.alarms: dict[str, str] = {}
        self.acknowledged: dict[str, str] = {}  # key -> the text that was acknowledged
        self._opened_dir: Path | None = None

    # -- life --------------------------------------------------------------------------------

    async def on_mount(self) -> None:
        from parley.client.tui.chat import ChatScreen

        self.me = await self.client.open()
        await self.push_screen(ChatScreen())
        listener = self.client.listen()
        listener.add_done_callback(self._listener_ended)
        self.consume_events()
        self.start_up_checks()

    async def on_unmount(self) -> None:
        await self.client.close()
        if self._opened_dir is not None:
            shutil.rmtree(self._opened_dir, ignore_errors=True)

    def _listener_ended(self, task: Any) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        why = exc.message if isinstance(exc, ParleyError) else "it stopped"
        self.raise_alarm(LISTENER_ALARM, f"not receiving messages: {why}")

    @property
    def phone(self) -> str:
        return str(self.me.get("phone", ""))

    @work(group="events")
    async def consume_events(self) -> None:
        async for event in self.client.events():
            self.handle_event(event)

    def handle_event(self, event: Event) -> None:
        from parley.client.tui.chat import ChatScreen

        chat = next((s for s in self.screen_stack if isinstance(s, ChatScreen)), None)
        match event.kind:
            case "message":
                if chat is not None:
                    chat.message_arrived(event.data)
                self.refresh_alarms()
            case "receipt":
                if chat is not None:
                    chat.receipt(str(event.data.get("id", "")), str(event.data.get("status", "")))
            case "refusal":
                self.notify(
                    shown(
                        f"a message from {event.data.get('sender')} was refused: "
                        f"{event.data.get('reason')}"
                    ),
                    severity="warning",
                    markup=False,
                )
                self.refresh_alarms()
            case "alarm":
                text = str(event.data.get("text", "")).removeprefix("ALARM: ")
                self.raise_alarm(f"event:{text}", text)
            case _:
                self.notify(shown(event.data.get("text", "")), markup=False)

    @work(group="checks")
    async def start_up_checks(self) -> None:
        """What every CLI command does first (a key-directory self-check, prekeys kept
        up), then the alarms and whether the privacy policy changed."""
        with contextlib.suppress(ParleyError):
            await self.client.app.keys_check(retries=0)
            await self.client.app.maintain_keys(retries=0)
        await self._refresh_alarms()
        try:
            policy = await self.client.app.policy(accept=False)
        except ParleyError:
            return  # no policy published, or the server is away: nothing to say
        if policy.get("changed"):
            self.raise_alarm(
                POLICY_ALARM,
                f"the privacy policy is now version {policy.get('version')}: "
                "read it and what changed (F5)",
            )

    # -- alarms ------------------------------------------------------------------------------

    def raise_alarm(self, key: str, text: str) -> None:
        if self.acknowledged.get(key) == text or self.alarms.get(key) == text:
            return
        self.alarms[key] = text
        self._show_alarms()

    def resolve_alarm(self, key: str) -> None:
        self.acknowledged.pop(key, None)
        if self.alarms.pop(key, None) is not None:
            self._show_alarms()

    def action_acknowledge(self) -> None:
        self.acknowledged.update(self.alarms)
        self.alarms.clear()
        self._show_alarms()

    def _show_alarms(self) -> None:
        for screen in self.screen_stack:
            for banner in screen.query(AlarmBanner):
                banner.show(self.alarms)

    @work(group="alarms", exclusive=True)
    async def refresh_alarms(self) -> None:
        await self._refresh_alarms()

    async def _refresh_alarms(self) -> None:
        """Identity changes from the contacts (resolved once trusted), key-directory
        alarms from the profile."""
        try:
            lines = await self.client.current_alarms()
        except ParleyError:
            return
        for line in lines:
            if line.startswith("ALARM: "):
                text = line.removeprefix("ALARM: ")
                self.raise_alarm(f"kt:{text}", text)
        changed = set()
        for c in self.client.contacts():
            if not c.changed:
                continue
            key = f"identity:{c.phone or c.account_id}"
            changed.add(key)
            name = f"{c.name} ({c.phone})" if c.name else c.phone or c.account_id
            blocked = " Sending to them is blocked until you do." if c.verified else ""
            self.raise_alarm(
                key,
                f"the safety number with {name} has changed: compare it before you trust "
                f"it (F2 in the chat).{blocked}",
            )
        for key in [k for k in self.alarms if k.startswith("identity:") and k not in changed]:
            self.resolve_alarm(key)

    # -- attachments -------------------------------------------------------------------------

    def opened_dir(self) -> Path:
        """A private directory for attachments opened (not saved); removed on exit."""
        if self._opened_dir is None:
            self._opened_dir = Path(tempfile.mkdtemp(prefix="parley-open-"))
            os.chmod(self._opened_dir, 0o700)
        return self._opened_dir
