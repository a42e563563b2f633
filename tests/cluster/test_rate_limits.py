"""Rate limits are token buckets in Redis: one bucket whichever node is asked, and it
survives a node's restart."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from parley.server.handlers.keys import BUNDLES_PER_CONTACT
from tests.e2e.conftest import new_phone

from .harness import Cluster, Node
from .raw import Account, register

pytestmark = pytest.mark.cluster


async def fetch_bundle(node: Node, requester: Account, contact: Account) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        return await http.get(f"/v1/keys/{contact.account_id}", headers=requester.auth)


async def test_the_bundle_fetch_limit_holds_across_nodes_and_a_restart(cluster: Cluster) -> None:
    assert BUNDLES_PER_CONTACT == 5  # then one more every 10 minutes, per requester and contact
    requester, contact, other = await asyncio.gather(
        register(cluster.a, new_phone(), cluster.code_for),
        register(cluster.c, new_phone(), cluster.code_for),
        register(cluster.b, new_phone(), cluster.code_for),
    )
    rotation = [cluster.a, cluster.b, cluster.c, cluster.a, cluster.b]
    for n, node in enumerate(rotation, 1):
        r = await fetch_bundle(node, requester, contact)
        assert r.status_code == 200, f"fetch {n} on node {node.name}: {r.status_code} {r.text}"
    for node in (cluster.c, cluster.a, cluster.b):  # the 6th fetch, and more, on any node
        r = await fetch_bundle(node, requester, contact)
        assert r.status_code == 429, f"over the limit on node {node.name}: {r.status_code}"
        assert r.json()["error"]["code"] == "rate_limited"
        assert 0 < int(r.headers["retry-after"]) <= 600
    # one requester's bucket for one contact, not a global one
    r = await fetch_bundle(cluster.c, other, contact)
    assert r.status_code == 200, r.text

    await asyncio.to_thread(cluster.c.restart)  # SIGTERM, then a fresh process
    r = await fetch_bundle(cluster.c, requester, contact)
    assert r.status_code == 429, f"after node C restarted: {r.status_code}"
    r = await fetch_bundle(cluster.a, requester, contact)
    assert r.status_code == 429
