"""Server benchmark: a real ``parley-server`` on SQLite, loaded from a separate process.

Prints delivered messages/s (durably stored, pushed and acknowledged), p50/p99
send-to-receive latency for 1:1 traffic (as fast as it goes, and paced at
1,000 messages/s) and for a 100-member group, the number of websocket
connections held, and the server's peak RSS.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    *, quick: bool = False, connections: int = 1000, database_url: str | None = None
) -> dict[str, Any]:
    if quick:
        connections = min(connections, 150)
    pairs, per_sender, group_messages = (50, 100, 20) if quick else (50, 400, 100)
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        root = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "parley.cli.server",
            "--data-dir",
            str(root / "data"),
            "--port",
            str(port),
            "--sms",
            f"file:{root / 'sms.txt'}",
            "--registrations-per-ip-hour",
            "10000000",
        ]
        if database_url:
            cmd += ["--database-url", database_url]
        log = (root / "server.log").open("wb")
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            proc = psutil.Process(server.pid)
            peak = [0]
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], proc.memory_info().rss)
                    except psutil.Error:
                        return
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            load = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "parley.bench.load",
                    url,
                    str(root / "sms.txt"),
                    str(connections),
                    str(pairs),
                    str(per_sender),
                    str(group_messages),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            stop.set()
            watcher.join()
            if load.returncode != 0:
                raise RuntimeError("load generator failed: " + load.stderr[-2000:])
            result: dict[str, Any] = json.loads(load.stdout.strip().splitlines()[-1])
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    result["peak_rss_mb"] = round(peak[0] / 2**20, 1)
    result["database"] = "postgresql" if database_url else "sqlite"
    result["targets"] = {
        "one_to_one_delivered_per_s": 5000,
        "p99_ms_at_1000_per_s": 100,
        "connections": 1000,
        "rss_mb": 500,
    }
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    return result
