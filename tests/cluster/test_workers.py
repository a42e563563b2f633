"""``--workers N``: the processes of one node share its port and signal each other
through Redis like any other nodes."""

from __future__ import annotations

import psutil
import pytest

from .conftest import StartCluster
from .people import inbox, register

pytestmark = pytest.mark.cluster


async def test_two_workers_of_one_node_deliver_to_each_other_in_real_time(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(1, ["--workers", "2"])
    node = cluster.nodes[0]
    assert node.proc is not None
    workers = [  # uvicorn spawns each worker; the resource tracker is the other child
        p for p in psutil.Process(node.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())
    ]
    assert len(workers) == 2, [p.cmdline() for p in workers]
    # Six people, six sockets: the kernel spreads connections over both workers, so
    # some messages are committed by one worker for a socket held by the other.
    people = [await register(cluster, node) for _ in range(6)]
    opened = [inbox(p) for p in people]
    boxes = [await box.__aenter__() for box in opened]
    try:
        for i, sender in enumerate(people):
            await sender.send_text(people[(i + 1) % 6].account_id, f"from {i}")
        for i, box in enumerate(boxes):
            await box.wait_for(f"from {(i - 1) % 6}", within_s=5)
        for box in boxes:
            assert sum(box.texts().values()) == 1
    finally:
        for box in reversed(opened):
            await box.__aexit__(None, None, None)
