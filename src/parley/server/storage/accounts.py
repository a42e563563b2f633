"""Accounts, devices, registration codes, provisioning blobs, and the connection log."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage.tables import (
    accounts,
    connection_log,
    devices,
    group_departures,
    group_members,
    kem_prekeys,
    messages,
    one_time_prekeys,
    provisioning,
    registration_codes,
    signed_prekeys,
)

PRIMARY_DEVICE = 1

CodeCheck = Literal["ok", "wrong", "exhausted", "none"]


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    phone: str
    identity_key: bytes
    created_day: str
    last_seen_day: str


class AccountStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def register(
        self, phone: str, identity_key: bytes, credential_hash: bytes, day: str, now_ms: int
    ) -> tuple[str, bool]:
        """Create the account, or re-register it: a new identity, only a fresh primary
        device, and the old devices' keys and queues dropped. Returns (id, existed)."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(select(accounts.c.id).where(accounts.c.phone == phone))
            ).first()
            if row is None:
                account_id = str(uuid.uuid4())
                await conn.execute(
                    insert(accounts).values(
                        id=account_id,
                        phone=phone,
                        identity_key=identity_key,
                        created_day=day,
                        last_seen_day=day,
                        next_device_id=PRIMARY_DEVICE + 1,
                    )
                )
                existed = False
            else:
                account_id = row.id
                for table in (
                    devices,
                    signed_prekeys,
                    kem_prekeys,
                    one_time_prekeys,
                    messages,
                    provisioning,
                ):
                    await conn.execute(delete(table).where(table.c.account_id == account_id))
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.id == account_id)
                    .values(
                        identity_key=identity_key,
                        last_seen_day=day,
                        next_device_id=PRIMARY_DEVICE + 1,
                    )
                )
                existed = True
            await conn.execute(
                insert(devices).values(
                    account_id=account_id,
                    device_id=PRIMARY_DEVICE,
                    credential_hash=credential_hash,
                    created_ms=now_ms,
                )
            )
        return account_id, existed

    async def get(self, account_id: str) -> Account | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        return (
            None
            if row is None
            else Account(row.id, row.phone, row.identity_key, row.created_day, row.last_seen_day)
        )

    async def get_by_phone(self, phone: str) -> Account | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.phone == phone))).first()
        return (
            None
            if row is None
            else Account(row.id, row.phone, row.identity_key, row.created_day, row.last_seen_day)
        )

    async def device_ids(self, account_id: str) -> list[int]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(devices.c.device_id)
                .where(devices.c.account_id == account_id)
                .order_by(devices.c.device_id)
            )
            return [r.device_id for r in rows]

    async def credential_hash(self, account_id: str, device_id: int) -> bytes | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(devices.c.credential_hash).where(
                        devices.c.account_id == account_id, devices.c.device_id == device_id
                    )
                )
            ).first()
        return None if row is None else bytes(row.credential_hash)

    async def add_device(
        self, account_id: str, credential_hash: bytes, max_devices: int, now_ms: int
    ) -> int | None:
        """A new linked device id, or None when the account has ``max_devices`` already."""
        async with self._engine.begin() as conn:
            count = (
                await conn.execute(
                    select(func.count())
                    .select_from(devices)
                    .where(devices.c.account_id == account_id)
                )
            ).scalar_one()
            if count >= max_devices:
                return None
            next_id = (
                await conn.execute(
                    select(accounts.c.next_device_id).where(accounts.c.id == account_id)
                )
            ).scalar_one()
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id)
                .values(next_device_id=next_id + 1)
            )
            await conn.execute(
                insert(devices).values(
                    account_id=account_id,
                    device_id=next_id,
                    credential_hash=credential_hash,
                    created_ms=now_ms,
                )
            )
        return int(next_id)

    async def remove_device(self, account_id: str, device_id: int) -> bool:
        async with self._engine.begin() as conn:
            gone = await conn.execute(
                delete(devices).where(
                    devices.c.account_id == account_id, devices.c.device_id == device_id
                )
            )
            for table in (signed_prekeys, kem_prekeys, one_time_prekeys, messages):
                await conn.execute(
                    delete(table).where(
                        table.c.account_id == account_id, table.c.device_id == device_id
                    )
                )
        return bool(gone.rowcount)

    async def delete_account(self, account_id: str) -> None:
        async with self._engine.begin() as conn:
            for table in (
                devices,
                signed_prekeys,
                kem_prekeys,
                one_time_prekeys,
                messages,
                provisioning,
                group_members,
                group_departures,
                connection_log,
            ):
                await conn.execute(delete(table).where(table.c.account_id == account_id))
            await conn.execute(delete(accounts).where(accounts.c.id == account_id))

    async def touch(self, account_id: str, day: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(accounts).where(accounts.c.id == account_id).values(last_seen_day=day)
            )


class CodeStore:
    """One-time registration codes, stored only as HMACs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(self, phone: str, code_hash: bytes, expires_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(registration_codes).where(registration_codes.c.phone == phone)
            )
            await conn.execute(
                insert(registration_codes).values(
                    phone=phone, code_hash=code_hash, expires_ms=expires_ms, attempts=0
                )
            )

    async def check(
        self, phone: str, matches: Callable[[bytes], bool], now_ms: int, max_attempts: int
    ) -> CodeCheck:
        """Count an attempt. ``"ok"`` consumes the code; ``"wrong"`` counts a miss;
        ``"exhausted"`` means that miss was the last allowed (the code is gone);
        ``"none"``: no code is waiting (never asked, expired, used or exhausted)."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(registration_codes).where(registration_codes.c.phone == phone)
                )
            ).first()
            if row is None:
                return "none"
            gone = delete(registration_codes).where(registration_codes.c.phone == phone)
            if row.expires_ms < now_ms or row.attempts >= max_attempts:
                await conn.execute(gone)
                return "none"
            if matches(bytes(row.code_hash)):
                await conn.execute(gone)
                return "ok"
            if row.attempts + 1 >= max_attempts:
                await conn.execute(gone)
                return "exhausted"
            await conn.execute(
                update(registration_codes)
                .where(registration_codes.c.phone == phone)
                .values(attempts=row.attempts + 1)
            )
            return "wrong"

    async def prune(self, now_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(registration_codes).where(registration_codes.c.expires_ms < now_ms)
            )


class ProvisioningStore:
    """Encrypted provisioning blobs for device linking, found by a hash of their lookup key."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(self, lookup_hash: bytes, account_id: str, blob: bytes, expires_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(provisioning).where(provisioning.c.lookup_hash == lookup_hash)
            )
            await conn.execute(
                insert(provisioning).values(
                    lookup_hash=lookup_hash, account_id=account_id, blob=blob, expires_ms=expires_ms
                )
            )

    async def peek(self, lookup_hash: bytes, now_ms: int) -> bytes | None:
        """The blob, without consuming it (the new device reads it before linking)."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(provisioning).where(provisioning.c.lookup_hash == lookup_hash)
                )
            ).first()
        return None if row is None or row.expires_ms < now_ms else bytes(row.blob)

    async def take(self, lookup_hash: bytes, now_ms: int) -> tuple[str, bytes] | None:
        """Consume the blob (one use only)."""
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(provisioning).where(provisioning.c.lookup_hash == lookup_hash)
                )
            ).first()
            if row is None:
                return None
            await conn.execute(
                delete(provisioning).where(provisioning.c.lookup_hash == lookup_hash)
            )
            if row.expires_ms < now_ms:
                return None
            return row.account_id, bytes(row.blob)

    async def prune(self, now_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(provisioning).where(provisioning.c.expires_ms < now_ms))


class ConnectionLog:
    """IP addresses seen per account, kept for the retention period only."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def record(self, account_id: str, ip: str, at_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(connection_log).values(account_id=account_id, ip=ip, at_ms=at_ms)
            )

    async def prune(self, before_ms: int) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(connection_log).where(connection_log.c.at_ms < before_ms)
            )
        return int(result.rowcount)
