"""Judicial authorities, lawful requests, and privacy-policy versions."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.server.storage.tables import authorities, legal_requests, policies


class LegalStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_authority(
        self, authority_id: str, name: str, jurisdiction: str, public_key: bytes, now_ms: int
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(authorities).values(
                    id=authority_id,
                    name=name,
                    jurisdiction=jurisdiction,
                    public_key=public_key,
                    created_ms=now_ms,
                )
            )

    async def authority(self, name: str) -> dict[str, Any] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(authorities).where(authorities.c.name == name))
            ).first()
        if row is None:
            return None
        return {
            "id": row.id,
            "name": row.name,
            "jurisdiction": row.jurisdiction,
            "public_key": bytes(row.public_key),
            "revoked_ms": row.revoked_ms,
        }

    async def authorities(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(authorities).order_by(authorities.c.created_ms))
            return [
                {
                    "id": r.id,
                    "name": r.name,
                    "jurisdiction": r.jurisdiction,
                    "public_key": bytes(r.public_key),
                    "created_ms": r.created_ms,
                    "revoked_ms": r.revoked_ms,
                }
                for r in rows
            ]

    async def revoke_authority(self, name: str, now_ms: int) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(authorities)
                .where(authorities.c.name == name, authorities.c.revoked_ms.is_(None))
                .values(revoked_ms=now_ms)
            )
        return bool(result.rowcount)

    async def order_seen(self, order_id: str) -> bool:
        async with self._engine.connect() as conn:
            return (
                await conn.execute(
                    select(legal_requests.c.id).where(legal_requests.c.order_id == order_id)
                )
            ).first() is not None

    async def add_request(self, values: dict[str, Any]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(insert(legal_requests).values(**values))

    async def request(self, request_id: str) -> dict[str, Any] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(legal_requests).where(legal_requests.c.id == request_id))
            ).first()
        return None if row is None else _request(row)

    async def requests(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            return [
                _request(r)
                for r in await conn.execute(
                    select(legal_requests).order_by(legal_requests.c.created_ms)
                )
            ]

    async def update_request(self, request_id: str, expected_status: str, **values: Any) -> bool:
        """Compare-and-set on the status, so two officers cannot race a decision."""
        if "approvals" in values:
            values["approvals"] = ",".join(values["approvals"])
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(legal_requests)
                .where(
                    legal_requests.c.id == request_id, legal_requests.c.status == expected_status
                )
                .values(**values)
            )
        return bool(result.rowcount)

    async def add_policy(
        self, version: int, text: bytes, digest: bytes, log_index: int, now_ms: int
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(policies).values(
                    version=version,
                    text=text,
                    sha256=digest,
                    log_index=log_index,
                    published_ms=now_ms,
                )
            )

    async def policies(self) -> list[dict[str, Any]]:
        """Every policy version, oldest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(policies).order_by(policies.c.version))
            return [
                {
                    "version": r.version,
                    "text": bytes(r.text),
                    "sha256": bytes(r.sha256),
                    "log_index": r.log_index,
                    "published_ms": r.published_ms,
                }
                for r in rows
            ]

    async def latest_policy(self) -> dict[str, Any] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(policies).order_by(policies.c.version.desc()).limit(1))
            ).first()
        if row is None:
            return None
        return {
            "version": row.version,
            "text": bytes(row.text),
            "sha256": bytes(row.sha256),
            "log_index": row.log_index,
            "published_ms": row.published_ms,
        }


def _request(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "order_id": row.order_id,
        "authority_id": row.authority_id,
        "order": json.loads(row.order),
        "target_account": row.target_account,
        "status": row.status,
        "granted": [g for g in row.granted.split(",") if g],
        "refused": json.loads(row.refused),
        "approvals": [a for a in row.approvals.split(",") if a],
        "reason": row.reason,
        "created_ms": row.created_ms,
        "notice_sent": bool(row.notice_sent),
        "checks": json.loads(row.checks) if row.checks is not None else None,
    }
