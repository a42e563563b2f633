"""Prekeys: the signed prekey, ML-KEM prekeys (one-time and last resort), one-time X25519 keys.

One-time keys are handed out exactly once: a candidate is selected, then
deleted by primary key, and it counts as taken only if that delete removed a
row. Under concurrency, on SQLite (one writer) and on PostgreSQL alike, two
fetches can never both get the same key; the loser retries with the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.server.storage.tables import kem_prekeys, one_time_prekeys, signed_prekeys


@dataclass(frozen=True, slots=True)
class SignedKey:
    key_id: int
    public_key: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class KemKey:
    key_id: int
    public_key: bytes
    signature: bytes
    last_resort: bool


@dataclass(frozen=True, slots=True)
class OneTimeKey:
    key_id: int
    public_key: bytes


@dataclass(frozen=True, slots=True)
class DeviceBundle:
    device_id: int
    signed_prekey: SignedKey
    kem_prekey: KemKey
    one_time_prekey: OneTimeKey | None


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def upload(
        self,
        account_id: str,
        device_id: int,
        signed: SignedKey | None,
        kem_last_resort: KemKey | None,
        one_time: list[OneTimeKey],
        kem_one_time: list[KemKey],
    ) -> None:
        owner = {"account_id": account_id, "device_id": device_id}
        async with self._engine.begin() as conn:
            if signed is not None:
                await conn.execute(
                    delete(signed_prekeys).where(
                        signed_prekeys.c.account_id == account_id,
                        signed_prekeys.c.device_id == device_id,
                    )
                )
                await conn.execute(
                    insert(signed_prekeys).values(
                        **owner,
                        key_id=signed.key_id,
                        public_key=signed.public_key,
                        signature=signed.signature,
                    )
                )
            if kem_last_resort is not None:
                await conn.execute(
                    delete(kem_prekeys).where(
                        kem_prekeys.c.account_id == account_id,
                        kem_prekeys.c.device_id == device_id,
                        kem_prekeys.c.last_resort.is_(True),
                    )
                )
                await conn.execute(
                    insert(kem_prekeys).values(
                        **owner,
                        key_id=kem_last_resort.key_id,
                        public_key=kem_last_resort.public_key,
                        signature=kem_last_resort.signature,
                        last_resort=True,
                    )
                )
            if one_time:
                await conn.execute(
                    insert(one_time_prekeys),
                    [{**owner, "key_id": k.key_id, "public_key": k.public_key} for k in one_time],
                )
            if kem_one_time:
                await conn.execute(
                    insert(kem_prekeys),
                    [
                        {
                            **owner,
                            "key_id": k.key_id,
                            "public_key": k.public_key,
                            "signature": k.signature,
                            "last_resort": False,
                        }
                        for k in kem_one_time
                    ],
                )

    async def counts(self, account_id: str, device_id: int) -> tuple[int, int]:
        """(one-time X25519 keys left, one-time ML-KEM keys left)."""
        async with self._engine.connect() as conn:
            ot = (
                await conn.execute(
                    select(func.count())
                    .select_from(one_time_prekeys)
                    .where(
                        one_time_prekeys.c.account_id == account_id,
                        one_time_prekeys.c.device_id == device_id,
                    )
                )
            ).scalar_one()
            kem = (
                await conn.execute(
                    select(func.count())
                    .select_from(kem_prekeys)
                    .where(
                        kem_prekeys.c.account_id == account_id,
                        kem_prekeys.c.device_id == device_id,
                        kem_prekeys.c.last_resort.is_(False),
                    )
                )
            ).scalar_one()
        return int(ot), int(kem)

    async def take_bundle(self, account_id: str, device_id: int) -> DeviceBundle | None:
        """A bundle for one device, consuming one one-time key of each kind if any remain."""
        async with self._engine.begin() as conn:
            spk = (
                await conn.execute(
                    select(signed_prekeys).where(
                        signed_prekeys.c.account_id == account_id,
                        signed_prekeys.c.device_id == device_id,
                    )
                )
            ).first()
            if spk is None:
                return None
            kem = await _take_kem(conn, account_id, device_id)
            if kem is None:
                return None
            opk = await _take_one_time(conn, account_id, device_id)
        return DeviceBundle(
            device_id, SignedKey(spk.key_id, bytes(spk.public_key), bytes(spk.signature)), kem, opk
        )


async def _take_one_time(
    conn: AsyncConnection, account_id: str, device_id: int
) -> OneTimeKey | None:
    t = one_time_prekeys
    for _ in range(16):
        row = (
            await conn.execute(
                select(t.c.id, t.c.key_id, t.c.public_key)
                .where(t.c.account_id == account_id, t.c.device_id == device_id)
                .order_by(t.c.id)
                .limit(1)
            )
        ).first()
        if row is None:
            return None
        if (await conn.execute(delete(t).where(t.c.id == row.id))).rowcount == 1:
            return OneTimeKey(row.key_id, bytes(row.public_key))
    return None


async def _take_kem(conn: AsyncConnection, account_id: str, device_id: int) -> KemKey | None:
    t = kem_prekeys
    owner = (t.c.account_id == account_id, t.c.device_id == device_id)
    for _ in range(16):
        row = (
            await conn.execute(
                select(t).where(*owner, t.c.last_resort.is_(False)).order_by(t.c.id).limit(1)
            )
        ).first()
        if row is None:
            break
        if (await conn.execute(delete(t).where(t.c.id == row.id))).rowcount == 1:
            return KemKey(row.key_id, bytes(row.public_key), bytes(row.signature), False)
    last = (await conn.execute(select(t).where(*owner, t.c.last_resort.is_(True)))).first()
    return (
        None
        if last is None
        else KemKey(last.key_id, bytes(last.public_key), bytes(last.signature), True)
    )
