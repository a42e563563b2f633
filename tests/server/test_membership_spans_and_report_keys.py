"""Migration 0005 on SQLite and PostgreSQL: it upgrades a database holding groups
and reports from before it, and the stores keep what reports rely on: membership
spans (pruned after the retention) and one report per reporter and message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import column, insert, table
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage import db
from parley.server.storage.groups import GroupStore
from parley.server.storage.moderation import ReportStore
from parley.server.storage.tables import groups
from tests.e2e.server import postgres_available, postgres_database


def _to(revision: str, down: bool = False) -> object:
    def run(connection: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(db.MIGRATIONS))
        cfg.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(cfg, revision)

    return run


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        e = db.create_engine(f"sqlite:///{tmp_path / 'parley.db'}")
        yield e
        await e.dispose()
        return
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at PARLEY_TEST_POSTGRES")
    with postgres_database() as url:
        e = db.create_engine(url)
        yield e
        await e.dispose()


def _report(report_id: str, key: bytes | None, created_ms: int) -> dict[str, object]:
    return {
        "id": report_id,
        "reporter": "reporter",
        "category": "spam",
        "comment": "",
        "sender_account": "sender",
        "conversation": "dm:reporter:sender",
        "group_id": None,
        "content": b"{}",
        "status": "open",
        "created_ms": created_ms,
        **({} if key is None else {"report_key": key}),
    }


async def test_migration_0005_keeps_older_groups_and_reports(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_to("0004"))
        await conn.execute(insert(groups).values(id="g" * 32, created_ms=1))
        # Rows as 0004 has them: a member without a join time, reports without a key.
        old_members = table(
            "group_members", column("group_id"), column("account_id"), column("admin")
        )
        await conn.execute(
            insert(old_members).values(group_id="g" * 32, account_id="old-member", admin=True)
        )
        old = [_report(f"legacy{i}", None, 10 + i) for i in range(2)]
        await conn.execute(insert(table("reports", *(column(c) for c in old[0]))), old)
    await db.migrate(engine)
    groups_store, reports_store = GroupStore(engine), ReportStore(engine)
    assert await groups_store.spans("g" * 32, "old-member") == [(0, None)]  # since ever
    assert await reports_store.get("legacy0") is not None

    await groups_store.remove("g" * 32, "old-member", 5000)
    assert await groups_store.spans("g" * 32, "old-member") == [(0, 5000)]
    assert await groups_store.members("g" * 32) == {}  # the group went with its last member
    await groups_store.create("h" * 32, "admin", ["m"], 100)
    await groups_store.remove("h" * 32, "m", 200)
    await groups_store.add("h" * 32, "m", 300)  # rejoined: two spans
    assert sorted(await groups_store.spans("h" * 32, "m"), key=str) == [(100, 200), (300, None)]
    assert await groups_store.prune_departures(5000) == 1  # ended before 5000
    assert await groups_store.spans("g" * 32, "old-member") == [(0, 5000)]
    assert await groups_store.prune_departures(5001) == 1
    assert await groups_store.spans("g" * 32, "old-member") == []

    key = b"k" * 32
    assert await reports_store.add(_report("new", key, 20)) == "new"
    assert await reports_store.add(_report("again", key, 21)) == "new"  # one per message
    assert await reports_store.existing("reporter", key) == "new"
    assert await reports_store.add(_report("other", b"o" * 32, 22)) == "other"
    assert await reports_store.recent("reporter", 11, 10) == [22, 20, 11]

    async with engine.begin() as conn:  # and it goes down and up again
        await conn.run_sync(_to("0004", down=True))
    await db.migrate(engine)
