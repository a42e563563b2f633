"""Small dialogs over the chat: a new chat, a new group, a file to attach, saving
attachments, reporting a message, searching the history. Escape closes any of them
without acting."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from parley.client.records import Message
from parley.client.tui.widgets import local_moment, shown, size_text, who
from parley.display import literal
from parley.errors import ParleyError

if TYPE_CHECKING:
    from parley.client.tui.app import ParleyApp

# The server's report categories (cli/main.py REASONS), most common first, in words.
REASONS = [
    ("spam", "Spam"),
    ("fraud", "Fraud or scam"),
    ("violence", "Violence or threats"),
    ("terrorism", "Terrorism"),
    ("csam", "Child sexual abuse material"),
    ("other", "Something else"),
]
MAX_CONTEXT = 5
SEARCH_LIMIT = 100
SEARCH_LINES = 3  # of a found message's text, in the result list
T = TypeVar("T")


class Dialog(ModalScreen[T]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    @property
    def parley(self) -> ParleyApp:
        from parley.client.tui.app import ParleyApp

        assert isinstance(self.app, ParleyApp)
        return self.app

    def action_cancel(self) -> None:
        self.dismiss(None)

    def error(self, exc: BaseException) -> None:
        message = exc.message if isinstance(exc, ParleyError) else str(exc)
        self.notify(shown(message), severity="error", markup=False, timeout=10)


class NewChatDialog(Dialog[str | None]):
    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("New chat")
            yield Input(placeholder="+14155550123", id="phone")
            yield Static(Text("Enter: open the chat · Escape: cancel", style="dim"))

    @on(Input.Submitted, "#phone")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())


class NewGroupDialog(Dialog[str | None]):
    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("New group")
            yield Input(placeholder="the group's name", id="name")
            yield Input(placeholder="members: +1415…, +1415…", id="members")
            with Horizontal(classes="buttons"):
                yield Button("Create", id="create", variant="primary")
            yield Static(Text("Enter in the members field: create · Escape: cancel", style="dim"))

    @on(Input.Submitted, "#name")
    def _next(self) -> None:
        self.query_one("#members", Input).focus()

    @on(Input.Submitted, "#members")
    @on(Button.Pressed, "#create")
    def _create(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        members = [
            p.strip() for p in self.query_one("#members", Input).value.split(",") if p.strip()
        ]
        if not name or not members:
            self.notify("A group needs a name and at least one member", severity="warning")
            return
        self.create(name, members)

    @work(group="group", exclusive=True)
    async def create(self, name: str, members: list[str]) -> None:
        self.query_one("#create", Button).disabled = True
        try:
            gid = await self.parley.client.app.group_create(name, members)
        except ParleyError as exc:
            self.error(exc)
            self.query_one("#create", Button).disabled = False
            return
        self.dismiss(gid)


class AttachDialog(Dialog[str | None]):
    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Attach a file (the text in the compose box goes with it)")
            yield Input(placeholder="path to the file", id="path")
            yield Static(Text("Enter: send · Escape: cancel", style="dim"))

    @on(Input.Submitted, "#path")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())


class SaveDialog(Dialog[None]):
    """Save a message's attachments into a directory (never over an existing file)."""

    def __init__(self, message: Message, directory: Path) -> None:
        super().__init__()
        self.message = message
        self.directory = directory

    def compose(self) -> ComposeResult:
        names = Text("Save ")
        for i, a in enumerate(self.message.attachments):
            names.append_text(Text(", ") if i else Text())
            names.append_text(literal(a.name))
            names.append(f" ({size_text(a.size)})")
        with Vertical(classes="dialog"):
            yield Static(names, id="save-what")
            yield Input(str(self.directory), id="directory")
            yield Static(Text("Enter: save into this folder · Escape: cancel", style="dim"))

    @on(Input.Submitted, "#directory")
    def _submitted(self, event: Input.Submitted) -> None:
        self.save(Path(event.value.strip() or ".").expanduser())

    @work(group="save", exclusive=True)
    async def save(self, directory: Path) -> None:
        try:
            paths = await self.parley.client.app.save_attachments(
                self.message.id, directory, lambda _n, _s: None
            )
        except (ParleyError, OSError) as exc:
            self.error(exc)
            return
        self.notify(shown("saved " + ", ".join(str(p) for p in paths)), markup=False)
        self.dismiss(None)


class ReportDialog(Dialog[None]):
    """Report a received message to the platform's moderators: a reason, how many
    earlier messages of the chat to reveal with it, and a comment."""

    def __init__(self, message: Message) -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        m = self.message
        shown_message = Text.assemble(
            "Report this message from ",
            literal(m.sender_name or m.sender, style="bold"),
            f" ({local_moment(m.sent_at)}):\n",
            literal(m.text, multiline=True),
        )
        with Vertical(classes="dialog", id="report"):
            yield Label("Report to the moderators")
            yield Static(shown_message, id="reported")
            yield Label("Reason")
            yield OptionList(*(Option(label, id=key) for key, label in REASONS), id="reason")
            yield Label(f"Earlier messages of this chat to include (0-{MAX_CONTEXT})")
            yield Input("0", id="context", type="integer")
            yield Label("Comment for the moderators (optional)")
            yield Input(id="comment", max_length=1000)
            with Horizontal(classes="buttons"):
                yield Button("Report", id="send-report", variant="error")
            yield Static(
                Text(
                    "The moderators see this message (and the earlier ones you include) and "
                    "proof that it was sent. Enter in the comment: report · Escape: cancel",
                    style="dim",
                )
            )

    def on_mount(self) -> None:
        self.query_one("#reason", OptionList).highlighted = 0
        self.query_one("#reason", OptionList).focus()

    @on(OptionList.OptionSelected, "#reason")
    def _reason_chosen(self) -> None:
        self.query_one("#context", Input).focus()

    @on(Input.Submitted, "#context")
    def _context_given(self) -> None:
        self.query_one("#comment", Input).focus()

    @on(Input.Submitted, "#comment")
    @on(Button.Pressed, "#send-report")
    def _submit(self) -> None:
        reason = self.query_one("#reason", OptionList).highlighted_option
        try:
            context = int(self.query_one("#context", Input).value or "0")
        except ValueError:
            context = -1
        if not 0 <= context <= MAX_CONTEXT:
            self.notify(f"Include 0 to {MAX_CONTEXT} earlier messages", severity="warning")
            return
        if reason is None or reason.id is None:
            self.notify("Choose a reason", severity="warning")
            return
        self.report(reason.id, context, self.query_one("#comment", Input).value)

    @work(group="report", exclusive=True)
    async def report(self, reason: str, context: int, comment: str) -> None:
        self.query_one("#send-report", Button).disabled = True
        try:
            result = await self.parley.client.app.report(self.message.id, reason, context, comment)
        except ParleyError as exc:
            self.error(exc)
            self.query_one("#send-report", Button).disabled = False
            return
        already = "You had already reported this message" if result.get("existing") else "Reported"
        self.notify(shown(f"{already} (report {result.get('id')})"), markup=False)
        self.dismiss(None)


def found_text(m: Message, title: str, me: str) -> Text:
    """One search result: the chat, who and when, then the message's first lines."""
    head = Text.assemble(literal(title, style="bold"), " · ", who(m, me))
    head.append(f"  {local_moment(m.sent_at)}", style="dim")
    body = literal("\n".join(m.text.splitlines()[:SEARCH_LINES]), multiline=True)
    return Text.assemble(head, "\n", body)


class SearchDialog(Dialog[Message | None]):
    """Search every chat's history (the profile's blind word index: words of two
    letters or more, all of them in a message), newest first; Enter on a result
    opens its chat there."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, Message] = {}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="search"):
            yield Label("Search messages")
            yield Input(placeholder="words in the message", id="query")
            yield OptionList(id="results", markup=False)
            yield Static(
                Text("Enter: search, then Enter on a result: open it · Escape: close", style="dim"),
                id="search-hint",
            )

    @on(Input.Submitted, "#query")
    def _search(self, event: Input.Submitted) -> None:
        results = self.query_one("#results", OptionList)
        query = event.value.strip()
        if not query:
            return
        try:
            client = self.parley.client
            found = client.search(query, limit=SEARCH_LIMIT)
            titles = {c.chat: c.title for c in client.chats()}
        except ParleyError as exc:
            self.error(exc)
            return
        self.found = {m.id: m for m in found}
        results.set_options(
            Option(found_text(m, titles.get(m.chat) or m.chat, self.parley.phone), id=m.id)
            for m in found
        )
        self.query_one("#search-hint", Static).update(
            Text(
                f"{len(found)} message{'s' if len(found) != 1 else ''} found"
                + (f" (the newest {SEARCH_LIMIT})" if len(found) == SEARCH_LIMIT else "")
                + " · Enter: open · Escape: close",
                style="dim",
            )
        )
        if found:
            results.highlighted = 0
            results.focus()

    @on(OptionList.OptionSelected, "#results")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.dismiss(self.found.get(event.option.id))
