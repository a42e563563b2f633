"""The privacy policy, verified against the transparency log, with what changed since
the version you accepted (a unified diff, additions green and removals red)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from parley.client.tui.app import POLICY_ALARM
from parley.client.tui.widgets import AlarmBanner, shown
from parley.display import literal
from parley.errors import ParleyError

if TYPE_CHECKING:
    from parley.client.tui.app import ParleyApp


def diff_text(diff: str) -> Text:
    """A unified diff, literally, coloured by line."""
    out = Text()
    for line in diff.splitlines(keepends=True):
        style = ""
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        out.append_text(literal(line, multiline=True, style=style))
    return out


class PolicyScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("a", "accept", "Accept"),
    ]

    def __init__(self) -> None:
        super().__init__(id="policy-screen")
        self.policy: dict[str, Any] | None = None

    @property
    def parley(self) -> ParleyApp:
        from parley.client.tui.app import ParleyApp

        assert isinstance(self.app, ParleyApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield AlarmBanner()
        with VerticalScroll(id="policy"):
            yield Static("Fetching the policy and its proof…", id="policy-title", markup=False)
            yield Static("", id="policy-diff", markup=False)
            yield Static("", id="policy-text", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(AlarmBanner).show(self.parley.alarms)
        self.load(accept=False)

    def action_accept(self) -> None:
        if self.policy is not None:
            self.load(accept=True)

    @work(group="policy", exclusive=True)
    async def load(self, accept: bool) -> None:
        try:
            policy = await self.parley.client.app.policy(accept=accept)
        except ParleyError as exc:
            self.query_one("#policy-title", Static).update(Text(shown(exc.message), style="red"))
            return
        self.policy = policy
        version = policy.get("version")
        if accept:
            self.parley.resolve_alarm(POLICY_ALARM)
            state = f"You accepted version {version}."
        elif policy.get("accepted") is None:
            state = "You have not accepted a version yet. Press a to accept this one."
        elif policy.get("changed"):
            state = (
                f"Changed since version {policy.get('accepted')}, which you accepted: "
                "the changes are below. Press a to accept."
            )
        else:
            state = "Unchanged since you accepted it."
        self.query_one("#policy-title", Static).update(
            Text.assemble(
                Text(f"Privacy policy, version {version}", style="bold"),
                Text("  verified against the transparency log\n", style="green"),
                state,
            )
        )
        diff = str(policy.get("diff") or "")
        diff_widget = self.query_one("#policy-diff", Static)
        diff_widget.update(diff_text(diff) if diff and not accept else Text())
        diff_widget.set_class(bool(diff) and not accept, "shown")
        self.query_one("#policy-text", Static).update(
            literal(str(policy.get("text", "")), multiline=True)
        )
