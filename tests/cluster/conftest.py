"""A scale-out cluster: several real ``parley-server`` nodes on one PostgreSQL database
and one Redis, each on a free loopback port.

Fixtures:

- ``redis_server``: a private ``redis-server`` on a free loopback port, with its own
  directory under ``tmp_path`` and no persistence, so a test may stop and restart
  it (``RedisServer.stop`` / ``start``, same port) without touching a system Redis.
- ``cluster_database``: a fresh PostgreSQL database URL, dropped afterwards.
- ``start_cluster``: a factory, ``start_cluster(n=3, extra=[...])``, starting ``n``
  nodes that share the database, the Redis, the data directory (it stands in for
  the shared attachment storage) and the file SMS backend; stopped afterwards.
- ``cluster``: three nodes, A, B and C, with one-second key-directory epochs.

They skip, saying why, only when PostgreSQL cannot be reached or ``redis-server``
is not on PATH (``scripts/test.sh`` installs it where it can).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.e2e.server import postgres_available, postgres_database

from .harness import Cluster, Node, RedisServer

DEFAULT_EPOCH_S = "1"  # a new account's first epoch, which clients wait for, comes soon


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: multi-node tests (several servers on one PostgreSQL and one Redis)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed cluster test shows the tail of every node's log."""
    report = yield
    cluster = item.stash.get(_CLUSTER, None)
    if report.failed and cluster is not None:
        report.sections.append(
            ("cluster node logs", "\n".join(n.log_tail() for n in cluster.nodes))
        )
    return report


def _skip_unless_available() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH; scripts/test.sh installs it (apt-get)")
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at PARLEY_TEST_POSTGRES; .ci/run starts it")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    _skip_unless_available()
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        yield redis
    finally:
        if redis.running:
            redis.stop()


@pytest.fixture
def cluster_database() -> Iterator[str]:
    _skip_unless_available()
    with postgres_database() as url:
        yield url


StartCluster = Callable[..., Cluster]
_CLUSTER = pytest.StashKey[Cluster]()


@pytest.fixture
def start_cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server: RedisServer,
    cluster_database: str,
) -> Iterator[StartCluster]:
    """``start_cluster(n=3, extra=[...])``: ``n`` nodes, each run with ``--redis-url``
    and ``--kt-epoch-seconds 1`` (``extra`` comes after, so it may override them)."""
    started: list[Cluster] = []

    def start(n: int = 3, extra: list[str] | None = None) -> Cluster:
        assert not started, "one cluster per test: they would share the database"
        shared = tmp_path / "cluster"
        shared.mkdir(exist_ok=True)
        args = [
            "--redis-url",
            redis_server.url,
            "--kt-epoch-seconds",
            DEFAULT_EPOCH_S,
            *(extra or []),
        ]
        names = "abcdefghij"
        nodes = [
            Node(
                tmp_path / f"node-{names[i]}",
                cluster_database,
                list(args),
                shared=shared,
                name=names[i],
            )
            for i in range(n)
        ]
        cluster = Cluster(shared, cluster_database, redis_server, nodes)
        started.append(cluster)
        request.node.stash[_CLUSTER] = cluster
        cluster.start()
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture
def cluster(start_cluster: StartCluster) -> Cluster:
    """Three nodes, A, B and C."""
    return start_cluster(3)
