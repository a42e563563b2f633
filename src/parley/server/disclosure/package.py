"""Build and sign a disclosure package for one granted request."""

from __future__ import annotations

import base64
from typing import Any

import rfc8785
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.crypto.primitives import SigningKey
from parley.server.storage.tables import accounts, connection_log

ALLOWED = ("phone_number", "ip_addresses")


class DisclosureReader:
    """Reads the two record kinds a court order may reach, and no others."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def phone(self, account_id: str) -> str | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(accounts.c.phone).where(accounts.c.id == account_id))
            ).first()
        return None if row is None else str(row.phone)

    async def ip_addresses(
        self, account_id: str, start_ms: int, end_ms: int
    ) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(connection_log.c.ip, connection_log.c.at_ms)
                .where(
                    connection_log.c.account_id == account_id,
                    connection_log.c.at_ms >= start_ms,
                    connection_log.c.at_ms <= end_ms,
                )
                .order_by(connection_log.c.at_ms)
            )
            return [{"ip": r.ip, "at_ms": r.at_ms} for r in rows]


async def build(
    reader: DisclosureReader,
    key: SigningKey,
    request: dict[str, Any],
    window: tuple[int, int],
    now_ms: int,
) -> dict[str, Any]:
    """The signed package: only the granted data kinds, IPs within ``window``."""
    account = request["target_account"]
    data: dict[str, Any] = {}
    if "phone_number" in request["granted"]:
        data["phone_number"] = await reader.phone(account)
    if "ip_addresses" in request["granted"]:
        data["ip_addresses"] = await reader.ip_addresses(account, *window)
    order = request["order"]
    package = {
        "request": request["id"],
        "order_id": order["order_id"],
        "authority": order["authority"],
        "case_reference": order["case_reference"],
        "granted": [k for k in ALLOWED if k in request["granted"]],
        "refused": request["refused"],
        "window_ms": list(window),
        "data": data,
        "generated_ms": now_ms,
    }
    signature = key.sign(bytes(rfc8785.dumps(package)))
    return {
        "package": package,
        "signature": base64.b64encode(signature).decode(),
        "public_key": base64.b64encode(key.public).decode(),
        "signed": "Ed25519 over the RFC 8785 canonical JSON of package",
    }
