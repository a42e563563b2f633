"""Engines chosen by URL, SQLite pragmas, and migrations at start.

``sqlite:///DIR/parley.db`` (the embedded default) runs on aiosqlite in WAL
mode with ``synchronous=FULL``, so a commit is on disk before a message is
acknowledged; ``postgresql://...`` runs on asyncpg. The schema is created
and upgraded only by the Alembic migrations in ``migrations/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).with_name("migrations")

# Every SQLite connection (the engine's and the queue writer's own) runs these.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
    # No checkpoint inside a commit (it would stall a commit with fsyncs): the
    # queue's writer thread checkpoints between its commits (``storage/queue.py``).
    "PRAGMA wal_autocheckpoint=0",
    # A WAL that started over is cut back to 64 MiB, so a burst leaves no huge file.
    "PRAGMA journal_size_limit=67108864",
)


def async_url(url: str) -> str:
    """Map a plain database URL to its asyncio driver."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    if url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return url
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    full = async_url(url)
    if full.startswith("sqlite"):
        # A fixed pool: every SQLite connection carries a worker thread and its
        # pragmas, so connections are kept, never opened per request.
        engine = create_async_engine(
            full, connect_args={"timeout": 30}, pool_size=16, max_overflow=0, pool_timeout=60
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for pragma in SQLITE_PRAGMAS:
                cur.execute(pragma)
            cur.close()

        return engine
    return create_async_engine(full, pool_size=16, max_overflow=0, pool_timeout=60)


def _upgrade(connection: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


MIGRATION_LOCK = 0x7061726D  # nodes of a cluster starting together migrate one at a time


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        await conn.run_sync(_upgrade)
