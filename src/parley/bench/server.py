"""Server benchmark: Parley side by side with XMPP servers, one workload, one generator design.

``python -m parley.bench server --json`` measures ``parley-server`` alone (on
SQLite, or ``--database-url``). ``--peers prosody,ejabberd`` adds each named
peer whose Debian package is installed (a peer that is not installed is
reported as ``{"skipped": "reason"}``; nothing is installed by the
benchmark) and also the 2-node Parley cluster; ``--cluster`` asks for the
cluster without peers. ``--quick`` shortens every window (a smoke run).

Every server gets the same workload, from the same generator design
(``parley.bench.load``: raw asyncio clients in ``--generators`` separate
processes, 2 by default, each with its own share of the pairs; a raw
websocket client for Parley, ``parley.bench.xmpp`` for XMPP):

- 100 accounts the generator creates, as 50 pairs (sender, receiver), each
  on its own connection; 200-byte message bodies; loopback only.
- ``closed``: each pair keeps 10 messages in flight (sent and not yet
  received); 3 s warm-up, then a 20 s measuring window (quick: 1 s and 5 s).
- ``rate_2k`` and ``rate_10k``: 2,000 and 10,000 messages/s offered, round
  robin over the pairs; 2 s warm-up, 10 s window (quick: 1 s, 3 s). Latency
  is send-to-receive on one monotonic clock.
- After each phase the generator waits for everything sent to arrive (at
  most 30 s after ``closed``, 60 s after a rate phase, quick: 20 s; or 5 s
  without progress), so an overloaded server's backlog does not spill into
  the next phase. Above a server's capacity an offered rate builds a queue
  for the whole window, so its latencies measure that queue. A server that
  closes sockets under that load (Parley closes one with 1011 when nothing
  arrives within 20 s of a keepalive ping) shows it in ``connections_lost``
  and ``close_codes`` in ``phases``, and ``delivered_fraction_*`` drops.

Each server is configured by the benchmark in a temporary directory, on
free loopback ports, without traffic shaping or rate limits (see
``parley.bench.peers``); Parley runs with its registration limit raised and
its per-device send limit lifted (``--sends-per-device-second``): its
default, bursts of 1,000 and then 200/s, caps each sender at about 243/s
over a 23 s closed phase, 12,200/s for 50 pairs, and so would measure the
limit (429s and their re-sends) rather than the server.

Keys per server (the figures of the ``closed`` phase unless named):

- ``delivered_per_s``, ``p50_ms``, ``p99_ms``: closed loop;
- ``p50_ms_2k``, ``p99_ms_2k``, ``p50_ms_10k``, ``p99_ms_10k``: latency of
  the messages sent in the window at that offered rate (delivered ones; see
  ``delivered_fraction_*``), with ``offered_per_s_*`` (what the generator
  actually sent) and ``delivered_per_s_*`` (what arrived in the window);
- ``server_cpu_pct``, ``generator_cpu_pct``: CPU of the server's process
  tree and of the generator processes over the closed window, in percent of
  one core (200 = both cores of a 2-core machine); ``db_cpu_pct`` for the
  cluster (PostgreSQL and Redis processes);
- ``peak_rss_mb``: peak resident memory of the server's process tree
  (psutil, sampled every 100 ms from start to stop; the cluster sums both
  nodes; PostgreSQL and Redis are not included);
- ``outside_cpu_pct``, ``contaminated``, ``retries``: the machine's total
  CPU is sampled over each window; CPU used by anything other than the
  server, its database, the generator and this orchestrator above 15% of
  the machine marks the phase contaminated (``outside_top_cpu_pct`` names
  the busiest outside processes alive at both ends of the window), and it
  is run once more, after waiting up to 60 s for the machine to calm down:
  the reported figures are the second run's, ``retries`` keeps the first,
  and ``contaminated`` says whether any reported phase still was (a phase
  that lost connections is not retried: the retry would run on fewer
  pairs; it says ``retry_skipped``);
- ``errors`` (sends the server refused), ``phases`` (per-phase detail, with
  ``undelivered``, ``unsendable`` and ``connections_lost`` and the close codes).

Top level: ``parley``, each peer, ``parley_cluster`` (when asked for),
``ratio`` (``parley.delivered_per_s / peer.delivered_per_s``), ``machine``.

``parley_cluster``: two ``parley-server`` nodes sharing one ``--data-dir``,
on a fresh PostgreSQL database (created, then dropped) and an empty Redis
database (flushed after), each pair's sender on node 1 and receiver on node
2. If a node refuses to start (e.g. it lacks ``--redis-url``), the entry is
``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import os
import platform
import queue
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import psutil

from parley.bench import peers as peer_servers

PAIRS = 50
IN_FLIGHT = 10
RATES = {"rate_2k": 2000.0, "rate_10k": 10000.0}
CONTAMINATION_PCT = 15.0
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS = ("127.0.0.1", 6379)


@dataclass
class Windows:
    closed_warm: float
    closed: float
    rate_warm: float
    rate: float
    drain: float


FULL = Windows(3.0, 20.0, 2.0, 10.0, 60.0)
QUICK = Windows(1.0, 5.0, 1.0, 3.0, 20.0)


# --- servers under test -----------------------------------------------------------------


@dataclass
class Target:
    """A running server: its processes, and how the generator reaches it."""

    protocol: str
    roots: list[psutil.Process]
    generator_args: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    database: Callable[[], list[psutil.Process]] = list


def _parley_cmd(data: Path, port: int, sms: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "parley.cli.server",
        "--data-dir",
        str(data),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--sms",
        f"file:{sms}",
        "--registrations-per-ip-hour",
        "10000000",
        "--sends-per-device-second",
        "1000000",
        "--log-level",
        "warning",
        *extra,
    ]


def _start_parley_node(cmd: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out)
    url = f"http://127.0.0.1:{port}/v1/health"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"parley-server exited with {proc.returncode}: {peer_servers.tail(log)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"parley-server not healthy after 60 s: {peer_servers.tail(log)}")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


@contextlib.contextmanager
def parley_target(root: Path, *, database_url: str | None) -> Iterator[Target]:
    port, sms = peer_servers.free_port(), root / "sms.txt"
    extra = ["--database-url", database_url] if database_url else []
    proc = _start_parley_node(_parley_cmd(root / "data", port, sms, extra), root / "log", port)
    try:
        url = f"http://127.0.0.1:{port}"
        yield Target(
            "parley",
            [psutil.Process(proc.pid)],
            ["parley", "--url", url, "--sms", str(sms)],
            {"database": "postgresql" if database_url else "sqlite"},
        )
    finally:
        _stop([proc])


def _redis(*commands: list[str]) -> list[bytes]:
    """A few Redis commands over RESP (one connection, in order); their one-line replies."""
    with socket.create_connection(REDIS, timeout=5) as s:
        payload = b""
        for cmd in commands:
            payload += f"*{len(cmd)}\r\n".encode()
            for arg in cmd:
                payload += f"${len(arg.encode())}\r\n{arg}\r\n".encode()
        s.sendall(payload)
        data = b""
        while data.count(b"\r\n") < len(commands):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n")[: len(commands)]


def _pick_redis_db() -> int:
    for db in range(15, 0, -1):
        replies = _redis(["SELECT", str(db)], ["DBSIZE"])
        if len(replies) == 2 and replies[1] == b":0":
            return db
    raise RuntimeError("no empty Redis database (1..15) to use")


async def _postgres(statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(POSTGRES + "/postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _database_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in ("postgres", "redis-server"):
            found.append(p)
    return found


@contextlib.contextmanager
def parley_cluster_target(root: Path) -> Iterator[Target]:
    db_name = "parley_bench_" + secrets.token_hex(4)
    asyncio.run(_postgres(f'CREATE DATABASE "{db_name}"'))
    procs: list[subprocess.Popen[bytes]] = []
    redis_db: int | None = None
    try:
        redis_db = _pick_redis_db()
        sms, data = root / "sms.txt", root / "data"
        shared = [
            "--database-url",
            f"{POSTGRES}/{db_name}",
            "--redis-url",
            f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}",
        ]
        ports = [peer_servers.free_port(), peer_servers.free_port()]
        for i, port in enumerate(ports):  # one at a time: the first one migrates
            procs.append(
                _start_parley_node(
                    _parley_cmd(data, port, sms, shared), root / f"node{i + 1}.log", port
                )
            )
        yield Target(
            "parley",
            [psutil.Process(p.pid) for p in procs],
            [
                "parley",
                "--url",
                f"http://127.0.0.1:{ports[0]}",
                "--receiver-url",
                f"http://127.0.0.1:{ports[1]}",
                "--sms",
                str(sms),
            ],
            {"database": "postgresql", "nodes": 2, "redis_db": redis_db},
            database=_database_processes,
        )
    finally:
        _stop(procs)
        with contextlib.suppress(Exception):
            asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        if redis_db is not None:
            with contextlib.suppress(Exception):
                _redis(["SELECT", str(redis_db)], ["FLUSHDB"])


@contextlib.contextmanager
def peer_target(name: str, root: Path) -> Iterator[Target]:
    daemon = peer_servers.STARTERS[name](root)
    try:
        yield Target(
            "xmpp",
            [psutil.Process(daemon.proc.pid)],
            ["xmpp", "--host", "127.0.0.1", "--port", str(daemon.port)],
            {"version": daemon.version, "runs_as": daemon.user},
        )
    finally:
        daemon.stop()


# --- measurement ----------------------------------------------------------------------------


def _tree(roots: list[psutil.Process]) -> list[psutil.Process]:
    procs = []
    for root in roots:
        with contextlib.suppress(psutil.Error):
            procs += [root, *root.children(recursive=True)]
    return procs


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _machine_busy() -> float:
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    return float(busy - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0))


class RssWatcher:
    def __init__(self, roots: list[psutil.Process]) -> None:
        self.roots, self.peak = roots, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = 0
            for p in _tree(self.roots):
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            self.peak = max(self.peak, rss)
            self._stop.wait(0.1)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak / 2**20, 1)


class Generator:
    """One load-generator process and a thread that reads its answers."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._err: TextIO = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parley.bench.load", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the load generator did not answer in {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError("the load generator exited: " + peer_servers.tail(self.log))
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def tell(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.tell({"cmd": "quit"})
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._err.close()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _snapshot(target: Target, gens: list[Generator]) -> dict[str, Any]:
    everyone: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info["cpu_times"]
        if t is not None:
            everyone[p.pid] = (p.info["name"] or "?", t.user + t.system)
    server, generator = _tree(target.roots), _tree([g.ps for g in gens])
    database = target.database()
    return {
        "wall": time.monotonic(),
        "machine": _machine_busy(),
        "server": _cpu(server),
        "generator": _cpu(generator),
        "database": _cpu(database),
        "self": _cpu([psutil.Process()]),
        "ours": {p.pid for p in [*server, *generator, *database]} | {os.getpid()},
        "everyone": everyone,
    }


def _outside_top(first: dict[str, Any], last: dict[str, Any], wall: float) -> dict[str, float]:
    """The processes outside the benchmark that used the most CPU in the window (% of a core)."""
    by_name: dict[str, float] = {}
    for pid, (name, cpu) in last["everyone"].items():
        if pid in last["ours"] or pid in first["ours"]:
            continue
        used = cpu - first["everyone"].get(pid, (name, 0.0))[1]
        by_name[name] = by_name.get(name, 0.0) + used
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:3]
    return {name: round(100 * used / wall, 1) for name, used in top if used / wall >= 0.01}


def _wait_for_quiet(limit: float = 60.0) -> float:
    """Before a retry: wait (at most ``limit`` s) for the machine, with the server idle, to
    drop below the contamination threshold; returns the last reading (% of the machine)."""
    deadline = time.monotonic() + limit
    busy = psutil.cpu_percent(interval=2.0)
    while busy > CONTAMINATION_PCT and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=2.0)
    return float(busy)


def _phase(
    target: Target, gens: list[Generator], cmd: dict[str, Any], warm: float, window: float
) -> dict[str, Any]:
    start = time.monotonic() + 0.5
    full = {**cmd, "start": start, "warm": start + warm, "end": start + warm + window}
    for g in gens:
        g.tell(full)
    time.sleep(max(0.0, full["warm"] - time.monotonic()))
    first = _snapshot(target, gens)
    time.sleep(max(0.0, full["end"] - time.monotonic()))
    last = _snapshot(target, gens)
    answers = [g.answer(timeout=float(cmd.get("drain", 10.0)) + 60) for g in gens]
    wall = last["wall"] - first["wall"]
    d = {k: last[k] - first[k] for k in last if isinstance(last[k], float)}
    cores = psutil.cpu_count() or 1
    outside = d["machine"] - d["server"] - d["generator"] - d["database"] - d["self"]
    lat = [x for a in answers for x in a["latencies_ms"]]
    seconds = answers[0]["seconds"]
    out: dict[str, Any] = {
        "seconds": seconds,
        "delivered_per_s": round(sum(a["delivered_in_window"] for a in answers) / seconds, 1),
        "p50_ms": _pct(lat, 0.5),
        "p99_ms": _pct(lat, 0.99),
        "errors": sum(a["errors"] for a in answers),
        "undelivered": sum(a["undelivered"] for a in answers),
        "unsendable": sum(a["unsendable"] for a in answers),
        "connections_lost": sum(a["connections_lost"] for a in answers),
        "close_codes": sorted({c for a in answers for c in a["close_codes"]}, key=str),
        "stale": sum(a["stale"] for a in answers),
        "server_cpu_pct": round(100 * d["server"] / wall, 1),
        "generator_cpu_pct": round(100 * d["generator"] / wall, 1),
        "machine_cpu_pct": round(100 * d["machine"] / (wall * cores), 1),
        "outside_cpu_pct": round(max(0.0, 100 * outside / (wall * cores)), 1),
    }
    if target.database is not list:
        out["db_cpu_pct"] = round(100 * d["database"] / wall, 1)
    if cmd["cmd"] == "rate":
        sent = sum(a["sent_in_window"] for a in answers)
        out["offered_per_s"] = round(sent / seconds, 1)
        out["delivered_fraction"] = round(
            sum(a["delivered_of_window"] for a in answers) / sent if sent else 0.0, 4
        )
    out["contaminated"] = out["outside_cpu_pct"] > CONTAMINATION_PCT
    if out["contaminated"]:
        out["outside_top_cpu_pct"] = _outside_top(first, last, wall)
    return out


def _brief(phase: dict[str, Any]) -> str:
    keys = [
        *("delivered_per_s", "offered_per_s", "p50_ms", "p99_ms", "server_cpu_pct"),
        *("generator_cpu_pct", "outside_cpu_pct", "undelivered", "stale", "connections_lost"),
    ]
    return ", ".join(f"{k}={phase[k]}" for k in keys if k in phase)


def _measure(
    target: Target, root: Path, windows: Windows, generators: int, log: Callable[[str], None]
) -> dict[str, Any]:
    rss = RssWatcher(target.roots)
    gens: list[Generator] = []
    try:
        share = [
            PAIRS // generators + (1 if i < PAIRS % generators else 0) for i in range(generators)
        ]
        first = 0
        for i, n in enumerate(share):
            gens.append(
                Generator(
                    [*target.generator_args, "--first", str(first), "--pairs", str(n)],
                    root / f"generator{i}.log",
                )
            )
            first += n
        for g in gens:
            g.answer(timeout=300)
        plan = [
            (
                "closed",
                {"cmd": "closed", "in_flight": IN_FLIGHT, "drain": min(30.0, windows.drain)},
                windows.closed_warm,
                windows.closed,
            ),
            *[
                (
                    name,
                    {"cmd": "rate", "rate": rate / generators, "drain": windows.drain},
                    windows.rate_warm,
                    windows.rate,
                )
                for name, rate in RATES.items()
            ],
        ]
        phases: dict[str, Any] = {}
        retries: list[dict[str, Any]] = []
        for name, cmd, warm, window in plan:
            result = _phase(target, gens, cmd, warm, window)
            log(f"  {name}: {_brief(result)}")
            if result["contaminated"] and result["connections_lost"]:
                # Lost connections stay lost: a retry would measure fewer pairs.
                result["retry_skipped"] = "connections were lost"
            elif result["contaminated"]:
                retries.append({"phase": name, **result})
                retries[-1]["machine_cpu_pct_before_retry"] = _wait_for_quiet()
                result = _phase(target, gens, cmd, warm, window)
                log(f"  {name} (retry): {_brief(result)}")
            phases[name] = result
    finally:
        for g in gens:
            g.stop()
        peak = rss.stop()
    closed = phases["closed"]
    out: dict[str, Any] = {
        "delivered_per_s": closed["delivered_per_s"],
        "p50_ms": closed["p50_ms"],
        "p99_ms": closed["p99_ms"],
    }
    for name, suffix in (("rate_2k", "2k"), ("rate_10k", "10k")):
        p = phases[name]
        out[f"p50_ms_{suffix}"] = p["p50_ms"]
        out[f"p99_ms_{suffix}"] = p["p99_ms"]
        out[f"offered_per_s_{suffix}"] = p["offered_per_s"]
        out[f"delivered_per_s_{suffix}"] = p["delivered_per_s"]
        out[f"delivered_fraction_{suffix}"] = p["delivered_fraction"]
    out["server_cpu_pct"] = closed["server_cpu_pct"]
    out["generator_cpu_pct"] = closed["generator_cpu_pct"]
    if "db_cpu_pct" in closed:
        out["db_cpu_pct"] = closed["db_cpu_pct"]
    out["peak_rss_mb"] = peak
    out["outside_cpu_pct"] = closed["outside_cpu_pct"]
    out["contaminated"] = any(p["contaminated"] for p in phases.values())
    out["retries"] = retries
    out["errors"] = sum(p["errors"] for p in phases.values())
    out["phases"] = phases
    return out


def _bench(
    name: str,
    make: Callable[[Path], contextlib.AbstractContextManager[Target]],
    tmp: Path,
    windows: Windows,
    generators: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    root = tmp / name
    root.mkdir()
    log(f"{name}: starting")
    try:
        with make(root) as target:
            result = _measure(target, root, windows, generators, log)
            return {**result, **target.info}
    except LookupError as exc:
        return {"skipped": str(exc)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _machine(generators: int) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "parley_commit": commit or None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.date.today().isoformat(),
        "generator_processes": generators,
        "pairs": PAIRS,
        "in_flight_per_pair": IN_FLIGHT,
        "body_bytes": 200,
    }


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(
    *,
    quick: bool = False,
    database_url: str | None = None,
    peers: list[str] | None = None,
    cluster: bool = False,
    generators: int = 2,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    windows = QUICK if quick else FULL
    generators = max(1, min(generators, PAIRS))
    say = log or (lambda _msg: None)
    peers = peers or []
    for name in peers:
        if name not in peer_servers.STARTERS:
            raise ValueError(f"unknown peer {name!r} (known: {', '.join(peer_servers.STARTERS)})")
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so the servers stop, the temporary
        # directory goes and the cluster's database is dropped.
        signal.signal(signal.SIGTERM, _interrupted)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)  # the peers run as their own users
        result["parley"] = _bench(
            "parley",
            functools.partial(parley_target, database_url=database_url),
            tmp,
            windows,
            generators,
            say,
        )
        for name in peers:
            result[name] = _bench(
                name, functools.partial(peer_target, name), tmp, windows, generators, say
            )
        if cluster or peers:
            result["parley_cluster"] = _bench(
                "parley_cluster", parley_cluster_target, tmp, windows, generators, say
            )
    if peers:
        mine = result["parley"].get("delivered_per_s")
        result["ratio"] = {
            name: (
                round(mine / result[name]["delivered_per_s"], 3)
                if mine and result[name].get("delivered_per_s")
                else None
            )
            for name in peers
        }
    result["machine"] = _machine(generators)
    return result
