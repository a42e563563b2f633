"""A group's members: who they are, who is an admin, and whether you verified each
one's safety number; adding and removing members (admins only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from parley.client.state import ContactRecord
from parley.client.tui.widgets import AlarmBanner, shown
from parley.display import literal
from parley.errors import ParleyError

if TYPE_CHECKING:
    from parley.client.tui.app import ParleyApp


def member_text(
    phone: str, me: str, admins: list[str], contact: ContactRecord | None, unconfirmed: bool
) -> Text:
    """One member: name and number, role, and verification state."""
    line = Text()
    if phone == me:
        line.append("You ", style="bold")
    elif contact and contact.name:
        line.append_text(literal(contact.name, style="bold"))
        line.append(" ")
    line.append_text(literal(phone))
    if phone in admins:
        line.append("  admin", style="cyan")
    if unconfirmed:
        line.append("  ⚠ routed by the server, added by no admin", style="bold red")
    elif phone == me:
        pass
    elif contact is not None and contact.changed:
        line.append("  ⚠ safety number changed", style="bold red")
    elif contact is not None and contact.verified:
        line.append("  ✓ verified", style="green")
    else:
        line.append("  not verified", style="yellow")
    return line


class GroupScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("delete", "remove", "Remove member"),
    ]

    def __init__(self, gid: str) -> None:
        super().__init__(id="group-screen")
        self.gid = gid
        self.group: dict[str, Any] | None = None

    @property
    def parley(self) -> ParleyApp:
        from parley.client.tui.app import ParleyApp

        assert isinstance(self.app, ParleyApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield AlarmBanner()
        with Vertical(id="group"):
            yield Static("Loading the group's signed state…", id="group-title", markup=False)
            yield OptionList(id="members", markup=False)
            with Horizontal(id="member-add"):
                yield Input(placeholder="+1415… to add", id="add-phone")
                yield Button("Add", id="add", variant="primary")
                yield Button("Remove selected", id="remove", variant="error")
            yield Static(
                Text(
                    "Enter on a member: their safety number · Delete: remove the highlighted "
                    "member · Escape: back",
                    style="dim",
                )
            )
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(AlarmBanner).show(self.parley.alarms)
        self.load()

    def on_screen_resume(self) -> None:
        self.query_one(AlarmBanner).show(self.parley.alarms)
        self.load()

    @work(group="group", exclusive=True)
    async def load(self) -> None:
        try:
            groups = await self.parley.client.app.group_list()
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="error", markup=False)
            return
        self.group = next((g for g in groups if g["id"] == self.gid), None)
        title = self.query_one("#group-title", Static)
        members = self.query_one("#members", OptionList)
        if self.group is None:
            title.update(Text("You are not a member of this group any more", style="bold"))
            members.clear_options()
            return
        g = self.group
        count = len(g["members"])
        title.update(
            Text.assemble(
                literal(g["name"], style="bold"),
                Text(
                    f"  {count} member{'s' if count != 1 else ''} · version {g['version']}",
                    style="dim",
                ),
            )
        )
        contacts = {c.phone: c for c in self.parley.client.contacts()}
        me = self.parley.phone
        unconfirmed = [str(u) for u in g.get("unconfirmed", [])]
        options = [
            Option(member_text(p, me, g["admins"], contacts.get(p), False), id=p)
            for p in g["members"]
        ] + [Option(member_text(u, me, [], None, True), id=f"unconfirmed:{u}") for u in unconfirmed]
        keep = members.highlighted
        members.set_options(options)
        if options:
            members.highlighted = min(keep or 0, len(options) - 1)

    @on(OptionList.OptionSelected, "#members")
    def _member_chosen(self, event: OptionList.OptionSelected) -> None:
        from parley.client.tui.safety import SafetyScreen

        phone = event.option.id
        if phone and phone.startswith("+") and phone != self.parley.phone:
            self.app.push_screen(SafetyScreen(phone))

    @on(Input.Submitted, "#add-phone")
    @on(Button.Pressed, "#add")
    def _add(self) -> None:
        phone = self.query_one("#add-phone", Input).value.strip()
        if phone:
            self.change(phone, add=True)

    @on(Button.Pressed, "#remove")
    def action_remove(self) -> None:
        option = self.query_one("#members", OptionList).highlighted_option
        if option is None or option.id is None or not option.id.startswith("+"):
            return
        if option.id == self.parley.phone:
            self.notify("To leave the group, ask an admin to remove you", severity="warning")
            return
        self.change(option.id, add=False)

    @work(group="group-change", exclusive=True)
    async def change(self, phone: str, add: bool) -> None:
        try:
            await self.parley.client.app.group_change(self.gid, phone, add)
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="error", markup=False, timeout=10)
            return
        self.notify(shown(f"{'added' if add else 'removed'} {phone}"), markup=False)
        if add:
            self.query_one("#add-phone", Input).value = ""
        self.load()
