"""The main screen: the conversation list on the left, the open chat on the right
(its messages and a multi-line compose box), the alarm banner on top."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static

from parley.client.records import Message
from parley.client.tui.widgets import AlarmBanner, ChatList, Compose, MessageList, shown
from parley.display import literal
from parley.errors import ParleyError

if TYPE_CHECKING:
    from parley.client.tui.app import ParleyApp

HISTORY = 200  # messages shown when a chat opens
# Opened straight from a chat, these could run code: save them and look first.
RISKY_SUFFIXES = frozenset(
    [
        ".app",
        ".appimage",
        ".bat",
        ".cmd",
        ".com",
        ".command",
        ".cpl",
        ".deb",
        ".desktop",
        ".dmg",
        ".exe",
        ".hta",
        ".jar",
        ".js",
        ".lnk",
        ".msi",
        ".pif",
        ".pkg",
        ".ps1",
        ".py",
        ".rpm",
        ".scr",
        ".sh",
        ".vbs",
        ".wsf",
    ]
)


class ChatScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("ctrl+g", "new_group", "New group"),
        Binding("f2", "safety", "Safety number"),
        Binding("f3", "group", "Group members"),
        Binding("f4", "devices", "Devices"),
        Binding("f5", "policy", "Policy"),
        Binding("f6", "attach", "Attach file"),
        Binding("ctrl+f", "search", "Search"),
    ]

    def __init__(self) -> None:
        super().__init__(id="chat-screen")
        self.current: str | None = None  # the open chat: a phone number or a group id
        self.current_group: str | None = None

    @property
    def parley(self) -> ParleyApp:
        from parley.client.tui.app import ParleyApp

        assert isinstance(self.app, ParleyApp)
        return self.app

    @property
    def chat_list(self) -> ChatList:
        return self.query_one(ChatList)

    @property
    def message_list(self) -> MessageList:
        return self.query_one(MessageList)

    @property
    def compose_box(self) -> Compose:
        return self.query_one(Compose)

    def compose(self) -> ComposeResult:
        yield AlarmBanner()
        with Horizontal(id="body"):
            with Vertical(id="sidebar"):
                yield Static(Text("Chats", style="bold"), id="sidebar-title")
                yield ChatList()
            with Vertical(id="conversation"):
                yield Static(Text("Choose a chat, or start one with Ctrl+N"), id="chat-title")
                yield MessageList()
                yield Compose()
                yield Static(
                    Text("Enter: send · Shift+Enter / Alt+Enter / Ctrl+J: new line", style="dim"),
                    id="compose-hint",
                )
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(AlarmBanner).show(self.parley.alarms)
        self.reload_chats()
        self.chat_list.focus()

    def on_screen_resume(self) -> None:
        self.query_one(AlarmBanner).show(self.parley.alarms)
        self._append_new()  # what happened on another screen (a member added, a trust)
        if self.current is not None:
            self.query_one("#chat-title", Static).update(
                self._title(self.current, self.parley.client.app.group_names())
            )
        self.reload_chats()

    # -- the conversation list -------------------------------------------------------------

    def reload_chats(self) -> None:
        try:
            chats = self.parley.client.chats()
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="error", markup=False)
            return
        self.chat_list.show(chats, self.parley.phone, self.current)

    @on(OptionList.OptionSelected, "#chats")
    def _chat_chosen(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.open_chat(event.option.id)

    def open_chat(self, chat: str, at: str | None = None) -> None:
        """Show a chat (a phone number or a group id) and mark it read; ``at``: a
        message to highlight (a search result), when it is among those shown."""
        client = self.parley.client
        try:
            chat = client.chat_id(chat)
            messages = client.messages(chat, limit=HISTORY)
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="error", markup=False)
            return
        self.current = chat
        groups = client.app.group_names()
        self.current_group = chat if chat in groups else None
        self.query_one("#chat-title", Static).update(self._title(chat, groups))
        self.message_list.show(messages, self.parley.phone)
        if at is None:
            self.compose_box.focus()
        elif self.message_list.select(at):
            self.message_list.focus()
        else:
            self.notify(
                f"That message is older than the {HISTORY} shown here; "
                "'parley history' on the command line shows all of them"
            )
        if any(m.unread for m in messages):
            self.mark_read(chat)
        self.reload_chats()

    def _title(self, chat: str, groups: dict[str, str]) -> Text:
        if chat in groups:
            return Text.assemble(
                literal(groups[chat], style="bold"), Text("  group · F3: members", style="dim")
            )
        if chat == self.parley.phone:
            return Text("Note to self", style="bold")
        contact = next((c for c in self.parley.client.contacts() if c.phone == chat), None)
        title = Text()
        if contact and contact.name:
            title.append_text(literal(contact.name, style="bold"))
            title.append(" ")
        title.append_text(literal(chat, style="bold" if not title else ""))
        if contact is None:
            state = "not verified"
        elif contact.changed:
            state = "⚠ safety number changed"
        else:
            state = "✓ verified" if contact.verified else "not verified"
        title.append(f"  {state} · F2: safety number", style="dim")
        return title

    @work(group="read")
    async def mark_read(self, chat: str) -> None:
        try:
            await self.parley.client.mark_read(chat)
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="warning", markup=False)
        self.reload_chats()

    # -- events from the client -------------------------------------------------------------

    def message_arrived(self, data: dict[str, Any]) -> None:
        chat = str(data.get("chat", ""))
        if chat and chat == self.current:
            self._append_new()
            if not data.get("outgoing") and self.app.screen is self:
                self.mark_read(chat)
        if data.get("group_name") and chat == self.current:
            self.query_one("#chat-title", Static).update(
                self._title(chat, self.parley.client.app.group_names())
            )
        self.reload_chats()

    def receipt(self, message_id: str, status: str) -> None:
        self.message_list.set_status(message_id, status)

    def _append_new(self) -> None:
        if self.current is None:
            return
        try:
            recent = self.parley.client.messages(self.current, limit=20)
        except ParleyError:
            return
        for m in recent:
            self.message_list.append(m)

    # -- sending -----------------------------------------------------------------------------

    @on(Compose.Send)
    def _send(self, event: Compose.Send) -> None:
        if self.current is None:
            self.notify("Choose a chat first (or Ctrl+N for a new one)", severity="warning")
            return
        self.send(self.current, event.text, [])

    @work(group="send")
    async def send(self, chat: str, text: str, files: list[Path]) -> None:
        try:
            await self.parley.client.send(chat, text, files)
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="error", markup=False, timeout=10)
            self.parley.refresh_alarms()
            return
        if not files:
            self.compose_box.clear()
        if chat == self.current:
            self._append_new()
        self.reload_chats()

    # -- attachments of the highlighted message ------------------------------------------------

    @on(MessageList.Chosen)
    def _chosen(self, event: MessageList.Chosen) -> None:
        from parley.client.tui.dialogs import ReportDialog, SaveDialog

        m = event.message
        if event.action == "report":
            if m.outgoing or m.event is not None:
                self.notify("Only messages you received can be reported", severity="warning")
                return
            self.app.push_screen(ReportDialog(m))
        elif not m.attachments:
            self.notify("This message has no attachment", severity="warning")
        elif event.action == "save":
            self.app.push_screen(SaveDialog(m, self.parley.downloads))
        else:
            self.open_attachments(m)

    @work(group="attachments")
    async def open_attachments(self, m: Message) -> None:
        risky = [a.name for a in m.attachments if Path(a.name).suffix.lower() in RISKY_SUFFIXES]
        if risky:
            self.notify(
                shown(f"{risky[0]} could run a program: save it (s) and look at it first"),
                severity="warning",
                markup=False,
            )
            return
        target = self.parley.opened_dir() / m.id
        try:
            paths = await self.parley.client.app.save_attachments(m.id, target, lambda _n, _s: None)
            for path in paths:
                path.chmod(0o600)
                self.parley.opener(path)
        except (ParleyError, OSError) as exc:
            message = exc.message if isinstance(exc, ParleyError) else str(exc)
            self.notify(shown(message), severity="error", markup=False)

    # -- other screens -----------------------------------------------------------------------

    def action_new_chat(self) -> None:
        from parley.client.tui.dialogs import NewChatDialog

        def chosen(phone: str | None) -> None:
            if phone:
                self.open_chat(phone)

        self.app.push_screen(NewChatDialog(), chosen)

    def action_new_group(self) -> None:
        from parley.client.tui.dialogs import NewGroupDialog

        def created(gid: str | None) -> None:
            self.reload_chats()
            if gid:
                self.open_chat(gid)

        self.app.push_screen(NewGroupDialog(), created)

    def action_safety(self) -> None:
        from parley.client.tui.safety import SafetyScreen

        if self.current is None or self.current_group is not None:
            self.notify("Open a chat with one person to see its safety number", severity="warning")
            return
        if self.current == self.parley.phone:
            self.notify("This is your own chat: there is nobody to compare with")
            return
        self.app.push_screen(SafetyScreen(self.current))

    def action_group(self) -> None:
        from parley.client.tui.groups import GroupScreen

        if self.current_group is None:
            self.notify("Open a group chat to see its members", severity="warning")
            return
        self.app.push_screen(GroupScreen(self.current_group))

    def action_devices(self) -> None:
        from parley.client.tui.devices import DevicesScreen

        self.app.push_screen(DevicesScreen())

    def action_policy(self) -> None:
        from parley.client.tui.policy import PolicyScreen

        self.app.push_screen(PolicyScreen())

    def action_search(self) -> None:
        from parley.client.tui.dialogs import SearchDialog

        def chosen(m: Message | None) -> None:
            if m is not None:
                self.open_chat(m.chat, at=m.id)

        self.app.push_screen(SearchDialog(), chosen)

    def action_attach(self) -> None:
        from parley.client.tui.dialogs import AttachDialog

        if self.current is None or self.current_group is not None:
            self.notify("Attachments go to chats with one person", severity="warning")
            return
        chat = self.current

        def chosen(path: str | None) -> None:
            if path:
                self.send(chat, self.compose_box.text, [Path(path).expanduser()])
                self.compose_box.clear()

        self.app.push_screen(AttachDialog(), chosen)
