"""Start the real ``parley-server`` process on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

POSTGRES_ADMIN_URL = os.environ.get(
    "PARLEY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    root: Path
    database_url: str
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def sms_file(self) -> Path:
        return self.root / "sms.txt"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_files(self) -> list[Path]:
        return sorted(self.root.glob("server-*.log"))

    def start(self) -> None:
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "parley.cli.server",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--database-url",
                self.database_url,
                "--sms",
                f"file:{self.sms_file}",
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited: {(self.root / f'server-{self.starts}.log').read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            log = (self.root / f"server-{self.starts}.log").read_text(errors="replace")
            raise AssertionError(f"the server did not stop; its log ends:\n{log[-6000:]}") from None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    async def code_for(self, phone: str) -> str:
        """The latest code the file SMS backend wrote for ``phone``."""
        for _ in range(100):
            if self.sms_file.exists():
                lines = [ln.split() for ln in self.sms_file.read_text().splitlines()]
                codes = [c for p, c in lines if p == phone]
                if codes:
                    return codes[-1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no SMS for {phone}")


def postgres_available() -> bool:
    try:
        out = subprocess.run(
            ["psql", POSTGRES_ADMIN_URL, "-tAc", "select 1"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database for one server, dropped afterwards."""
    name = "parley_test_" + uuid.uuid4().hex[:12]
    subprocess.run(
        ["psql", POSTGRES_ADMIN_URL, "-qc", f"create database {name}"],
        check=True,
        capture_output=True,
    )
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        subprocess.run(
            ["psql", POSTGRES_ADMIN_URL, "-qc", f"drop database if exists {name} with (force)"],
            check=False,
            capture_output=True,
        )


def database_for(kind: str, root: Path, stack: contextlib.ExitStack) -> str:
    """A database URL for one test server: a file under ``root`` for ``sqlite``, a fresh
    PostgreSQL database (dropped when ``stack`` closes) for ``postgresql``, or a skip
    saying why when no PostgreSQL server can be reached."""
    if kind == "postgresql":
        if not postgres_available():
            import pytest

            pytest.skip("PostgreSQL is not reachable at PARLEY_TEST_POSTGRES; .ci/run starts it")
        return stack.enter_context(postgres_database())
    return f"sqlite:///{root / 'data' / 'parley.db'}"
