"""The ``parley`` command, run as separate processes against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import new_phone
from .server import ServerProcess, free_port

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(sqlite_server: ServerProcess, tmp_path: Path) -> Iterator[tuple[ServerProcess, Run]]:
    def run(
        profile: str, *args: str, passphrase: str = "correct horse", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PARLEY_PASSPHRASE": passphrase}
        result = subprocess.run(
            [sys.executable, "-m", "parley.cli.main", "--profile", str(tmp_path / profile), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"parley {' '.join(args)} failed: {result.stderr}")
        return result

    yield sqlite_server, run


def _register(server: ServerProcess, run: Run, profile: str) -> str:
    phone = new_phone()
    run(profile, "register", phone, "--server", server.url)
    code = [
        ln.split()[1] for ln in server.sms_file.read_text().splitlines() if ln.split()[0] == phone
    ][-1]
    run(profile, "verify", code, "--name", profile)
    return phone


def _received(run: Run, profile: str) -> list[dict[str, object]]:
    lines = run(profile, "receive", "--json", "--timeout", "5").stdout.splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_two_users_chat_both_ways_and_offline_messages_arrive_in_order(
    cli: tuple[ServerProcess, Run],
) -> None:
    server, run = cli
    alice, bob = _register(server, run, "alice"), _register(server, run, "bob")
    sent = json.loads(run("alice", "send", bob, "hello bob", "--json").stdout)
    got = _received(run, "bob")
    assert [(m["text"], m["sender"], m["chat"], m["id"]) for m in got] == [
        ("hello bob", alice, alice, sent["id"])
    ]
    assert set(got[0]) >= {"id", "chat", "group", "sender", "text", "attachments", "sent_at"}
    run("bob", "send", alice, "hello alice")
    assert [m["text"] for m in _received(run, "alice")] == ["hello alice"]
    for i in range(4):  # bob is offline
        run("alice", "send", bob, f"offline {i}")
    assert [m["text"] for m in _received(run, "bob")] == [f"offline {i}" for i in range(4)]
    history = [json.loads(x) for x in run("bob", "history", alice, "--json").stdout.splitlines()]
    assert [h["text"] for h in history] == [
        "hello bob",
        "hello alice",
        *[f"offline {i}" for i in range(4)],
    ]
    me = json.loads(run("alice", "whoami", "--json").stdout)
    assert me["phone"] == alice


def test_group_with_a_removal(cli: tuple[ServerProcess, Run]) -> None:
    server, run = cli
    alice, bob, carol = (_register(server, run, n) for n in ("alice", "bob", "carol"))
    gid = json.loads(
        run(
            "alice", "group", "create", "friends", "--member", bob, "--member", carol, "--json"
        ).stdout
    )["id"]
    run("alice", "group", "send", gid, "hello group")
    for member in ("bob", "carol"):
        # every change to the group is shown: first, that alice created it
        assert [
            (m["event"], m["group_name"], m["text"], m["group"], m["sender"])
            for m in _received(run, member)
        ] == [("created", "friends", "", gid, alice), (None, None, "hello group", gid, alice)]
    run("bob", "group", "send", gid, "bob here")
    assert [m["text"] for m in _received(run, "carol")] == ["bob here"]
    assert [m["text"] for m in _received(run, "alice")] == ["bob here"]
    run("alice", "group", "remove", gid, carol)
    run("alice", "group", "send", gid, "without carol")
    # bob had not received the change yet: sending, he catches up first and is told
    sent = run("bob", "group", "send", gid, "bob without carol")
    assert f"[friends] {alice} removed {carol}" in sent.stderr
    # carol is told she was removed (and by whom), and gets nothing sent after it
    told = _received(run, "carol")
    assert [(m["event"], m["group"], m["sender"], m["text"]) for m in told] == [
        ("removed", gid, alice, "")
    ]
    assert [m["text"] for m in _received(run, "bob")] == ["without carol"]
    assert [m["text"] for m in _received(run, "alice")] == ["bob without carol"]
    lines = run("bob", "history", gid).stdout
    assert "created the group" in lines and f"removed {carol}" in lines
    groups = json.loads(run("alice", "group", "list", "--json").stdout)
    assert groups[0]["name"] == "friends" and carol not in groups[0]["members"]


def test_safety_numbers_match_and_an_identity_change_is_caught(
    cli: tuple[ServerProcess, Run],
) -> None:
    server, run = cli
    alice, bob = _register(server, run, "alice"), _register(server, run, "bob")
    a_view = run("alice", "safety-number", bob).stdout.strip()
    b_view = run("bob", "safety-number", alice).stdout.strip()
    assert a_view == b_view and len(a_view.split()) == 12
    run("alice", "trust", bob, "--safety-number", a_view)
    bad = run("alice", "trust", bob, "--safety-number", "1" * 60, check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    # bob re-installs: a new identity under the same number
    run("bob2", "register", bob, "--server", server.url)
    code = [
        ln.split()[1] for ln in server.sms_file.read_text().splitlines() if ln.split()[0] == bob
    ][-1]
    run("bob2", "verify", code)
    blocked = run("alice", "send", bob, "are you still you?", check=False)
    assert (
        blocked.returncode == 1
        and "safety number" in blocked.stderr
        and "changed" in blocked.stderr
    )
    assert "changed" in run("alice", "whoami").stderr  # shown on every command until re-verified
    new_number = run("alice", "safety-number", bob).stdout.strip()
    assert new_number != a_view
    run("alice", "trust", bob, "--safety-number", new_number)
    run("alice", "send", bob, "verified again")
    assert [m["text"] for m in _received(run, "bob2")] == ["verified again"]


def test_linked_device_receives_and_sees_own_sent_messages(cli: tuple[ServerProcess, Run]) -> None:
    server, run = cli
    alice, bob = _register(server, run, "alice"), _register(server, run, "bob")
    code = run("bob", "devices", "link").stdout.strip().splitlines()[-1]
    run("bob-laptop", "link", code, "--server", server.url)
    assert json.loads(run("bob", "devices", "list", "--json").stdout) == {"devices": [1, 2]}
    run("alice", "send", bob, "to every device")
    assert [m["text"] for m in _received(run, "bob")] == ["to every device"]
    assert [m["text"] for m in _received(run, "bob-laptop")] == ["to every device"]
    run("bob", "send", alice, "sent from the phone")
    sync = _received(run, "bob-laptop")  # the sync copy of bob's own message
    assert [(m["text"], m["sender"], m["chat"]) for m in sync] == [
        ("sent from the phone", bob, alice)
    ]
    history = [
        json.loads(x)
        for x in run("bob-laptop", "history", alice, "--json").stdout.splitlines()
        if x
    ]
    assert [h["text"] for h in history] == ["to every device", "sent from the phone"]
    assert history[-1]["outgoing"] is True
    run("bob", "devices", "unlink", "2")
    gone = run("bob-laptop", "receive", "--json", "--timeout", "3", check=False)
    assert gone.returncode == 1 and gone.stderr.strip().startswith("parley:")


def test_wrong_passphrase_fails_cleanly_without_touching_the_store(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    _register(server, run, "alice")
    store = tmp_path / "alice" / "profile.db"
    before = (store.read_bytes(), store.stat().st_mtime_ns)
    result = run("alice", "whoami", passphrase="wrong", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "parley: wrong passphrase (the profile was not changed)"
    assert (store.read_bytes(), store.stat().st_mtime_ns) == before
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "alice").stat().st_mode & 0o777) == "0o700"
    assert b"alice" not in store.read_bytes()  # encrypted at rest


def test_errors_are_one_line_and_non_zero(cli: tuple[ServerProcess, Run], tmp_path: Path) -> None:
    server, run = cli
    _register(server, run, "alice")
    unknown = run("alice", "send", "+14155559999", "hi", check=False)
    assert (
        unknown.returncode == 1
        and unknown.stderr.count("\n") == 1
        and "not on Parley" in unknown.stderr
    )
    nowhere = run(
        "nobody",
        "register",
        new_phone(),
        "--server",
        f"http://127.0.0.1:{free_port()}",
        check=False,
    )
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("parley: cannot reach the server")
    missing = run("ghost", "whoami", check=False)
    assert missing.returncode == 1 and "no Parley profile" in missing.stderr
    assert "Traceback" not in unknown.stderr + nowhere.stderr + missing.stderr


def test_attachments_export_and_delete_account(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    _register(server, run, "alice")
    bob = _register(server, run, "bob")
    photo = tmp_path / "photo.bin"
    photo.write_bytes(os.urandom(3000))
    run("alice", "send", bob, "see attached", "--attach", str(photo))
    got = json.loads(
        run(
            "bob", "receive", "--json", "--timeout", "5", "--save-attachments", str(tmp_path / "dl")
        ).stdout
    )
    assert got["attachments"][0]["name"] == "photo.bin"
    assert (tmp_path / "dl" / "photo.bin").read_bytes() == photo.read_bytes()
    run("bob", "export", str(tmp_path / "export.json"))
    exported = json.loads((tmp_path / "export.json").read_text())
    assert exported["phone"] == bob and exported["history"][0]["text"] == "see attached"
    assert "identity" not in json.dumps(exported) and "key" not in json.dumps(exported["history"])
    run("bob", "delete-account", "--yes")
    assert not (tmp_path / "bob" / "profile.db").exists()
    gone = run("alice", "send", bob, "anyone?", check=False)
    assert gone.returncode == 1 and "not on Parley" in gone.stderr


def test_a_send_survives_a_server_restart_without_duplicates(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    import threading
    import time

    server, run = cli
    alice, bob = _register(server, run, "alice"), _register(server, run, "bob")
    run("alice", "send", bob, "first")  # contact known, session set up
    server.stop()

    def restart() -> None:
        time.sleep(1.0)
        server.start()

    t = threading.Thread(target=restart)
    t.start()
    result = run(
        "alice", "send", bob, "sent while the server restarted", "--json"
    )  # retried with the same id
    t.join()
    sent_id = json.loads(result.stdout)["id"]
    got = _received(run, "bob")
    assert [(m["text"], m["id"]) for m in got][-1] == ("sent while the server restarted", sent_id)
    assert [m["text"] for m in got] == ["first", "sent while the server restarted"]
    _ = alice
