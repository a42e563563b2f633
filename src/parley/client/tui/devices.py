"""Your devices: the list, linking a new one (a one-time code, also as a QR code),
and unlinking."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, OptionList, Static
from textual.widgets.option_list import Option

from parley.client.tui.qr import qr_text
from parley.client.tui.widgets import AlarmBanner, shown
from parley.display import literal
from parley.errors import ParleyError

if TYPE_CHECKING:
    from parley.client.tui.app import ParleyApp


class DevicesScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("l", "link", "Link a new device"),
        Binding("u", "unlink", "Unlink"),
    ]

    def __init__(self) -> None:
        super().__init__(id="devices-screen")

    @property
    def parley(self) -> ParleyApp:
        from parley.client.tui.app import ParleyApp

        assert isinstance(self.app, ParleyApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield AlarmBanner()
        with VerticalScroll(id="devices"):
            yield Static(Text("Your devices", style="bold"))
            yield OptionList(id="device-list", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Link a new device", id="link", variant="primary")
                yield Button("Unlink selected", id="unlink", variant="error")
            with Horizontal(id="link-box"):
                with Vertical(id="link-left"):
                    yield Static("", id="link-code", markup=False)
                yield Static("", id="link-qr", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(AlarmBanner).show(self.parley.alarms)
        self.load()

    @work(group="devices", exclusive=True)
    async def load(self) -> None:
        try:
            devices = await self.parley.client.app.devices()
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="error", markup=False)
            return
        mine = self.parley.me.get("device_id")
        options = []
        for d in devices:
            label = f"Device {d}  " + ("primary" if d == 1 else "linked")
            if d == mine:
                label += "  (this device)"
            options.append(Option(Text(label), id=str(d)))
        self.query_one("#device-list", OptionList).set_options(options)

    @on(Button.Pressed, "#link")
    def action_link(self) -> None:
        self.link()

    @work(group="link", exclusive=True)
    async def link(self) -> None:
        try:
            code = await self.parley.client.app.link_code()
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="error", markup=False)
            return
        server = str(self.parley.me.get("server", "URL"))
        self.query_one("#link-code", Static).update(
            Text.assemble(
                Text("Link a new device\n\n", style="bold"),
                "On the new device run:\n\n  parley link ",
                Text(code, style="bold"),
                " --server ",
                literal(server),
                "\n\nor scan the code. It works once, for 10 minutes; "
                "the new device gets your identity, encrypted under a key only the code gives.\n\n"
                "One-time code:\n",
                Text(code, style="bold reverse"),
            )
        )
        self.query_one("#link-qr", Static).update(qr_text(code))

    @on(Button.Pressed, "#unlink")
    def action_unlink(self) -> None:
        option = self.query_one("#device-list", OptionList).highlighted_option
        if option is None or option.id is None:
            return
        device = int(option.id)
        if device == self.parley.me.get("device_id"):
            self.notify("This is the device you are using", severity="warning")
            return
        self.unlink(device)

    @work(group="devices", exclusive=True)
    async def unlink(self, device: int) -> None:
        try:
            await self.parley.client.app.unlink(device)
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="error", markup=False)
            return
        self.notify(f"Device {device} unlinked")
        self.load()
