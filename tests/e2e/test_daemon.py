"""``parley daemon``: a real server and real daemon processes, driven over their
JSON-RPC sockets and through the ``parley`` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.client.app import App
from parley.client.store import Profile

from .conftest import new_phone
from .server import ServerProcess

PASSPHRASE = "correct horse"
Run = Callable[..., subprocess.CompletedProcess[str]]


class Rpc:
    """A JSON-RPC connection as any program would open it: a socket and lines."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self.notifications: list[dict[str, Any]] = []
        self._next = 0

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()

    def read(self, timeout: float = 60) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        line = self.file.readline()
        assert line, "the daemon closed the connection"
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def request(self, method: str, params: object = None) -> dict[str, Any]:
        """The whole answer (result or error); notifications before it are kept."""
        self._next += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next, "method": method}
        if params is not None:
            request["params"] = params
        self.write(json.dumps(request).encode() + b"\n")
        while True:
            message = self.read()
            if message.get("id") == self._next and "method" not in message:
                return message
            self.notifications.append(message)

    def call(self, method: str, params: object = None) -> Any:
        answer = self.request(method, params)
        assert "error" not in answer, answer
        return answer["result"]

    def wait_for(self, method: str, where: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for n in self.notifications:
                if n.get("method") == method and where(n["params"]):
                    self.notifications.remove(n)
                    return dict(n["params"])
            self.notifications.append(self.read(max(0.1, deadline - time.monotonic())))
        raise AssertionError(f"no {method} notification")


class Daemon:
    def __init__(self, profile: Path, passphrase: str = PASSPHRASE) -> None:
        self.profile = profile
        self.socket = profile / "daemon.sock"
        self.log = profile.parent / f"daemon-{profile.name}.log"
        env = {**os.environ, "PARLEY_PASSPHRASE": passphrase}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "parley.cli.main", "--profile", str(profile), "daemon"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                Rpc(self.socket).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the daemon did not answer")

    def rpc(self) -> Rpc:
        return Rpc(self.socket)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def cli(sqlite_server: ServerProcess, tmp_path: Path) -> Iterator[tuple[ServerProcess, Run]]:
    daemons: list[Daemon] = []

    def run(
        profile: str, *args: str, passphrase: str = PASSPHRASE, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PARLEY_PASSPHRASE": passphrase}
        env.pop("PARLEY_DAEMON_SOCKET", None)
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

    run.daemons = daemons  # type: ignore[attr-defined]
    yield sqlite_server, run
    for d in daemons:
        if d.proc.poll() is None:
            d.kill()


def _daemon(run: Run, tmp_path: Path, profile: str) -> Daemon:
    d = Daemon(tmp_path / profile)
    run.daemons.append(d)  # type: ignore[attr-defined]
    return d


def _register(server: ServerProcess, run: Run, profile: str) -> str:
    phone = new_phone()
    run(profile, "register", phone, "--server", server.url)
    code = [
        ln.split()[1] for ln in server.sms_file.read_text().splitlines() if ln.split()[0] == phone
    ][-1]
    run(profile, "verify", code, "--name", profile)
    return phone


def test_send_answers_an_id_and_the_peer_is_notified_with_receive_and_a_receipt(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    alice, bob = _register(server, run, "alice"), _register(server, run, "bob")
    a, b = _daemon(run, tmp_path, "alice").rpc(), _daemon(run, tmp_path, "bob").rpc()
    assert a.call("subscribeReceive") is True and b.call("subscribeReceive") is True

    sent = a.call("send", {"recipient": bob, "message": "hello [b]bob[/b] \x1b[31m"})
    assert set(sent) == {"id"} and sent["id"]
    got = b.wait_for("receive", lambda p: p["message"]["id"] == sent["id"])
    assert got["account"] == bob
    m = got["message"]
    assert (m["text"], m["sender"], m["chat"], m["sender_name"]) == (
        "hello [b]bob[/b] \x1b[31m",
        alice,
        alice,
        "alice",
    )
    assert "franking" not in m and m["attachments"] == []
    # Bob's daemon stored it and sent a delivery receipt; Alice's daemon says so
    receipt = a.wait_for("receipt", lambda p: p["id"] == sent["id"])
    assert receipt == {"id": sent["id"], "status": "delivered"}
    # and Bob's history (read through his daemon) holds it once
    history = b.call("history", {"chat": alice})
    assert [h["id"] for h in history] == [sent["id"]]
    last = b.call("listMessages", {"chat": alice, "limit": 50})
    assert [x["text"] for x in last] == ["hello [b]bob[/b] \x1b[31m"] and last[0]["seq"] > 0
    # marking it read sends a read receipt
    assert b.call("markRead", {"chat": alice}) == {"unread": 1}
    assert a.wait_for("receipt", lambda p: p["status"] == "read")["id"] == sent["id"]


def test_commands_run_through_the_daemon_with_the_same_output(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    alice, bob = _register(server, run, "alice"), _register(server, run, "bob")
    run("alice", "send", bob, "from before")
    run("bob", "receive", "--timeout", "5")
    commands = [
        ("whoami", "--json"),
        ("whoami",),
        ("history", alice, "--json"),
        ("history", alice),
        ("chats", "--json"),
        ("group", "list", "--json"),
        ("safety-number", alice),
        ("devices", "list", "--json"),
        ("settings", "--json"),
    ]
    errors = [
        ("send", "+1", "x"),
        ("history", "no such group"),
        ("report", "nope", "--reason", "spam"),
    ]
    standalone = [run("bob", *c) for c in commands]
    standalone_errors = [run("bob", *c, check=False) for c in errors]

    d = _daemon(run, tmp_path, "bob")
    # A wrong passphrase cannot open the profile: these answers come from the daemon,
    # which holds it open (no Argon2id in the command)
    wrong = "not the passphrase"
    assert run("bob", "whoami", passphrase=wrong, check=False).returncode == 0
    for c, alone in zip(commands, standalone, strict=True):
        through = run("bob", *c, passphrase=wrong)
        assert (through.stdout, through.returncode) == (alone.stdout, alone.returncode), c
    for c, alone in zip(errors, standalone_errors, strict=True):
        through = run("bob", *c, passphrase=wrong, check=False)
        assert (through.stderr, through.returncode) == (alone.stderr, alone.returncode), c
        assert through.returncode == 1 and through.stderr.count("\n") == 1

    # and without loading the cryptography or the client's core
    imports = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "parley.cli.main",
            "--profile",
            str(tmp_path / "bob"),
            "whoami",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PARLEY_PASSPHRASE": wrong},
        timeout=60,
        check=True,
    )
    loaded = {line.split("|")[-1].strip() for line in imports.stderr.splitlines()}
    assert "parley.cli.remote" in loaded
    assert not {m for m in loaded if m.startswith(("cryptography", "parley.client.app", "argon2"))}

    # a send through the daemon; `receive` prints what the daemon received since
    sent = json.loads(
        run("bob", "send", alice, "through the daemon", "--json", passphrase=wrong).stdout
    )
    got = run("alice", "receive", "--json", "--timeout", "5").stdout.splitlines()
    assert [json.loads(x)["id"] for x in got] == [sent["id"]]
    reply = json.loads(run("alice", "send", bob, "a reply", "--json").stdout)
    deadline = time.monotonic() + 30
    printed: list[dict[str, Any]] = []
    while not printed and time.monotonic() < deadline:
        out = run("bob", "receive", "--json", passphrase=wrong).stdout
        printed = [json.loads(x) for x in out.splitlines() if x.strip()]
        time.sleep(0.2)
    assert [(m["id"], m["text"], m["sender"]) for m in printed] == [(reply["id"], "a reply", alice)]
    assert set(printed[0]) >= {
        "id",
        "chat",
        "group",
        "sender",
        "text",
        "attachments",
        "sent_at_iso",
    }
    # taken once: a second `receive` prints nothing
    assert run("bob", "receive", "--json", passphrase=wrong).stdout == ""
    # commands that make or wipe the profile are refused while the daemon holds it
    refused = run("bob", "delete-account", "--yes", passphrase=wrong, check=False)
    assert refused.returncode == 1 and "daemon" in refused.stderr
    assert d.stop() == 0
    assert not d.socket.exists()
    # and alone again: the wrong passphrase is refused
    assert run("bob", "whoami", passphrase=wrong, check=False).returncode == 1


def test_bad_requests_get_json_rpc_errors_and_the_daemon_keeps_serving(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    _register(server, run, "bob")
    d = _daemon(run, tmp_path, "bob")
    c = d.rpc()

    def error(raw: bytes) -> dict[str, Any]:
        c.write(raw + b"\n")
        answer = c.read()
        assert "result" not in answer
        return dict(answer["error"])

    assert error(b"{not json")["code"] == -32700
    assert error(b"\xff\xfe")["code"] == -32700
    assert error(b"[]")["code"] == -32600
    assert error(b"42")["code"] == -32600
    assert error(b'{"jsonrpc": "1.0", "id": 1, "method": "whoami"}')["code"] == -32600
    assert error(b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "whoami"}')["code"] == -32600
    assert c.request("no.such.method")["error"]["code"] == -32601
    assert c.request("send", {"recipient": 5, "message": "x"})["error"]["code"] == -32602
    assert c.request("send", {"message": "x"})["error"]["code"] == -32602
    assert c.request("send", ["+14155550100", "x"])["error"]["code"] == -32602
    assert c.request("whoami", {"surprise": 1})["error"]["code"] == -32602
    assert (
        c.request("listMessages", {"chat": "+14155550100", "limit": 10**9})["error"]["code"]
        == -32602
    )
    refused = c.request("send", {"recipient": "+1", "message": "x"})["error"]
    assert refused["code"] == -32000 and refused["data"]["code"] == "client_error"
    assert "\n" not in refused["message"]
    # a notification (no id) gets no answer; a batch gets an array
    c.write(b'{"jsonrpc": "2.0", "method": "whoami"}\n')
    c.write(
        b'[{"jsonrpc": "2.0", "id": "a", "method": "version"}, {"jsonrpc": "2.0", "method": "x"}, 1]\n'
    )
    batch = json.loads(c.file.readline())
    assert [b.get("id") for b in batch] == ["a", None]
    assert batch[1]["error"]["code"] == -32600
    # a line over 1 MiB is refused and that connection closed; others carry on
    big = d.rpc()
    try:
        big.sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "send", "params": {"message": "')
        big.sock.sendall(b"x" * (2 << 20) + b'"}}\n')
        answer = big.read()
        assert answer["error"]["code"] == -32600
        assert big.file.readline() == b""
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed before it read everything: refused all the same
    big.close()
    assert c.call("whoami")["phone"]
    assert d.rpc().call("whoami") == c.call("whoami")
    assert d.proc.poll() is None
    log = d.log.read_text()
    assert "x" * 100 not in log


def test_socket_is_0600_a_second_daemon_is_refused_and_a_stale_socket_replaced(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    _register(server, run, "bob")
    d = _daemon(run, tmp_path, "bob")
    mode = d.socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    second = run("bob", "daemon", check=False)
    assert second.returncode == 1 and "already" in second.stderr
    assert d.rpc().call("whoami")["name"] == "bob"
    # killed, it leaves its socket file behind; the next daemon replaces it
    d.kill()
    assert d.socket.exists()
    again = _daemon(run, tmp_path, "bob")
    assert again.rpc().call("whoami")["name"] == "bob"
    # a second daemon on another socket path is refused too (one per profile)
    other = run("bob", "daemon", "--socket", str(tmp_path / "other.sock"), check=False)
    assert other.returncode == 1 and "already" in other.stderr
    assert again.stop() == 0


def test_daemon_killed_mid_queue_loses_nothing_and_stores_nothing_twice(
    cli: tuple[ServerProcess, Run], tmp_path: Path
) -> None:
    server, run = cli
    alice, bob = _register(server, run, "alice"), _register(server, run, "bob")
    n = 90  # the server lets an account look up 100 numbers at once

    async def queue() -> list[str]:
        app = App(Profile(tmp_path / "alice", PASSPHRASE))
        try:
            return [await app.send(bob, f"queued {i}", [], lambda _n, _s: None) for i in range(n)]
        finally:
            await app.close()

    ids = asyncio.run(queue())
    d = _daemon(run, tmp_path, "bob")
    c = d.rpc()
    c.call("subscribeReceive")
    got = [e for e in c.call("receive")["events"] if e["method"] == "receive"]
    if not got:
        c.wait_for("receive", lambda _p: True)
    d.kill()  # in the middle of the queue (or just after a batch)
    d = _daemon(run, tmp_path, "bob")
    c = d.rpc()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stored = [h["id"] for h in c.call("history", {"chat": alice})]
        if len(stored) >= n:
            break
        time.sleep(0.3)
    time.sleep(1)  # anything shown twice would be stored by now
    stored = [h["id"] for h in c.call("history", {"chat": alice})]
    assert sorted(stored) == sorted(ids)
    assert len(stored) == len(set(stored))
    assert d.stop() == 0
