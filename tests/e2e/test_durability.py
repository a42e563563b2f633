"""Nothing lost: kill -9 under load, SIGTERM, expiry and retention, through the real server."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

from parley.client.messenger import Messenger
from parley.errors import ServerError

from .conftest import register
from .server import ServerProcess


async def _establish(alice: Messenger, bob: Messenger) -> None:
    await alice.send_text(bob.account_id, "hello")
    async with bob.api.websocket() as ws:
        assert [m.content.text for m in await bob.receive(ws)] == ["hello"]


async def _send_all(
    alice: Messenger, bob: Messenger, texts: list[str], acked: set[str], workers: int = 4
) -> set[str]:
    """Send texts concurrently; return those that failed (no acknowledgement)."""
    queue = list(texts)
    failed: set[str] = set()

    async def worker() -> None:
        while queue:
            text = queue.pop(0)
            try:
                await alice.send_text(bob.account_id, text, client_id=text)
                acked.add(text)
            except ServerError:
                failed.add(text)

    await asyncio.gather(*[worker() for _ in range(workers)])
    return failed


async def _drain(bob: Messenger) -> dict[str, set[str]]:
    """Every message id bob is delivered, by text (app-level dedupe is by message id)."""
    seen: dict[str, set[str]] = {}
    async with bob.api.websocket() as ws:
        for m in await bob.receive(ws, timeout=20):
            seen.setdefault(m.content.text, set()).add(m.id)
    return seen


async def test_kill_9_under_load_loses_and_duplicates_nothing_acknowledged(
    server: ServerProcess,
) -> None:
    alice, bob = await register(server), await register(server)
    await _establish(alice, bob)
    texts = [f"load-{i}" for i in range(400)]
    acked: set[str] = set()
    sender = asyncio.create_task(_send_all(alice, bob, texts, acked))
    while len(acked) < 100:
        await asyncio.sleep(0.005)
    server.kill()  # SIGKILL while sends are in flight
    failed = await sender
    assert len(acked) >= 100 and failed, "the kill should interrupt the run"
    server.start()
    # Retrying the unacknowledged ones with the same client ids must not duplicate
    # any that were in fact committed before the kill.
    still = await _send_all(alice, bob, sorted(failed), acked)
    assert not still
    seen = await _drain(bob)
    assert set(texts) <= set(seen), f"lost: {sorted(set(texts) - set(seen))[:5]}"
    duplicated = {t: ids for t, ids in seen.items() if len(ids) != 1}
    assert not duplicated, f"stored twice: {list(duplicated)[:5]}"
    await alice.api.close()
    await bob.api.close()


async def test_sigterm_finishes_in_flight_commits(server: ServerProcess) -> None:
    alice, bob = await register(server), await register(server)
    await _establish(alice, bob)
    acked: set[str] = set()
    texts = [f"term-{i}" for i in range(200)]
    sender = asyncio.create_task(_send_all(alice, bob, texts, acked))
    while len(acked) < 50:
        await asyncio.sleep(0.005)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(server.proc.wait, 30)
    assert code == 0
    failed = await sender
    server.start()
    assert not await _send_all(alice, bob, sorted(failed), acked)
    seen = await _drain(bob)
    assert set(texts) <= set(seen)
    assert all(len(ids) == 1 for ids in seen.values())
    await alice.api.close()
    await bob.api.close()


async def test_undelivered_messages_expire_and_ip_log_is_pruned(tmp_path: Path) -> None:
    db = tmp_path / "data" / "parley.db"
    server = ServerProcess(
        tmp_path,
        f"sqlite:///{db}",
        extra=[
            "--message-ttl-days",
            "0.00002",
            "--ip-retention-days",
            "0.00002",
            "--maintenance-interval",
            "0.3",
        ],
    )
    server.start()
    try:
        alice, bob = await register(server), await register(server)
        await alice.send_text(bob.account_id, "will expire")
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from connection_log").fetchone()[0] >= 2
        time.sleep(2.5)  # TTL and retention are 1.7 s
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from messages").fetchone()[0] == 0
            assert conn.execute("select count(*) from connection_log").fetchone()[0] == 0
        async with bob.api.websocket() as ws:
            assert await bob.receive(ws) == []
        await alice.api.close()
        await bob.api.close()
    finally:
        server.stop()
