"""The ``parley`` command as a person meets it, and as a hostile sender attacks it.

Each test runs the real command as separate processes against a real server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley.protocol.wire import MAX_TEXT, AttachmentPointer
from tests.hostile_text import HOSTILE, assert_shown_safely

from .conftest import new_phone, register
from .server import ServerProcess
from .test_cli import Run, _received, _register

WIDE = {"COLUMNS": "1000"}  # tables do not wrap, so whole strings can be looked for


@pytest.fixture
def cli(sqlite_server: ServerProcess, tmp_path: Path) -> Iterator[tuple[ServerProcess, Run]]:
    def run(
        profile: str,
        *args: str,
        passphrase: str = "correct horse",
        check: bool = True,
        stdin: str | None = None,
        profile_after: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PARLEY_PASSPHRASE": passphrase, **WIDE}
        where = ["--profile", str(tmp_path / profile)]
        argv = [*args, *where] if profile_after else [*where, *args]
        result = subprocess.run(
            [sys.executable, "-m", "parley.cli.main", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
            input=stdin,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"parley {' '.join(args)} failed: {result.stderr}")
        return result

    yield sqlite_server, run


def _account(run: Run, profile: str) -> str:
    return str(json.loads(run(profile, "whoami", "--json").stdout)["account_id"])


# -- data safety ------------------------------------------------------------------------------------


def test_register_refuses_to_replace_a_registered_profile(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    alice = _register(server, run, "alice")
    before = json.loads(run("alice", "whoami", "--json").stdout)
    again = run("alice", "register", new_phone(), "--server", server.url, check=False)
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "already holds the registered profile" in again.stderr and "--force" in again.stderr
    assert json.loads(run("alice", "whoami", "--json").stdout) == before
    # a wrong passphrase cannot be used to clobber it either
    other = run(
        "alice", "register", new_phone(), "--server", server.url, passphrase="x", check=False
    )
    assert other.returncode == 1 and "left untouched" in other.stderr
    assert json.loads(run("alice", "whoami", "--json").stdout) == before
    # --force keeps the old profile aside, whole and readable
    newer = new_phone()
    run("alice", "register", newer, "--server", server.url, "--force")
    aside = sorted(tmp_path.glob("alice.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "profile.db").exists()
    old = subprocess.run(
        [sys.executable, "-m", "parley.cli.main", "--profile", str(aside[0]), "whoami", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "PARLEY_PASSPHRASE": "correct horse"},
        check=True,
    )
    assert json.loads(old.stdout)["phone"] == alice


def test_delete_account_asks_for_confirmation(cli: tuple[ServerProcess, Run]) -> None:
    server, run = cli
    _register(server, run, "alice")
    refused = run("alice", "delete-account", check=False)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert run("alice", "whoami").returncode == 0  # nothing was deleted
    run("alice", "delete-account", "--yes")
    assert run("alice", "whoami", check=False).returncode == 1


# -- hostile text -------------------------------------------------------------------------------------


def test_hostile_text_names_and_files_are_shown_literally(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    eve_name = "\x1b[31mEve\u202e[/]"
    eve = new_phone()
    run("eve", "register", eve, "--server", server.url)
    code = [
        ln.split()[1] for ln in server.sms_file.read_text().splitlines() if ln.split()[0] == eve
    ]
    run("eve", "verify", code[-1], "--name", eve_name)
    bob = _register(server, run, "bob")
    for text in HOSTILE:
        run("eve", "send", bob, "-", stdin=text)  # argv cannot carry a NUL
    hostile_file = tmp_path / "in.bin"
    hostile_file.write_bytes(b"payload")
    evil_name = "..\x1b[2Jevil\u202etxt.exe"
    named = tmp_path / evil_name
    named.write_bytes(b"payload")
    run("eve", "send", bob, "[attachment: fake.pdf]", "--attach", str(named))
    gid = json.loads(
        run("eve", "group", "create", "\x1b]0;pwned\x07[b]grp", "--member", bob, "--json").stdout
    )["id"]
    run("eve", "group", "send", gid, "\x1b[2Jin the group [/]")

    received = run("bob", "receive", "--timeout", "5")
    assert received.returncode == 0 and "Traceback" not in received.stderr
    assert_shown_safely(received.stdout, [*HOSTILE, eve_name, evil_name, "\x1b[2Jin the group [/]"])
    assert_shown_safely(received.stdout, ["\x1b]0;pwned\x07[b]grp"])  # the group's name
    assert "[attachment: fake.pdf]" in received.stdout  # a marker in text stays text
    lines = received.stdout.splitlines()
    # a newline in a message cannot forge a line: one per message, the attachment,
    # the group's creation and its message
    assert len(lines) == len(HOSTILE) + 3
    assert sum("created the group" in line for line in lines) == 1

    history = run("bob", "history", eve)
    assert history.returncode == 0 and "Traceback" not in history.stderr
    assert_shown_safely(history.stdout, [t for t in HOSTILE if "\n" not in t], multiline=True)
    listed = run("bob", "group", "list")
    assert_shown_safely(listed.stdout, ["\x1b]0;pwned\x07[b]grp"])
    as_json = run("bob", "receive", "--json", "--timeout", "2")
    assert as_json.returncode == 0
    for line in run("bob", "history", eve, "--json").stdout.splitlines():
        assert_shown_safely(line, [])  # JSON escapes every control character


# -- ids a sender chooses -------------------------------------------------------------------------------


async def test_a_sender_cannot_reuse_message_ids(
    cli: tuple[ServerProcess, Run],
) -> None:
    server, run = cli
    _register(server, run, "bob")
    mallory = await register(server)
    try:
        bob_account = _account(run, "bob")
        mallory_phone = (await mallory.api.call("GET", "/v1/accounts/me"))["phone"]

        def control(message_id: str) -> bytes:
            return json.dumps({"id": message_id, "from": mallory_phone}).encode()

        await mallory.send_content(bob_account, mallory.content("benign", control=control("m-1")))
        first = _received(run, "bob")
        assert [(m["id"], m["text"]) for m in first] == [("m-1", "benign")]
        mine = json.loads(run("bob", "send", mallory_phone, "bob's own", "--json").stdout)["id"]
        for reused in ("m-1", mine):
            await mallory.send_content(
                bob_account, mallory.content("abuse", control=control(reused))
            )
        result = run("bob", "receive", "--json", "--timeout", "5")
        events = [json.loads(x) for x in result.stdout.splitlines()]
        # neither is shown under a taken name, nor silently
        assert [(e.get("event"), e.get("text")) for e in events] == [("refused", None)] * 2
        assert result.stderr.count("reuses the id of an earlier message") == 2
        history = [
            json.loads(x)
            for x in run("bob", "history", mallory_phone, "--json").stdout.splitlines()
        ]
        assert [(h["id"], h["text"]) for h in history] == [("m-1", "benign"), (mine, "bob's own")]
    finally:
        await mallory.api.close()


async def test_a_message_a_report_could_not_carry_is_refused_not_shown(
    cli: tuple[ServerProcess, Run],
) -> None:
    server, run = cli
    _register(server, run, "bob")
    mallory = await register(server)
    try:
        content = mallory.content("from the far future", control=b'{"id": "late"}')
        late = type(content)(content.franking_key, 2**64 - 1, content.text, (), content.control)
        await mallory.send_content(_account(run, "bob"), late)
        result = run("bob", "receive", "--json", "--timeout", "5")
        (event,) = [json.loads(x) for x in result.stdout.splitlines()]
        assert event["event"] == "refused" and "text" not in event
        assert "was refused" in result.stderr and result.returncode == 0
    finally:
        await mallory.api.close()


# -- the command line ------------------------------------------------------------------------------------


def test_help_version_and_profile_after_the_command(cli: tuple[ServerProcess, Run]) -> None:
    server, run = cli
    top = subprocess.run(
        [sys.executable, "-m", "parley.cli.main", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in (
        "register",
        "verify",
        "whoami",
        "send",
        "receive",
        "group",
        "history",
        "attachment",
        "delete-account",
    ):
        assert name in top.stdout
    send_help = subprocess.run(
        [sys.executable, "-m", "parley.cli.main", "send", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "standard input" in send_help.stdout and "--attach FILE" in send_help.stdout
    assert "--profile" in send_help.stdout
    version = subprocess.run(
        [sys.executable, "-m", "parley.cli.main", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.startswith("parley ")
    alice = _register(server, run, "alice")
    me = json.loads(run("alice", "whoami", "--json", profile_after=True).stdout)
    assert me["phone"] == alice


def test_errors_speak_plainly(cli: tuple[ServerProcess, Run]) -> None:
    server, run = cli
    phone = new_phone()
    bad_url = run("x", "register", phone, "--server", "ftp://example.org", check=False)
    assert bad_url.returncode == 1
    assert (
        bad_url.stderr
        == "parley: the server URL must start with http:// or https:// (got 'ftp://example.org')\n"
    )
    bad_phone = run("x", "register", "12345", "--server", server.url, check=False)
    assert bad_phone.returncode == 1 and "international format" in bad_phone.stderr
    run("x", "register", phone, "--server", server.url)
    short = run("x", "verify", "12345", check=False)
    assert short.stderr == "parley: the code is the 6 digits from the SMS\n"
    code = [
        ln.split()[1] for ln in server.sms_file.read_text().splitlines() if ln.split()[0] == phone
    ][-1]
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    answers = [run("x", "verify", wrong, check=False).stderr for _ in range(5)]
    assert answers[0] == "parley: the code is wrong: check the 6 digits from the SMS\n"
    assert "too many wrong codes: ask for a new one" in answers[-1]
    for answer in answers:
        assert "pattern" not in answer and "Traceback" not in answer and answer.count("\n") == 1


def test_text_from_stdin_or_file_and_the_length_limit(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    _register(server, run, "alice")
    bob = _register(server, run, "bob")
    run("alice", "send", bob, "-", stdin="line one\nline two\n")
    note = tmp_path / "note.txt"
    note.write_text("from a file")
    run("alice", "send", bob, "--file", str(note))
    assert [m["text"] for m in _received(run, "bob")] == ["line one\nline two\n", "from a file"]
    too_long = run("alice", "send", bob, "-", stdin="x" * (MAX_TEXT + 1), check=False)
    assert too_long.stderr == f"parley: message too long (the limit is {MAX_TEXT // 1024} KiB)\n"


def test_local_commands_never_touch_the_network(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    alice = _register(server, run, "alice")
    bob = _register(server, run, "bob")
    run("alice", "send", bob, "hi")
    _received(run, "bob")
    server.stop()
    # a listener where the server was: it counts every connection a command opens
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", server.port))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)
            conn.close()

    counter = threading.Thread(target=count)
    counter.start()
    try:
        assert run("bob", "whoami").returncode == 0
        assert run("bob", "export", str(tmp_path / "e.json")).returncode == 0
        history = run("bob", "history", alice)
        assert "hi" in history.stdout and history.stderr == ""
    finally:
        stop.set()
        counter.join()
        listener.close()
    assert accepted == []


def test_network_commands_say_they_are_retrying(cli: tuple[ServerProcess, Run]) -> None:
    server, run = cli
    _register(server, run, "alice")
    bob = _register(server, run, "bob")
    server.stop()
    result = run("alice", "send", bob, "anyone there?", check=False)
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and lines
    assert lines[0].startswith("parley: cannot reach") and "retrying" in lines[0]
    assert lines[-1].startswith("parley: cannot reach the server")
    assert "Traceback" not in result.stderr


def test_follow_listens_past_the_idle_timeout_and_ctrl_c_exits_130(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    alice = _register(server, run, "alice")
    bob = _register(server, run, "bob")
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "parley.cli.main",
            "--profile",
            str(tmp_path / "bob"),
            "receive",
            "--follow",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PARLEY_PASSPHRASE": "correct horse"},
    )
    try:
        time.sleep(11.5)  # past the 10 s idle timeout that applies without --follow
        assert follow.poll() is None
        run("alice", "send", bob, "still there?")
        assert follow.stdout is not None
        got = json.loads(follow.stdout.readline())
        assert (got["text"], got["sender"]) == ("still there?", alice)
    finally:
        follow.send_signal(signal.SIGINT)
        _, stderr = follow.communicate(timeout=20)
    assert follow.returncode == 130
    assert "Traceback" not in stderr


# -- names, times, attachments, notes to yourself ----------------------------------------------------------


def test_names_times_and_groups_by_name(cli: tuple[ServerProcess, Run]) -> None:
    server, run = cli
    alice = _register(server, run, "alice")  # --name alice
    bob = _register(server, run, "bob")
    run("alice", "send", bob, "hi bob")
    line = run("bob", "receive", "--timeout", "5").stdout
    assert line == f"alice ({alice}): hi bob\n"
    entry = json.loads(run("bob", "history", alice, "--json").stdout)
    assert entry["sender_name"] == "alice" and entry["sent_at_iso"].endswith("Z")
    table = run("bob", "history", alice).stdout
    assert time.strftime("%Y-%m-%d") in table and "alice" in table
    run("alice", "group", "create", "book club", "--member", bob)
    run("alice", "group", "send", "book club", "chapter one")
    got = _received(run, "bob")
    assert [(m["event"], m["text"]) for m in got] == [("created", ""), (None, "chapter one")]
    run("bob", "group", "send", "book club", "read it")
    assert [m["text"] for m in _received(run, "alice")] == ["read it"]
    run("alice", "group", "create", "book club", "--member", bob)
    ambiguous = run("alice", "group", "send", "book club", "which?", check=False)
    assert ambiguous.returncode == 1 and "2 groups are named 'book club'" in ambiguous.stderr


def test_attachments_are_always_shown_and_saved_later(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    alice = _register(server, run, "alice")
    bob = _register(server, run, "bob")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(os.urandom(2048))
    sent = json.loads(run("alice", "send", bob, "look", "--attach", str(photo), "--json").stdout)
    line = run("bob", "receive", "--timeout", "5").stdout
    assert f"alice ({alice}): look [attachment: photo.jpg, " in line and " KiB]" in line
    assert "[attachment: photo.jpg" in run("bob", "history", alice).stdout
    out = tmp_path / "saved"
    run("bob", "attachment", "save", sent["id"], "--out", str(out))
    run("bob", "attachment", "save", sent["id"], "--out", str(out))  # never overwrites
    assert sorted(p.name for p in out.iterdir()) == ["photo (1).jpg", "photo.jpg"]
    assert (out / "photo.jpg").read_bytes() == photo.read_bytes()
    missing = run("bob", "attachment", "save", "no-such-id", check=False)
    assert missing.returncode == 1 and "no message no-such-id" in missing.stderr


async def test_a_hostile_file_name_is_saved_inside_the_folder(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    _register(server, run, "bob")
    mallory = await register(server)
    try:
        from parley.protocol import attachments

        enc = attachments.encrypt(b"payload", os.urandom)
        up = await mallory.api.call("POST", "/v1/attachments", content=enc.blob)
        pointer = AttachmentPointer(
            up["id"], enc.key, enc.digest, len(enc.blob), "text/plain", "../../\x1b[2Joutside.txt"
        )
        content = mallory.content("file", (pointer,), control=b'{"id": "f-1"}')
        await mallory.send_content(_account(run, "bob"), content)
        _received(run, "bob")
        out = tmp_path / "inbox"
        run("bob", "attachment", "save", "f-1", "--out", str(out))
        assert [p.name for p in out.iterdir()] == ["_[2Joutside.txt"]
        assert not (tmp_path / "outside.txt").exists()
    finally:
        await mallory.api.close()


def test_a_note_to_yourself_shows_once_on_a_linked_device(
    cli: tuple[ServerProcess, Run],
) -> None:
    server, run = cli
    alice = _register(server, run, "alice")
    code = run("alice", "devices", "link").stdout.strip().splitlines()[-1]
    run("alice2", "link", code, "--server", server.url)
    run("alice", "send", alice, "buy milk")
    notes = _received(run, "alice2")
    assert [(m["text"], m["chat"]) for m in notes] == [("buy milk", alice)]


# -- reports from the command line ---------------------------------------------------------------------------


def test_report_from_the_command_line_in_delivery_order_once(
    cli: tuple[ServerProcess, Run],
) -> None:
    from .test_reports import add_staff, moderator_view

    server, run = cli
    alice = _register(server, run, "alice")
    bob = _register(server, run, "bob")
    for text in ("first", "second", "third"):
        run("alice", "send", bob, text)
    run("bob", "send", alice, "bob's own: never part of a report")
    run("alice", "send", bob, "the abuse")
    got = _received(run, "bob")
    reported = next(m for m in got if m["text"] == "the abuse")
    result = json.loads(
        run("bob", "report", reported["id"], "--reason", "fraud", "--context", "2", "--json").stdout
    )
    moderator = add_staff(server, "mia", "moderator")
    shown = moderator_view(server, moderator, result["id"])["messages"]["messages"]
    assert [(m["text"], m["reported"]) for m in shown] == [
        ("second", False),
        ("third", False),
        ("the abuse", True),
    ]
    assert [m["delivered_ms"] for m in shown] == sorted(m["delivered_ms"] for m in shown)
    again = run("bob", "report", reported["id"], "--reason", "fraud")
    assert again.stdout.strip() == f"You had already reported this message ({result['id']})."
