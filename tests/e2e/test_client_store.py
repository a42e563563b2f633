"""The client's database and receipts, through the real ``parley`` command and a
real server: receipts end to end (and one forged by a third party, ignored), the
chat list and search, and a ``receive`` killed in the middle of a large queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from parley.client import receipts
from parley.client.app import App, Session
from parley.client.messenger import Messenger
from parley.client.store import Profile

from .server import ServerProcess
from .test_cli import Run, _received, _register, cli

__all__ = ["cli"]
PASS = "correct horse"


def _lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(x) for x in result.stdout.splitlines() if x.strip()]


def _status(run: Run, profile: str, chat: str) -> dict[str, object]:
    return {
        str(h["id"]): h.get("status")
        for h in _lines(run(profile, "history", chat, "--json"))
        if h.get("outgoing")
    }


async def test_receipts_chat_list_and_search(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    alice, bob = _register(server, run, "alice"), _register(server, run, "bob")
    carol = _register(server, run, "carol")
    first = json.loads(run("alice", "send", bob, "the zebra crossed", "--json").stdout)["id"]
    assert _status(run, "alice", bob) == {first: "sent"}

    # bob receives: a delivery receipt goes back; bob's chat list shows it unread
    assert [m["text"] for m in _received(run, "bob")] == ["the zebra crossed"]
    chats = _lines(run("bob", "chats", "--json"))
    assert [(c["chat"], c["unread"], c["last"], c["title"]) for c in chats] == [
        (alice, 1, "the zebra crossed", "alice")
    ]
    found = _lines(run("bob", "search", "ZEBRA", "--json"))
    assert [m["id"] for m in found] == [first]
    assert _lines(run("bob", "search", "giraffe", "--json")) == []

    assert _received(run, "alice") == []  # a receipt is not a message
    assert _status(run, "alice", bob) == {first: "delivered"}

    # a third party cannot move alice's message: carol forges a read receipt
    alice_account = json.loads(run("alice", "whoami", "--json").stdout)["account_id"]
    forger = App(Profile(tmp_path / "carol", PASS))
    try:
        await forger.run(
            lambda s: forger._send_control(s, alice_account, **receipts.body("read", [first]))
        )
    finally:
        await forger.close()
    _received(run, "alice")
    assert _status(run, "alice", bob) == {first: "delivered"}

    # bob reads the chat: a read receipt
    assert "Marked 1 message(s) read." in run("bob", "read", alice).stdout
    assert _lines(run("bob", "chats", "--json"))[0]["unread"] == 0
    _received(run, "alice")
    assert _status(run, "alice", bob) == {first: "read"}

    # with read receipts off, reading tells the sender nothing more than delivered
    assert json.loads(run("bob", "settings", "--read-receipts", "off", "--json").stdout) == {
        "read_receipts": False
    }
    second = json.loads(run("alice", "send", bob, "quiet", "--json").stdout)["id"]
    _received(run, "bob")
    run("bob", "read", alice)
    _received(run, "alice")
    assert _status(run, "alice", bob) == {first: "read", second: "delivered"}
    assert carol  # carol's own chat list holds nothing of theirs
    assert _lines(run("carol", "chats", "--json")) == []


async def test_receive_killed_mid_queue_loses_nothing_and_shows_nothing_twice(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    alice, bob = _register(server, run, "alice"), _register(server, run, "bob")
    total = 400
    sender = App(Profile(tmp_path / "alice", PASS))

    async def send_all(s: Session) -> None:
        # one directory lookup, then one messenger (its key checks are cached)
        account = (await sender._contact(s, bob)).account_id
        messenger = Messenger(s.api, s.device, before_send=lambda: sender._save(s))
        for i in range(total):
            await messenger.send_content(account, sender._content(s, f"queued {i}", id=f"q-{i}"))

    try:
        await sender.run(send_all)
    finally:
        await sender.close()

    env = {**os.environ, "PARLEY_PASSPHRASE": PASS}
    command = [sys.executable, "-m", "parley.cli.main", "--profile", str(tmp_path / "bob")]
    proc = subprocess.Popen(
        [*command, "receive", "--json", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # blocks until the first message is shown
    os.kill(proc.pid, signal.SIGKILL)  # in the middle: more are in flight or uncommitted
    proc.wait(timeout=30)
    # The rest through the same reader (it may hold lines already read from the pipe);
    # a line the kill cut short was never shown whole, so it does not count.
    printed = first + proc.stdout.read()
    complete = printed.split("\n")[:-1]
    shown_first = [json.loads(x) for x in complete if x.strip()]
    assert shown_first, "nothing was shown before the kill"
    assert len(shown_first) < total, "the kill came too late to test anything"

    deadline = time.monotonic() + 120
    shown_later: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        got = _received(run, "bob")
        shown_later += got
        history = _lines(run("bob", "history", alice, "--json"))
        if len(history) >= total and not got:
            break
    history = _lines(run("bob", "history", alice, "--json"))
    texts = [h["text"] for h in history]
    assert sorted(texts) == sorted(f"queued {i}" for i in range(total))  # each exactly once
    shown = [m["id"] for m in shown_first + shown_later]
    assert len(shown) == len(set(shown)), "a message was shown twice"
    assert set(shown) <= {h["id"] for h in history}
