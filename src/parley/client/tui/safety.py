"""The safety-number screen: the 60 digits two people compare, and a QR code of
them drawn in the terminal, with the contact's verification state."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from parley.client.state import ContactRecord
from parley.client.tui.qr import qr_text
from parley.client.tui.widgets import AlarmBanner, shown
from parley.display import literal
from parley.errors import ParleyError

if TYPE_CHECKING:
    from parley.client.tui.app import ParleyApp

EXPLANATION = (
    "Compare these numbers with the ones on your contact's device, in person or over a "
    "channel you trust, or scan the code. If they match, mark the contact verified: "
    "Parley will then stop you sending if their safety number ever changes."
)


def digit_rows(number: str) -> str:
    """60 digits as Signal shows them: 3 rows of 4 groups of 5."""
    digits = number.replace(" ", "")
    groups = [digits[i : i + 5] for i in range(0, len(digits), 5)]
    return "\n".join("   ".join(groups[r : r + 4]) for r in range(0, len(groups), 4))


class SafetyScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("v", "verify", "Mark as verified"),
    ]

    def __init__(self, phone: str) -> None:
        super().__init__(id="safety-screen")
        self.phone = phone
        self.digits = ""

    @property
    def parley(self) -> ParleyApp:
        from parley.client.tui.app import ParleyApp

        assert isinstance(self.app, ParleyApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield AlarmBanner()
        with VerticalScroll(id="safety"):
            yield Static(self._heading(), id="safety-title")
            with Horizontal():
                with Vertical(id="safety-left"):
                    yield Static("Computing the safety number…", id="digits", markup=False)
                    yield Static("", id="verified-state", markup=False)
                    yield Static(Text(EXPLANATION, style="dim"), id="safety-help")
                yield Static("", id="qr", markup=False)
        yield Footer()

    def _heading(self) -> Text:
        contact = self._contact()
        name = contact.name if contact else ""
        heading = Text("Safety number with ", style="bold")
        if name:
            heading.append_text(literal(name, style="bold"))
            heading.append(" ")
        heading.append_text(literal(self.phone, style="bold"))
        return heading

    def _contact(self) -> ContactRecord | None:
        return next((c for c in self.parley.client.contacts() if c.phone == self.phone), None)

    def on_mount(self) -> None:
        self.query_one(AlarmBanner).show(self.parley.alarms)
        self.load()

    def _show_state(self) -> None:
        contact = self._contact()
        if contact is not None and contact.changed:
            state = Text(
                "⚠ This safety number changed: compare it before you trust it (v).",
                style="bold red",
            )
        elif contact is not None and contact.verified:
            state = Text("✓ Verified", style="bold green")
        else:
            state = Text("Not verified. Press v once the numbers match.", style="yellow")
        self.query_one("#verified-state", Static).update(state)

    @work(group="safety", exclusive=True)
    async def load(self) -> None:
        try:
            self.digits = await self.parley.client.app.safety_number(self.phone)
        except ParleyError as exc:
            self.query_one("#digits", Static).update(Text(shown(exc.message), style="red"))
            return
        self.query_one("#digits", Static).update(
            Text(digit_rows(self.digits), style="bold", no_wrap=True)
        )
        self.query_one("#qr", Static).update(qr_text(self.digits.replace(" ", "")))
        self._show_state()

    def action_verify(self) -> None:
        if self.digits:
            self.verify()

    @work(group="safety", exclusive=True)
    async def verify(self) -> None:
        try:
            await self.parley.client.app.trust(self.phone, self.digits)
        except ParleyError as exc:
            self.notify(shown(exc.message), severity="error", markup=False)
            return
        self.notify(shown(f"{self.phone} is verified"), markup=False)
        self._show_state()
        self.parley.refresh_alarms()
