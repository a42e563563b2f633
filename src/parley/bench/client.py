"""``python -m parley.bench client``: the client as people live in it, against a real
``parley-server`` (SQLite) on a free loopback port, everything in a temporary directory.

- ``receive_1000_s``: 1,000 messages queued for Bob by ten people while he is away
  (each ``send`` looks its recipient up in the directory, which the server limits to
  100 at once per account); from the moment
  his ``parley daemon`` answers on its socket until the 1,000th has been stored and
  notified (``receive`` notifications, or taken with ``receive``);
- ``send_p50_ms``: a ``send`` through Bob's daemon, the JSON-RPC round trip until
  ``{"id"}`` (the message encrypted, stored by the server, the ratchet committed);
- ``command_ms``: a standalone ``parley send`` (no daemon), wall time of the process
  minus the CPU time of the Argon2id it runs (timed inside that process, see
  ``_TIMED_CLI``), started as an installed ``parley`` starts: from Python's bytecode
  cache (see ``_child_env``). The command imports the client on a second thread while
  the Argon2id runs, so what is left is what the command adds to the Argon2id; and
  since the CPU time is subtracted, not the Argon2id's own wall time, any time it
  waited for a core (for those imports, or another process) counts as the command's;
  ``command_wall_ms`` is the whole process, the Argon2id included;
  ``command_no_bytecode_cache_ms`` the same with the environment's
  PYTHONDONTWRITEBYTECODE kept (measured only when it is set);
  ``command_daemon_ms`` the same command while the daemon runs;
- ``open_chat_ms``: with 100,000 messages stored, opening the profile (Argon2id
  excluded) and reading a chat's last 50 messages; ``open_1k_ms`` / ``open_100k_ms``
  show that opening does not grow with history.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parley.bench import peers as peer_servers
from parley.bench.server import _parley_cmd, _start_parley_node, _stop
from parley.client import rpc

PASSPHRASE = "bench passphrase"
BOB = "+14155550100"
SENDERS = 10  # who queue messages for Bob: the server lets one account look up 100 numbers at once


def _child_env(pycache: Path) -> dict[str, str]:
    """The environment of the ``parley`` processes: an installed package is
    byte-compiled when pip installs it, and Python loads its modules from that cache.
    An editable install under PYTHONDONTWRITEBYTECODE=1 (as in this project's
    sandbox) has no cache, and every command would first compile parley's ~45 modules
    from source (about 0.1 s). The cache goes to the run's temporary directory, not
    beside the sources, and fills during the registrations."""
    env = {**os.environ, "PARLEY_PASSPHRASE": PASSPHRASE, "PYTHONPYCACHEPREFIX": str(pycache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _cli(profile: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "parley.cli.main", "--profile", str(profile), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"parley {args[0]} failed: {result.stderr.strip()}")
    return result


def _register(profile: Path, phone: str, url: str, sms: Path, env: dict[str, str]) -> None:
    _cli(profile, "register", phone, "--server", url, env=env)
    code = [ln.split()[1] for ln in sms.read_text().splitlines() if ln.split()[0] == phone][-1]
    _cli(profile, "verify", code, "--name", profile.name, env=env)


def _argon2_s(runs: int = 3) -> float:
    """The profile's Argon2id, median of ``runs`` (what a standalone command pays once)."""
    from argon2.low_level import Type, hash_secret_raw

    from parley.client.store import ARGON2

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        hash_secret_raw(
            PASSPHRASE.encode(),
            b"0123456789abcdef",
            ARGON2["time_cost"],
            ARGON2["memory_cost"],
            ARGON2["parallelism"],
            32,
            Type.ID,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def _queue(profile: Path, to: str, n: int, log: Callable[[str], None]) -> None:
    from parley.client.app import App
    from parley.client.store import Profile

    app = App(Profile(profile, PASSPHRASE))
    try:
        for i in range(n):
            await app.send(to, f"queued message {i}", [], lambda _n, _s: None)
            if (i + 1) % 100 == 0:
                log(f"  queued {i + 1}/{n}")
    finally:
        await app.close()


class _Daemon:
    def __init__(self, profile: Path, log_path: Path, env: dict[str, str]) -> None:
        env = dict(env)
        env.pop(rpc.SOCKET_ENV, None)
        self.path = profile / rpc.SOCKET_NAME
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "parley.cli.main", "--profile", str(profile), "daemon"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    def connect(self, timeout: float = 60) -> rpc.Connection:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the daemon exited")
            conn = rpc.Connection.open(self.path)
            if conn is not None:
                return conn
            time.sleep(0.005)
        raise RuntimeError("the daemon did not answer")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _answer(conn: rpc.Connection, rid: int, seen: list[dict[str, Any]]) -> Any:
    while True:
        message = conn.read(120)
        if message is None:
            raise RuntimeError("no answer from the daemon")
        if message.get("id") == rid and "method" not in message:
            if "error" in message:
                raise RuntimeError(f"daemon error: {message['error']}")
            return message["result"]
        seen.append(message)


def _receive_through_daemon(bob: Path, root: Path, n: int, env: dict[str, str]) -> float:
    daemon = _Daemon(bob, root / "daemon.log", env)
    try:
        conn = daemon.connect()
        start = time.perf_counter()
        seen: list[dict[str, Any]] = []
        _answer(conn, conn.send("subscribeReceive"), seen)
        backlog = _answer(conn, conn.send("receive"), seen)["events"]
        count = sum(1 for e in backlog if e["method"] == "receive")
        count += sum(1 for e in seen if e.get("method") == "receive")
        while count < n:
            message = conn.read(120)
            if message is None:
                raise RuntimeError(f"only {count} of {n} messages arrived")
            if message.get("method") == "receive":
                count += 1
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed
    finally:
        daemon.stop()


def _sends_through_daemon(
    bob: Path, root: Path, to: str, n: int, env: dict[str, str]
) -> list[float]:
    daemon = _Daemon(bob, root / "daemon.log", env)
    try:
        conn = daemon.connect()
        seen: list[dict[str, Any]] = []
        for i in range(5):  # warm: the session exists, the contact is known
            _answer(conn, conn.send("send", {"recipient": to, "message": f"warm {i}"}), seen)
        times = []
        for i in range(n):
            start = time.perf_counter()
            result = _answer(
                conn, conn.send("send", {"recipient": to, "message": f"timed {i}"}), seen
            )
            times.append(time.perf_counter() - start)
            assert result["id"]
        conn.close()
        return times
    finally:
        daemon.stop()


# ``parley`` as ``python -m parley.cli.main`` runs it, with the Argon2id it runs timed
# where it runs (the CPU clock of its thread: Argon2id runs in C on the calling thread)
# and written to $PARLEY_BENCH_ARGON2: the figure subtracted is the one this process
# paid. (One measured apart, in another process at another moment, drifted by ±0.1 s on
# a shared 2-core machine: more than what is measured.)
_TIMED_CLI = """
import os, runpy, time
import argon2.low_level as low
derive = low.hash_secret_raw
def timed(*args, **kwargs):
    start = time.thread_time()
    try:
        return derive(*args, **kwargs)
    finally:
        with open(os.environ["PARLEY_BENCH_ARGON2"], "a") as f:
            f.write(f"{time.thread_time() - start}\\n")
low.hash_secret_raw = timed
runpy.run_module("parley.cli.main", run_name="__main__", alter_sys=True)
"""


def _command_ms(
    profile: Path, to: str, runs: int, env: dict[str, str]
) -> tuple[float, float, float]:
    """(median wall minus the Argon2id's CPU time in the same run, median Argon2id CPU
    time, median wall), in ms."""
    walls, derives = [], []
    timing = profile / "argon2.times"
    for i in range(runs):
        timing.write_text("")
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", _TIMED_CLI, "--profile", str(profile), "send", to, f"alone {i}"],
            capture_output=True,
            text=True,
            env={**env, "PARLEY_BENCH_ARGON2": str(timing)},
            timeout=300,
            check=False,
        )
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"parley send failed: {result.stderr.strip()}")
        derive = sum(float(x) for x in timing.read_text().split())
        walls.append(wall)
        derives.append(derive)
    beyond = statistics.median(w - d for w, d in zip(walls, derives, strict=True))
    return beyond * 1000, statistics.median(derives) * 1000, statistics.median(walls) * 1000


def _command_daemon_ms(bob: Path, root: Path, to: str, runs: int, env: dict[str, str]) -> float:
    daemon = _Daemon(bob, root / "daemon.log", env)
    try:
        daemon.connect().close()
        walls = []
        for i in range(runs):
            start = time.perf_counter()
            _cli(bob, "send", to, f"through the daemon {i}", env=env)
            walls.append(time.perf_counter() - start)
        return statistics.median(walls) * 1000
    finally:
        daemon.stop()


def _fill(profile: Path, chat: str, total: int, log: Callable[[str], None]) -> None:
    """Store messages directly until the profile holds ``total`` (batches of 5,000)."""
    from parley.client.records import Message
    from parley.client.store import Profile

    p = Profile(profile, PASSPHRASE)
    with p.locked():
        state = p.load()
        have = sum(1 for _ in p.all_messages())
        now = int(time.time() * 1000)
        for start in range(have, total, 5000):
            for i in range(start, min(start + 5000, total)):
                p.add_message(
                    Message(
                        id=f"filler-{i}",
                        chat=chat,
                        group=None,
                        sender=chat,
                        sender_name="alice",
                        text=f"stored message number {i} with a few words to index",
                        sent_at=now + i,
                        outgoing=False,
                    ),
                    unread=False,
                )
            p.save(state)
        log(f"  {total} messages stored")
    p.close()


def _open_chat(profile: Path, chat: str, runs: int = 5) -> tuple[float, float]:
    """(open ms without Argon2id, last-50 read ms), medians of in-process runs; the
    Argon2id inside each open is timed where it runs and taken out."""
    from parley.client.core import Client
    from parley.client.store import Profile

    class Timed(Profile):
        derive_s = 0.0

        def _derive(self, salt: bytes, params: dict[str, int]) -> bytes:
            start = time.perf_counter()
            try:
                return super()._derive(salt, params)
            finally:
                self.derive_s += time.perf_counter() - start

    opens, reads = [], []
    for _ in range(runs):

        async def once() -> tuple[float, float]:
            start = time.perf_counter()
            timed = Timed(profile, PASSPHRASE)
            client = Client(timed)
            await client.open()
            opened = time.perf_counter() - start - timed.derive_s
            start = time.perf_counter()
            got = client.messages(chat, 50)
            read = time.perf_counter() - start
            assert len(got) == 50
            await client.close()
            return opened, read

        opened, read = asyncio.run(once())
        opens.append(opened)
        reads.append(read)
    return statistics.median(opens) * 1000, statistics.median(reads) * 1000


def run(quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    n_senders = 2 if quick else SENDERS
    n_queue = 100 * n_senders
    n_sends = 20 if quick else 50
    n_stored = 10_000 if quick else 100_000
    root = Path(tempfile.mkdtemp(prefix="parley-bench-client-"))
    port, sms = peer_servers.free_port(), root / "sms.txt"
    server = _start_parley_node(
        _parley_cmd(root / "data", port, sms, []), root / "server.log", port
    )
    url = f"http://127.0.0.1:{port}"
    env = _child_env(root / "pycache")
    try:
        bob = root / "bob"
        senders = [(root / f"sender{i}", f"+1415555{i + 1:04d}") for i in range(n_senders)]
        log(f"registering Bob and {n_senders} people who write to him")
        _register(bob, BOB, url, sms, env)
        for profile, phone in senders:
            _register(profile, phone, url, sms, env)
        argon2_s = _argon2_s()
        log(f"queueing {n_queue} messages for Bob")
        for profile, _phone in senders:
            asyncio.run(_queue(profile, BOB, n_queue // n_senders, log))
        alice_phone, carol = senders[0][1], senders[-1][0]
        log("receiving them through Bob's daemon")
        receive_s = _receive_through_daemon(bob, root, n_queue, env)
        log(f"  {receive_s:.2f} s")
        log(f"{n_sends} sends through the daemon")
        sends = _sends_through_daemon(bob, root, alice_phone, n_sends, env)
        log("standalone commands")
        command_ms, command_argon2_ms, command_wall_ms = _command_ms(carol, BOB, 7, env)
        no_cache_ms = None
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            as_set = {**os.environ, "PARLEY_PASSPHRASE": PASSPHRASE}
            no_cache_ms = round(_command_ms(carol, BOB, 7, as_set)[0])
        command_daemon_ms = _command_daemon_ms(bob, root, alice_phone, 5, env)
        log("opening a chat: 1,000 messages, then 100,000")
        _fill(bob, alice_phone, 1000, log)
        open_1k, read_1k = _open_chat(bob, alice_phone)
        _fill(bob, alice_phone, n_stored, log)
        open_big, read_big = _open_chat(bob, alice_phone)
        return {
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "load_average_1m": round(os.getloadavg()[0], 2),
            },
            "receive_1000_s": round(receive_s * 1000 / n_queue, 3),
            "receive_messages": n_queue,
            "send_p50_ms": round(statistics.median(sends) * 1000, 1),
            "send_p90_ms": round(sorted(sends)[int(len(sends) * 0.9)] * 1000, 1),
            "command_ms": round(command_ms),
            "command_no_bytecode_cache_ms": no_cache_ms,
            "command_wall_ms": round(command_wall_ms),
            "command_daemon_ms": round(command_daemon_ms),
            "argon2id_ms": round(argon2_s * 1000),
            "command_argon2id_ms": round(command_argon2_ms),
            "open_chat_ms": round(open_big + read_big, 1),
            "open_1k_ms": round(open_1k, 1),
            "open_100k_ms": round(open_big, 1),
            "last_50_1k_ms": round(read_1k, 1),
            "last_50_100k_ms": round(read_big, 1),
            "stored_messages": n_stored,
        }
    finally:
        _stop([server])
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.stdout.write(json.dumps(run(log=lambda s: print(s, file=sys.stderr))) + "\n")
