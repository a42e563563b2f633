"""``parley tui`` driven by Textual's pilot against a real ``parley-server`` process.

The person at the keyboard is Alice, in the terminal app; the people she talks to
are ``Client`` cores of their own profiles on the same server. Keys are pressed,
and what the terminal shows (the characters the app drew) is asserted. One SVG
per main screen is kept in ``$PARLEY_TEST_ARTIFACTS`` (default
``tests/artifacts/tui``). Waits are conditions with generous limits, never timings.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import OptionList

from parley.client.base import Session
from parley.client.core import Client, Event
from parley.client.kt import verified_lookup
from parley.client.store import Profile
from parley.client.tui.app import ParleyApp
from parley.client.tui.widgets import AlarmBanner, MessageList
from parley.protocol.fingerprint import parse
from tests.e2e.conftest import new_phone
from tests.e2e.server import ServerProcess
from tests.e2e.test_reports import add_staff, admin
from tests.hostile_text import assert_shown_safely

ARTIFACTS = Path(
    os.environ.get("PARLEY_TEST_ARTIFACTS") or Path(__file__).parents[1] / "artifacts" / "tui"
)
SIZE = (120, 40)
LIMIT = 60.0  # seconds a condition may take on a busy two-core machine

# Hostile strings that must fit the widths they are shown in (the list is 44 wide).
HOSTILE_NAME = "[bold red]x[/] \u202eevil"
HOSTILE_TEXTS = [
    "[link=file:///etc/passwd]y[/link]",
    "\x1b]0;pwned\x07 title",
    "[b]bold[/b] :thumbs_up: \x1b[2J",
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real parley-server process on SQLite."""
    proc = ServerProcess(tmp_path, f"sqlite:///{tmp_path / 'data' / 'parley.db'}")
    proc.start()
    yield proc
    if proc.proc and proc.proc.poll() is None:
        proc.stop()


# -- people -----------------------------------------------------------------------------------


async def person(server: ServerProcess, root: Path, name: str, phone: str | None = None) -> Client:
    """A registered profile (its own directory), as a client core."""
    client = Client(Profile(root / name, "correct horse"))
    phone = phone or new_phone()
    await client.app.register(phone, server.url, force=True)
    await client.app.verify(await server.code_for(phone), name)
    return client


async def published(client: Client) -> None:
    """Wait until the key directory publishes ``client``'s identity. A registration asks
    the server for an epoch, which follows within moments; a first message that arrives
    before it is refused by whoever checks its sender against the directory (the
    directory still shows the number's old identity), so a test that sends right after
    registering would depend on the client being slow."""

    async def act(s: Session) -> bool:
        entry = await verified_lookup(s.api, s.device.account_id)
        return bool(entry["identity_key"] == s.device.identity.public.to_bytes())

    deadline = time.monotonic() + LIMIT
    while not await client.app.run(act):
        if time.monotonic() > deadline:
            raise AssertionError(f"the directory did not publish a new identity in {LIMIT} s")
        await asyncio.sleep(0.1)


def phone_of(client: Client) -> str:
    return str(client.whoami()["phone"])


async def next_event(client: Client, wanted: Callable[[Event], bool], what: str) -> Event:
    """The next event of ``client`` that ``wanted`` accepts (others are dropped)."""
    stream = client.events()
    deadline = time.monotonic() + LIMIT
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = await asyncio.wait_for(anext(stream), left)
        except TimeoutError:
            break
        if wanted(event):
            return event
    raise AssertionError(f"{client.whoami()['name']} never got {what} in {LIMIT} s")


# -- the screen -------------------------------------------------------------------------------


def screen_text(app: ParleyApp) -> str:
    """The characters the app has drawn on the terminal, line by line."""
    strips = app.screen._compositor.render_strips()
    return "\n".join(strip.text for strip in strips)


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str) -> None:
    app = pilot.app
    assert isinstance(app, ParleyApp)
    deadline = time.monotonic() + LIMIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {LIMIT} s for {what}; the screen:\n{screen_text(app)}")
        await pilot.pause(0.05)


async def shows(pilot: Pilot[None], text: str) -> None:
    app = pilot.app
    assert isinstance(app, ParleyApp)
    await until(pilot, lambda: text in screen_text(app), f"{text!r} on the screen")


def snapshot(app: ParleyApp, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    app.save_screenshot(filename=f"{name}.svg", path=str(ARTIFACTS))
    assert (ARTIFACTS / f"{name}.svg").stat().st_size > 0


async def type_text(pilot: Pilot[None], text: str) -> None:
    for ch in text:
        await pilot.press(ch if ch != " " else "space")


# -- the tests --------------------------------------------------------------------------------


async def test_chat_list_chat_compose_receipts_report_and_hostile_text(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await person(server, tmp_path, "alice")
    bob = await person(server, tmp_path, HOSTILE_NAME)
    a_phone, b_phone = phone_of(alice), phone_of(bob)
    (tmp_path / "notes [b].txt").write_text("the attachment's bytes")
    await bob.send(a_phone, "a file for you", [tmp_path / "notes [b].txt"])
    for text in HOSTILE_TEXTS:
        await bob.send(a_phone, text)
    bob.listen()
    opened: list[Path] = []
    app = ParleyApp(alice, downloads=tmp_path / "downloads", opener=opened.append)
    try:
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            # the conversation list: bob's chat, four unread, the last message
            await shows(pilot, "4 unread")
            listed = screen_text(app)
            assert_shown_safely(listed, [HOSTILE_NAME])
            assert "[link=file:///et" not in listed  # the last message: the third
            assert_shown_safely(listed, ["[b]bold[/b] :thumbs_up: \x1b[2J"])
            snapshot(app, "chat-list")

            # open it: the messages, literally, with local times; the chat is read
            await pilot.press("enter")
            await shows(pilot, "pwned")
            chat = screen_text(app)
            assert_shown_safely(chat, [HOSTILE_NAME, b_phone, *HOSTILE_TEXTS])
            await until(pilot, lambda: "unread" not in screen_text(app), "the chat marked read")
            receipts = [
                await next_event(
                    bob,
                    lambda e: e.kind == "receipt" and e.data["status"] == "read",
                    "a read receipt",
                )
            ]
            assert receipts[0].data["status"] == "read"

            # compose two lines and send: bob receives both lines
            await type_text(pilot, "line one")
            await pilot.press("alt+enter")
            await type_text(pilot, "line two [red]x")
            await pilot.press("enter")
            got = await next_event(bob, lambda e: e.kind == "message", "alice's message")
            assert got.data["text"] == "line one\nline two [red]x"
            await shows(pilot, "line two [red]x")
            messages = app.screen.query_one(MessageList)
            sent_id = str(got.data["id"])
            # delivery state moves on: delivered (bob's device took it), then read
            await until(
                pilot,
                lambda: messages.messages[sent_id].status in ("delivered", "read"),
                "delivered",
            )
            await shows(pilot, "✓✓")
            await bob.mark_read(a_phone)
            await shows(pilot, "✓✓ read")
            assert messages.messages[sent_id].status == "read"
            snapshot(app, "chat")

            # the attachment: shown with its size; saved (s) and opened (o) from the chat
            assert "📎 notes [b].txt (" in screen_text(app), [
                ln for ln in screen_text(app).splitlines() if "notes" in ln
            ]
            while not messages.has_focus:
                await pilot.press("tab")
            messages.highlighted = 0
            await pilot.press("s")
            await shows(pilot, "Save notes [b].txt (")
            await pilot.press("enter")
            saved = tmp_path / "downloads" / "notes [b].txt"
            await until(pilot, saved.exists, "the attachment saved")
            assert saved.read_text() == "the attachment's bytes"
            await pilot.press("o")
            await until(pilot, lambda: bool(opened), "the attachment opened")
            assert opened[0].read_text() == "the attachment's bytes"
            assert oct(opened[0].parent.parent.stat().st_mode & 0o777) == "0o700"

            # report bob's first text from the chat view
            messages.highlighted = 1
            await pilot.press("r")
            await shows(pilot, "Report to the moderators")
            snapshot(app, "report")
            assert_shown_safely(screen_text(app), [HOSTILE_TEXTS[0]])
            await pilot.press("down")  # Fraud or scam
            await pilot.press("enter")
            await pilot.press("1", "enter")  # context: none before the first, asked anyway
            await type_text(pilot, "not me [b]x")
            await pilot.press("enter")
            await shows(pilot, "Reported (report")

            # search (Ctrl+F, even from the compose box): a word nobody wrote finds
            # nothing; a word of bob's hostile text finds it, shown inert, and Enter
            # opens the chat with that message highlighted
            app.screen.query_one("#compose").focus()
            await pilot.press("ctrl+f")
            await shows(pilot, "Search messages")
            await type_text(pilot, "zebra")
            await pilot.press("enter")
            await shows(pilot, "0 messages found")
            app.screen.query_one("#query").focus()
            await pilot.press(*["backspace"] * 5)
            await type_text(pilot, "title")
            await pilot.press("enter")
            await shows(pilot, "1 message found")
            assert_shown_safely(screen_text(app), [HOSTILE_TEXTS[1], HOSTILE_NAME])
            snapshot(app, "search")
            await pilot.press("enter")
            await until(pilot, lambda: "Search messages" not in screen_text(app), "search closed")
            messages = app.screen.query_one(MessageList)
            assert messages.current is not None and messages.current.text == HOSTILE_TEXTS[1]
            assert messages.has_focus
    finally:
        await bob.close()
    await asyncio.sleep(0)


async def test_groups_safety_number_and_the_identity_alarm(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await person(server, tmp_path, "alice")
    bob = await person(server, tmp_path, "bob")
    carol = await person(server, tmp_path, "carol")
    b_phone, c_phone = phone_of(bob), phone_of(carol)
    app = ParleyApp(alice)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        # a new group with bob
        await pilot.press("ctrl+g")
        await shows(pilot, "New group")
        await type_text(pilot, "friends")
        await pilot.press("enter")
        await type_text(pilot, b_phone)
        await pilot.press("enter")
        await shows(pilot, "group · F3: members")
        await shows(pilot, "created the group")

        # the members: bob not verified; carol added, then removed
        await pilot.press("f3")
        await shows(pilot, "2 members")
        members = screen_text(app)
        assert f"{b_phone}  not verified" in members, members
        assert "You " in members and "admin" in members
        app.screen.query_one("#add-phone").focus()
        await type_text(pilot, c_phone)
        await pilot.press("enter")
        await shows(pilot, "3 members")
        assert f"{c_phone}  not verified" in screen_text(app)
        snapshot(app, "group")
        member_list = app.screen.query_one("#members", OptionList)
        member_list.focus()
        member_list.highlighted = next(
            i for i, o in enumerate(member_list.options) if o.id == c_phone
        )
        await pilot.press("delete")
        await shows(pilot, "2 members")
        assert c_phone not in screen_text(app).split("members")[1].split("Enter on")[0]

        # bob's safety number from the member list: 60 digits and a QR code
        member_list.highlighted = next(
            i for i, o in enumerate(member_list.options) if o.id == b_phone
        )
        await pilot.press("enter")
        await shows(pilot, "Not verified")
        safety = screen_text(app)
        digits = "".join(
            ch for line in safety.splitlines() for ch in line if ch.isdigit() and "   " in line
        )
        theirs = parse(await bob.app.safety_number(phone_of(alice)))
        rows = [
            "   ".join(theirs[i + 5 * g : i + 5 * g + 5] for g in range(4)) for i in (0, 20, 40)
        ]
        assert all(row in safety for row in rows), safety
        assert digits  # drawn
        assert "█" in safety and "▀" in safety  # the QR code
        snapshot(app, "safety-number")
        await pilot.press("v")
        await shows(pilot, "✓ Verified")
        await pilot.press("escape")
        await shows(pilot, f"{b_phone}  ✓ verified")
        await pilot.press("escape")
        # back in the chat: the changes made on the members screen are lines of it
        await shows(pilot, f"You added {c_phone}")
        await shows(pilot, f"You removed {c_phone}")

        # bob reinstalls: a new identity under the same number. His first message is
        # refused (alice had verified him), and the banner says why until acknowledged.
        bob2 = await person(server, tmp_path, "bob2", phone=b_phone)
        try:
            await published(bob2)
            await bob2.send(phone_of(alice), "it is me, new phone")
            banner = app.screen.query_one(AlarmBanner)
            await until(pilot, lambda: banner.has_class("raised"), "the alarm banner")
            await shows(pilot, "has changed")
            text = screen_text(app)
            assert f"the safety number with {b_phone} has changed" in text
            assert "blocked" in text
            snapshot(app, "alarm")
            await pilot.press("f8")
            await until(pilot, lambda: not banner.has_class("raised"), "the banner acknowledged")
            assert "has changed" not in screen_text(app)
        finally:
            await bob2.close()
    for c in (bob, carol):
        await c.close()


async def test_policy_diff_and_linking_a_device(server: ServerProcess, tmp_path: Path) -> None:
    officers = [add_staff(server, f"officer{i}", "legal") for i in range(2)]

    def publish(version: int, text: str) -> None:
        (tmp_path / f"v{version}.md").write_text(text)
        done = admin(
            server,
            "policy",
            "publish",
            str(tmp_path / f"v{version}.md"),
            token=officers[version - 1],
        )
        assert done.returncode == 0, done.stderr

    publish(1, "# Privacy\nWe keep your phone number.\n")
    alice = await person(server, tmp_path, "alice")
    await alice.app.policy(accept=True)
    publish(2, "# Privacy\nWe keep your phone number and [b]the day[/b] you were last seen.\n")
    app = ParleyApp(alice)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        # the new version is an alarm; F5 shows it and what changed
        await shows(pilot, "privacy policy is now version 2")
        await pilot.press("f5")
        await shows(pilot, "Privacy policy, version 2")
        text = screen_text(app)
        assert "-We keep your phone number." in text
        assert "+We keep your phone number and [b]the day[/b] you were last seen." in text
        snapshot(app, "policy")
        await pilot.press("a")
        await shows(pilot, "You accepted version 2")
        assert "privacy policy is now version 2" not in screen_text(app)
        assert (await alice.app.policy(accept=False))["changed"] is False
        await pilot.press("escape")

        # link a new device with the code (and QR code) the devices screen shows
        await pilot.press("f4")
        await shows(pilot, "Device 1  primary  (this device)")
        await pilot.press("l")
        await shows(pilot, "One-time code")
        lines = screen_text(app).splitlines()
        code_line = next(ln for ln in lines if "parley link " in ln)
        code = code_line.split("parley link ")[1].split()[0]
        assert "█" in screen_text(app)
        snapshot(app, "devices")
        laptop = Client(Profile(tmp_path / "laptop", "correct horse"))
        try:
            linked = await laptop.app.link(code, server.url)
            assert linked["phone"] == phone_of(alice)
        finally:
            await laptop.close()
        app.screen.load()  # type: ignore[attr-defined]
        await shows(pilot, "Device 2  linked")


def _debug_dump(app: ParleyApp) -> None:  # pragma: no cover - a failing test's aid
    print(screen_text(app))
