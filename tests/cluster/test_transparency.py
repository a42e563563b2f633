"""Key-directory epochs and transparency-log appends from several nodes make one
append-only log: epochs published by one node at a time, never twice, and a log
that ``parley audit`` accepts from every node."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.client.api import ApiClient
from parley.client.kt import check_served_keys
from parley.client.messenger import Messenger
from parley.client.state import KtView
from tests.e2e.test_legal import order
from tests.e2e.test_reports import add_staff

from .conftest import StartCluster
from .harness import Cluster, Node
from .people import register

pytestmark = pytest.mark.cluster

ACCOUNTS_PER_NODE = 4
REQUESTS_PER_NODE = 3


def audit(profile: Path, node: Node, state: Path) -> subprocess.CompletedProcess[str]:
    """``parley audit``, the real CLI, as any outsider runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.cli.main",
            "--profile",
            str(profile),
            "audit",
            "--server",
            node.url,
            "--state",
            str(state),
            "--json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PARLEY_PASSPHRASE": "pw"},
        timeout=120,
        check=False,
    )


def log_entries(node: Node) -> list[dict[str, Any]]:
    size = int(httpx.get(f"{node.url}/v1/transparency/head", timeout=30).json()["size"])
    entries: list[dict[str, Any]] = []
    while len(entries) < size:
        page = httpx.get(
            f"{node.url}/v1/transparency/entries",
            params={"start": len(entries), "end": min(size, len(entries) + 1000)},
            timeout=30,
        ).json()["entries"]
        assert page, "the log served fewer entries than its head counts"
        entries += page
    assert [e["index"] for e in entries] == list(range(size))
    return entries


async def test_epochs_and_appends_from_three_nodes_make_one_log(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster: Cluster = start_cluster(3, extra=["--kt-epoch-seconds", "0.3"])
    legal = add_staff(cluster.a, "lo", "legal")
    staff = {"authorization": f"Bearer {legal}"}
    users: list[Messenger] = []
    requests: list[str] = []
    http = httpx.AsyncClient(timeout=60)

    async def accounts(node: Node) -> None:
        for _ in range(ACCOUNTS_PER_NODE):  # each a key change, each an epoch soon after
            users.append(await register(cluster, node))

    async def lawful_requests(node: Node) -> None:
        for i in range(REQUESTS_PER_NODE):  # refused (unknown authority), logged all the same
            signed = {
                "order": order("+14155550000", f"{node.name}-{i}", authority="No Such Court"),
                "signature": "AAAA",
            }
            r = await http.post(f"{node.url}/v1/admin/legal", json=signed, headers=staff)
            assert r.status_code == 200, f"node {node.name}: {r.status_code} {r.text}"
            assert r.json()["status"] == "refused"
            requests.append(r.json()["id"])

    async def policies() -> None:
        for version, node in enumerate(cluster.nodes, 1):  # one after another, each elsewhere
            r = await http.post(
                f"{node.url}/v1/admin/policy",
                json={"text": f"# Privacy policy\nversion {version}\n"},
                headers=staff,
            )
            assert r.status_code == 200, f"node {node.name}: {r.status_code} {r.text}"
            assert r.json()["version"] == version

    try:
        await asyncio.gather(
            *[accounts(n) for n in cluster.nodes],
            *[lawful_requests(n) for n in cluster.nodes],
            policies(),
        )
        total = ACCOUNTS_PER_NODE * len(cluster.nodes)
        assert len(users) == total

        def unpublished() -> list[str]:
            return [
                m.account_id
                for m in users
                if httpx.get(f"{cluster.b.url}/v1/kt/lookup/{m.account_id}", timeout=30).status_code
                != 200
            ]

        deadline = time.monotonic() + 10
        while unpublished() and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert unpublished() == [], "accounts missing from the key directory"

        # parley audit passes against each node, alone and with one state carried from
        # node to node (each head must extend the one seen on the node before)
        auditor = tmp_path / "auditor"
        for node in cluster.nodes:
            alone = audit(auditor, node, tmp_path / f"audit-{node.name}.json")
            assert alone.returncode == 0, f"node {node.name}: {alone.stderr}"
        carried = tmp_path / "audit-carried.json"
        sizes = []
        for node in [*cluster.nodes, cluster.a]:
            result = audit(auditor, node, carried)
            assert result.returncode == 0, f"node {node.name}: {result.stderr}"
            sizes.append(json.loads(result.stdout)["size"])
        assert sizes == sorted(sizes)

        entries = {node.name: log_entries(node) for node in cluster.nodes}
        shortest = min(len(e) for e in entries.values())
        assert entries["a"][:shortest] == entries["b"][:shortest] == entries["c"][:shortest]
        log = max(entries.values(), key=len)
        epochs = [int(e["body"]["epoch"]) for e in log if e["kind"] == "kt_epoch"]
        assert len(epochs) >= 2
        twice = sorted({e for e in epochs if epochs.count(e) > 1})
        assert not twice, f"epochs logged more than once: {twice}"
        assert all(a < b for a, b in itertools.pairwise(epochs)), (
            f"epochs not strictly increasing in log order: {epochs}"
        )
        logged_requests = [e["body"]["request"] for e in log if e["kind"] == "legal_request"]
        assert sorted(logged_requests) == sorted(requests)
        assert len(set(requests)) == REQUESTS_PER_NODE * len(cluster.nodes)
        assert [e["body"]["version"] for e in log if e["kind"] == "privacy_policy"] == [1, 2, 3]

        # every account is in the directory, with proofs that check out on every
        # node, for one client view that moves between nodes (one log, never a fork)
        view = KtView()
        for i, m in enumerate(users):
            node = cluster.nodes[i % len(cluster.nodes)]
            async with ApiClient(node.url) as api:
                api.kt_view = view
                await check_served_keys(
                    api, m.account_id, m.state.identity.public.to_bytes(), [m.state.device_id]
                )
    finally:
        await http.aclose()
        for m in users:
            await m.api.close()
