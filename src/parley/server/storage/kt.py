"""Key-directory state: every published version of every account's entry, each
owner's signed device list, and the key material the directory is built from
(identity keys and device lists)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.server.storage.tables import (
    accounts,
    devices,
    kt_device_lists,
    kt_removals,
    kt_versions,
)


@dataclass(frozen=True, slots=True)
class Version:
    """One version of an account's directory entry, as its leaf commits to it."""

    version: int
    epoch: int
    identity_key: bytes
    devices: tuple[int, ...]
    device_list: bytes
    prev: bytes
    value: bytes


def _devices_text(found: tuple[int, ...]) -> str:
    return ",".join(str(d) for d in found)


def _version(r: Any) -> Version:
    text = str(r.devices)
    return Version(
        int(r.version),
        int(r.epoch),
        bytes(r.identity_key),
        tuple(int(d) for d in text.split(",")) if text else (),
        bytes(r.device_list),
        bytes(r.prev),
        bytes(r.value_hash),
    )


class KtStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def key_states(self) -> dict[str, tuple[bytes, tuple[int, ...], bytes]]:
        """account id -> (identity key, device ids, signed device list or b""), as the
        database holds them now."""
        async with self._engine.connect() as conn:
            identities = {
                r.id: bytes(r.identity_key)
                for r in await conn.execute(select(accounts.c.id, accounts.c.identity_key))
            }
            found: dict[str, list[int]] = defaultdict(list)
            for r in await conn.execute(select(devices.c.account_id, devices.c.device_id)):
                found[r.account_id].append(int(r.device_id))
            lists = {
                r.account_id: bytes(r.device_list)
                for r in await conn.execute(
                    select(kt_device_lists.c.account_id, kt_device_lists.c.device_list)
                )
            }
        return {
            a: (k, tuple(sorted(found.get(a, []))), lists.get(a, b""))
            for a, k in identities.items()
        }

    async def latest(self, max_epoch: int) -> dict[str, Version]:
        """Each account's latest version published in an epoch up to ``max_epoch``."""
        newest = (
            select(kt_versions.c.account_id, func.max(kt_versions.c.version).label("version"))
            .where(kt_versions.c.epoch <= max_epoch)
            .group_by(kt_versions.c.account_id)
            .subquery()
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(kt_versions).join(
                    newest,
                    (kt_versions.c.account_id == newest.c.account_id)
                    & (kt_versions.c.version == newest.c.version),
                )
            )
            return {r.account_id: _version(r) for r in rows}

    async def published_between(self, after: int, upto: int) -> list[tuple[str, Version]]:
        """Versions first published in epochs ``after < epoch <= upto``, in order."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(kt_versions)
                .where(kt_versions.c.epoch > after, kt_versions.c.epoch <= upto)
                .order_by(kt_versions.c.epoch, kt_versions.c.version)
            )
            return [(r.account_id, _version(r)) for r in rows]

    async def removed_between(self, after: int, upto: int) -> list[bytes]:
        """Directory indexes taken out in epochs ``after < epoch <= upto``."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(kt_removals.c.idx).where(
                    kt_removals.c.epoch > after, kt_removals.c.epoch <= upto
                )
            )
            return [bytes(r.idx) for r in rows]

    @staticmethod
    async def write_epoch(
        conn: AsyncConnection,
        epoch: int,
        added: list[tuple[str, Version]],
        gone: list[tuple[str, bytes]],
    ) -> None:
        """An epoch's changes, in the transaction that logs the epoch. ``gone`` is
        (account, directory index): the index is kept, the account id is not."""
        if gone:
            ids = [a for a, _ in gone]
            for table in (kt_versions, kt_device_lists):
                await conn.execute(delete(table).where(table.c.account_id.in_(ids)))
            await conn.execute(
                insert(kt_removals), [{"idx": idx, "epoch": epoch} for _, idx in gone]
            )
        if added:
            await conn.execute(
                insert(kt_versions),
                [
                    {
                        "account_id": account,
                        "version": v.version,
                        "epoch": v.epoch,
                        "identity_key": v.identity_key,
                        "devices": _devices_text(v.devices),
                        "device_list": v.device_list,
                        "prev": v.prev,
                        "value_hash": v.value,
                    }
                    for account, v in added
                ],
            )

    async def history(self, account: str, since: int, limit: int) -> list[Version]:
        """The versions after ``since``, oldest first (at most ``limit``)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(kt_versions)
                .where(kt_versions.c.account_id == account, kt_versions.c.version > since)
                .order_by(kt_versions.c.version)
                .limit(limit)
            )
            return [_version(r) for r in rows]

    async def identity(self, account: str) -> bytes | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(accounts.c.identity_key).where(accounts.c.id == account))
            ).first()
        return None if row is None else bytes(row.identity_key)

    async def put_device_list(self, account: str, counter: int, blob: bytes) -> bool:
        """Store a signed list if its counter is newer than the stored one's."""
        try:
            return await self._put_device_list(account, counter, blob)
        except IntegrityError:  # another device's first list won the race
            return False

    async def _put_device_list(self, account: str, counter: int, blob: bytes) -> bool:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(kt_device_lists.c.counter).where(kt_device_lists.c.account_id == account)
                )
            ).first()
            if row is None:
                await conn.execute(
                    insert(kt_device_lists).values(
                        account_id=account, counter=counter, device_list=blob
                    )
                )
                return True
            if counter <= int(row.counter):
                return False
            await conn.execute(
                update(kt_device_lists)
                .where(kt_device_lists.c.account_id == account)
                .values(counter=counter, device_list=blob)
            )
            return True
