"""Standing changes reach every node: a ban on one node closes the account's sockets
on another within a second, and a staff credential works on any node."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from tests.e2e.test_reports import add_staff, reveal

from .harness import Cluster
from .people import register

pytestmark = pytest.mark.cluster

CLOSE_REVOKED = 4403


async def test_a_ban_on_node_a_closes_the_socket_on_node_b_within_a_second(
    cluster: Cluster,
) -> None:
    alice = await register(cluster, cluster.b)  # to be banned, connected to node B
    bob = await register(cluster, cluster.a)  # reports her, through node A
    try:
        await alice.send_text(bob.account_id, "the illegal one")
        async with bob.api.websocket() as ws:
            got = [m for m in await bob.receive(ws) if m.content.text]
        assert [m.content.text for m in got] == ["the illegal one"]
        report = await bob.api.call(
            "POST",
            "/v1/reports",
            {"category": "fraud", "comment": "", "messages": [reveal(got[0], bob)]},
        )
        moderator = add_staff(cluster.a, "mo", "moderator")  # parley-admin on the shared database
        staff = {"authorization": f"Bearer {moderator}"}
        for node in cluster.nodes:  # one credential, every node
            r = httpx.get(f"{node.url}/v1/admin/reports", headers=staff, timeout=30)
            assert r.status_code == 200, f"node {node.name}: {r.status_code} {r.text}"
            assert report["id"] in [x["id"] for x in r.json()["reports"]]

        auth = {"authorization": f"Bearer {alice.api.credential}"}
        async with websockets.connect(cluster.b.ws_url, additional_headers=auth) as ws:
            while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "queue_empty":
                pass

            async def closed_at() -> float:
                try:
                    async for _ in ws:
                        pass
                except websockets.ConnectionClosed:
                    pass
                return time.monotonic()

            watcher = asyncio.create_task(closed_at())
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.post(
                    f"{cluster.a.url}/v1/admin/reports/{report['id']}/resolve",
                    json={"action": "ban", "note": "cluster test"},
                    headers=staff,
                )
            banned = time.monotonic()
            assert r.status_code == 200, r.text
            assert r.json()["account"] == alice.account_id
            try:
                closed = await asyncio.wait_for(watcher, 5)
            except TimeoutError:
                raise AssertionError("the banned account's socket on node B stayed open") from None
            assert ws.close_code == CLOSE_REVOKED
            assert closed - banned < 1.0, (
                f"the socket on node B closed {closed - banned:.2f} s after the ban on node A"
            )

        for node in cluster.nodes:  # and no node lets the account in any more
            r = httpx.get(f"{node.url}/v1/accounts/me", headers=auth, timeout=30)
            assert r.status_code == 403 and r.json()["error"]["code"] == "account_banned", (
                f"node {node.name}: {r.status_code} {r.text}"
            )
    finally:
        for m in (alice, bob):
            await m.api.close()
