"""The processes of a test cluster: a private Redis and parley-server nodes sharing
one PostgreSQL database, one data directory and one SMS file."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.server import ServerProcess, free_port

# -- Redis ---------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A private ``redis-server`` process: loopback only, no RDB or AOF files."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        """Start (or start again, on the same port) and wait until it answers PING."""
        assert not self.running, "redis-server is already running"
        self.root.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = open(self.root / f"redis-{self.starts}.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited: {(self.root / f'redis-{self.starts}.log').read_text()}"
                )
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it; the port is free for ``start`` once this returns."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


# -- nodes ---------------------------------------------------------------------------------------


@dataclass
class Node(ServerProcess):
    """One node: its own port and logs (under ``root``), the cluster's data directory
    and SMS file (under ``shared``)."""

    shared: Path = Path()
    name: str = ""

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def data_dir(self) -> Path:
        return self.shared / "data"

    @property
    def sms_file(self) -> Path:
        return self.shared / "sms.txt"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/websocket"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        """SIGTERM, wait for a clean exit, start again on the same port."""
        assert self.stop() == 0, f"node {self.name} did not exit cleanly"
        self.start()

    def log_tail(self, chars: int = 3000) -> str:
        out = []
        for path in self.log_files:
            text = path.read_text(errors="replace")[-chars:]
            out.append(f"--- node {self.name}: {path.name} (last {chars} characters)\n{text}")
        return "\n".join(out)


@dataclass
class Cluster:
    root: Path
    database_url: str
    redis: RedisServer
    nodes: list[Node]

    @property
    def a(self) -> Node:
        return self.nodes[0]

    @property
    def b(self) -> Node:
        return self.nodes[1]

    @property
    def c(self) -> Node:
        return self.nodes[2]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def sms_file(self) -> Path:
        return self.root / "sms.txt"

    async def code_for(self, phone: str) -> str:
        """The latest code any node sent to ``phone`` (they share the SMS file)."""
        return await self.nodes[0].code_for(phone)

    def start(self) -> None:
        """One after another: the first migrates the fresh database (two cores: starting
        the others together is no faster)."""
        self.nodes[0].start()
        for n in self.nodes[1:]:
            n.start()

    def stop(self) -> None:
        """SIGTERM every live node at once, then wait (SIGKILL after 30 s)."""
        live = [n for n in self.nodes if n.alive]
        for n in live:
            assert n.proc is not None
            n.proc.send_signal(signal.SIGTERM)
        for n in live:
            assert n.proc is not None
            try:
                n.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait(timeout=30)
