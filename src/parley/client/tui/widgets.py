"""Widgets of the terminal app. They show records and post typed messages; the
screens own the behaviour (STYLE.md: widgets talk through message dataclasses).

Every string another person chose (names, texts, file names, group names) reaches
the screen through ``parley.display.literal``: a rich ``Text`` (never markup), with
characters that steer a terminal shown as escapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message as TextualMessage
from textual.widgets import OptionList, Static, TextArea
from textual.widgets.option_list import Option

from parley.client.records import ChatSummary, Message
from parley.display import literal, visible

# Delivery state of an outgoing message, as Signal shows it.
STATUS_MARKS = {"sent": "✓ sent", "delivered": "✓✓ delivered", "read": "✓✓ read"}
STATUS_STYLES = {"sent": "dim", "delivered": "green", "read": "bold blue"}


def local_moment(ms: int, now: datetime | None = None) -> str:
    """A time for people, in the local time zone: the time alone today, else the date too."""
    try:
        moment = datetime.fromtimestamp(ms / 1000).astimezone()
    except (OverflowError, OSError, ValueError):
        return "(time out of range)"
    today = (now or datetime.now().astimezone()).date()
    return moment.strftime("%H:%M" if moment.date() == today else "%Y-%m-%d %H:%M")


def size_text(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def who(m: Message, me: str) -> Text:
    """The sender: "You", "Name (+phone)" when they gave a name, else the number."""
    if m.outgoing or (m.sender == me and m.event is None):
        return Text("You", style="bold")
    if m.sender_name:
        return Text.assemble(literal(m.sender_name, style="bold"), " (", literal(m.sender), ")")
    return literal(m.sender, style="bold")


def message_text(m: Message, me: str) -> Text:
    """One message as shown in the chat: who, when, delivery state, text, attachments."""
    when = local_moment(m.sent_at)
    if m.event is not None:  # a change to the group: one line, set apart
        what = m.description or ("removed you from the group" if m.event == "removed" else m.event)
        line = Text.assemble("— ", who(m, me), " ", literal(what), f"  {when}")
        line.stylize("italic dim")
        return line
    out = Text.assemble(who(m, me), Text(f"  {when}", style="dim"))
    if m.outgoing and m.status:
        out.append(f"  {STATUS_MARKS.get(m.status, m.status)}", style=STATUS_STYLES.get(m.status))
    out.append("\n")
    if m.text:
        out.append_text(literal(m.text, multiline=True))
    for a in m.attachments:
        out.append("\n")
        out.append_text(
            Text.assemble("📎 ", literal(a.name), f" ({size_text(a.size)})", style="cyan")
        )
    return out


def chat_text(c: ChatSummary, me: str) -> Text:
    """One row of the conversation list: title, unread count, last message and its time."""
    title = literal(c.title or c.chat, style="bold")
    if c.unread:
        title.append("  ")
        title.append(f" {c.unread} unread ", style="bold white on blue")
    last = Text(style="dim")
    if c.sender and c.last and not c.last.startswith(c.sender):  # a group change names its actor
        if c.sender == me:
            last.append("You: ")
        elif c.group is not None:
            last.append_text(literal(c.sender_name or c.sender))
            last.append(": ")
    last.append_text(literal(c.last))
    if c.sent_at:
        last.append(f"  · {local_moment(c.sent_at)}")
    return Text.assemble(title, "\n", last)


class AlarmBanner(Static):
    """The alarms a person must not miss, at the top of every screen until acknowledged
    (F8) or resolved: identity changes, key-directory alarms, a new privacy policy, a
    forked group history. The app keeps the alarms; each screen's banner shows them,
    every line literally."""

    def __init__(self) -> None:
        super().__init__("", classes="alarms", markup=False)

    def show(self, alarms: dict[str, str]) -> None:
        out = Text()
        for text in alarms.values():
            out.append("⚠ ALARM  ", style="bold")
            out.append_text(literal(text))
            out.append("\n")
        if alarms:
            out.append("F8: acknowledge", style="italic")
        self.update(out)
        self.set_class(bool(alarms), "raised")


class ChatList(OptionList):
    """The conversation list, most recent first."""

    def __init__(self) -> None:
        super().__init__(id="chats", markup=False)
        self.chats: list[ChatSummary] = []

    def show(self, chats: list[ChatSummary], me: str, current: str | None) -> None:
        self.chats = chats
        keep = self.highlighted
        self.set_options(Option(chat_text(c, me), id=c.chat) for c in chats)
        for i, c in enumerate(chats):
            if c.chat == current:
                keep = i
        if chats:
            self.highlighted = min(keep or 0, len(chats) - 1)


class MessageList(OptionList):
    """A chat's messages, oldest first; the highlighted one is the one acted on."""

    BINDINGS = [  # noqa: RUF012 - textual's declaration
        Binding("r", "report", "Report"),
        Binding("s", "save", "Save attachments"),
        Binding("o", "open", "Open attachment"),
    ]

    @dataclass
    class Chosen(TextualMessage):
        """The person asked for ``action`` (report, save, open) on ``message``."""

        action: str
        message: Message

    def __init__(self) -> None:
        super().__init__(id="messages", markup=False)
        self.messages: dict[str, Message] = {}
        self.me = ""

    def show(self, messages: list[Message], me: str) -> None:
        self.me = me
        self.messages = {m.id: m for m in messages}
        self.set_options(Option(message_text(m, me), id=m.id) for m in messages)
        self.action_last()

    def append(self, m: Message) -> None:
        if m.id in self.messages:
            return
        self.messages[m.id] = m
        self.add_option(Option(message_text(m, self.me), id=m.id))
        self.action_last()

    def set_status(self, message_id: str, status: str) -> None:
        m = self.messages.get(message_id)
        codes = {"sent": 1, "delivered": 2, "read": 3}
        if m is None or codes.get(status, 0) <= m.status_code:
            return
        m.status_code = codes[status]
        self.replace_option_prompt(message_id, message_text(m, self.me))

    def select(self, message_id: str) -> bool:
        """Highlight one message, if it is shown."""
        if message_id not in self.messages:
            return False
        self.highlighted = self.get_option_index(message_id)
        return True

    @property
    def current(self) -> Message | None:
        option = self.highlighted_option
        return None if option is None or option.id is None else self.messages.get(option.id)

    def _choose(self, action: str) -> None:
        if (m := self.current) is not None:
            self.post_message(self.Chosen(action, m))

    def action_report(self) -> None:
        self._choose("report")

    def action_save(self) -> None:
        self._choose("save")

    def action_open(self) -> None:
        self._choose("open")


class Compose(TextArea):
    """Multi-line compose. Enter sends (as in Signal Desktop); Shift+Enter, Alt+Enter
    or Ctrl+J start a new line (a terminal without Shift+Enter reports still has the
    other two); pasted text keeps its lines."""

    NEWLINE_KEYS = frozenset({"shift+enter", "alt+enter", "ctrl+j"})

    @dataclass
    class Send(TextualMessage):
        text: str

    def __init__(self) -> None:
        super().__init__(id="compose", soft_wrap=True, show_line_numbers=False)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(self.Send(self.text))
            return
        if event.key in self.NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)


def shown(text: object) -> str:
    """A one-line string for a toast or a title: controls as escapes (no markup is parsed
    where it is used: ``notify(markup=False)``)."""
    return visible(text)
