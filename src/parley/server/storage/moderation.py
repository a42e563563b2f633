"""Moderation records: staff, reports, account status, notices, and the audit log.

The audit log is append-only and hash-chained: each entry stores
``hash = SHA-256(prev_hash || canonical JSON of the entry)``, so a removed or
edited entry breaks every hash after it (``AuditLog.verify``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.crypto.primitives import constant_time_equal, sha256
from parley.server.storage.tables import (
    account_status,
    audit_log,
    console_sessions,
    notices,
    reports,
    staff,
)

GENESIS = b"\x00" * 32


@dataclass(frozen=True, slots=True)
class Staff:
    id: str
    name: str
    role: str

    @property
    def actor(self) -> str:
        """How the audit log names this staff member."""
        return f"{self.role}:{self.id}:{self.name}"


class StaffStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(
        self, staff_id: str, name: str, role: str, credential_hash: bytes, now_ms: int
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(staff).values(
                    id=staff_id,
                    name=name,
                    role=role,
                    credential_hash=credential_hash,
                    created_ms=now_ms,
                )
            )

    async def by_id(self, staff_id: str) -> tuple[Staff, bytes] | None:
        """The staff member and credential hash; None if unknown or revoked."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(staff).where(staff.c.id == staff_id, staff.c.revoked_ms.is_(None))
                )
            ).first()
        return (
            None if row is None else (Staff(row.id, row.name, row.role), bytes(row.credential_hash))
        )

    async def list(self) -> list[dict[str, Any]]:
        """Every staff member, revoked ones included (never the credential hash)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(
                    staff.c.id, staff.c.name, staff.c.role, staff.c.created_ms, staff.c.revoked_ms
                ).order_by(staff.c.created_ms)
            )
            return [
                {
                    "id": r.id,
                    "name": r.name,
                    "role": r.role,
                    "created_ms": r.created_ms,
                    "revoked_ms": r.revoked_ms,
                }
                for r in rows
            ]

    async def revoke(self, staff_id: str, now_ms: int) -> bool:
        """Revoke a credential; its console sessions go with it. False if unknown or
        already revoked."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(staff)
                .where(staff.c.id == staff_id, staff.c.revoked_ms.is_(None))
                .values(revoked_ms=now_ms)
            )
            await conn.execute(
                delete(console_sessions).where(console_sessions.c.staff_id == staff_id)
            )
        return bool(result.rowcount)


class SessionStore:
    """Staff console sessions, keyed by a keyed hash of the cookie's token."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, id_hash: bytes, staff_id: str, now_ms: int, expires_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(console_sessions).where(console_sessions.c.expires_ms < now_ms)
            )
            await conn.execute(
                insert(console_sessions).values(
                    id_hash=id_hash, staff_id=staff_id, created_ms=now_ms, expires_ms=expires_ms
                )
            )

    async def get(self, id_hash: bytes, now_ms: int) -> tuple[str, int, int] | None:
        """The session's staff id, creation and expiry times; None when it is unknown,
        ended or expired."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(console_sessions).where(
                        console_sessions.c.id_hash == id_hash,
                        console_sessions.c.expires_ms > now_ms,
                    )
                )
            ).first()
        return None if row is None else (str(row.staff_id), row.created_ms, row.expires_ms)

    async def extend(self, id_hash: bytes, expires_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(console_sessions)
                .where(console_sessions.c.id_hash == id_hash)
                .values(expires_ms=expires_ms)
            )

    async def remove(self, id_hash: bytes) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(console_sessions).where(console_sessions.c.id_hash == id_hash)
            )


class ReportStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, values: dict[str, Any]) -> str:
        """Store a report; returns its id, or the id of the report this reporter
        already made with the same ``report_key`` (one report per message)."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(reports).values(**values))
        except IntegrityError:
            existing = await self.existing(values["reporter"], values["report_key"])
            if existing is None:
                raise
            return existing
        return str(values["id"])

    async def existing(self, reporter: str, report_key: bytes) -> str | None:
        """The id of ``reporter``'s report with this key, if any."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(reports.c.id).where(
                        reports.c.reporter == reporter, reports.c.report_key == report_key
                    )
                )
            ).first()
        return None if row is None else str(row.id)

    async def recent(self, reporter: str, since_ms: int, limit: int) -> list[int]:
        """Creation times of ``reporter``'s reports since ``since_ms``, newest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(reports.c.created_ms)
                .where(reports.c.reporter == reporter, reports.c.created_ms >= since_ms)
                .order_by(reports.c.created_ms.desc())
                .limit(limit)
            )
            return [int(r.created_ms) for r in rows]

    async def list(self, status: str | None) -> list[dict[str, Any]]:
        query = select(reports).order_by(reports.c.created_ms)
        if status:
            query = query.where(reports.c.status == status)
        async with self._engine.connect() as conn:
            return [_report(r) for r in await conn.execute(query)]

    async def get(self, report_id: str) -> dict[str, Any] | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(reports).where(reports.c.id == report_id))).first()
        return None if row is None else _report(row)

    async def resolve(self, report_id: str, action: str, note: str, now_ms: int) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(reports)
                .where(reports.c.id == report_id, reports.c.status == "open")
                .values(status="resolved", action=action, note=note, resolved_ms=now_ms)
            )
        return bool(result.rowcount)


def _report(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "reporter": row.reporter,
        "category": row.category,
        "comment": row.comment,
        "sender_account": row.sender_account,
        "conversation": row.conversation,
        "group": row.group_id,
        "messages": json.loads(row.content),
        "status": row.status,
        "action": row.action,
        "note": row.note,
        "created_ms": row.created_ms,
        "resolved_ms": row.resolved_ms,
    }


class StatusStore:
    """Accounts under a moderation action (restricted, suspended, banned)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def set(self, account_id: str, status: str, until_ms: int | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(account_status).where(account_status.c.account_id == account_id)
            )
            if status != "active":
                await conn.execute(
                    insert(account_status).values(
                        account_id=account_id, status=status, until_ms=until_ms
                    )
                )

    async def all(self) -> dict[str, tuple[str, int | None]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(account_status))
            return {r.account_id: (r.status, r.until_ms) for r in rows}


class NoticeStore:
    """Platform notices to a user (outcomes of reports, actions on their account)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, account_id: str, body: dict[str, Any], now_ms: int) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(notices).values(
                    account_id=account_id, body=json.dumps(body).encode(), created_ms=now_ms
                )
            )

    async def take(self, account_id: str) -> list[dict[str, Any]]:
        """Return and delete the account's notices (delivered once)."""
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(notices).where(notices.c.account_id == account_id).order_by(notices.c.id)
                )
            ).all()
            if rows:
                await conn.execute(delete(notices).where(notices.c.id.in_([r.id for r in rows])))
        return [{**json.loads(r.body), "created_ms": r.created_ms} for r in rows]


class AuditLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(
        self, actor: str, action: str, target: str, details: dict[str, Any], now_ms: int
    ) -> None:
        body = json.dumps(details, sort_keys=True, separators=(",", ":")).encode()
        async with self._engine.begin() as conn:
            last = (
                await conn.execute(
                    select(audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
                )
            ).first()
            prev = GENESIS if last is None else bytes(last.hash)
            digest = sha256(prev + _canonical(now_ms, actor, action, target, body))
            await conn.execute(
                insert(audit_log).values(
                    at_ms=now_ms,
                    actor=actor,
                    action=action,
                    target=target,
                    details=body,
                    prev_hash=prev,
                    hash=digest,
                )
            )

    async def entries(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(audit_log).order_by(audit_log.c.seq))).all()
        return [
            {
                "seq": r.seq,
                "at_ms": r.at_ms,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "details": json.loads(r.details),
                "hash": bytes(r.hash).hex(),
                "prev_hash": bytes(r.prev_hash).hex(),
            }
            for r in rows
        ]

    async def verify(self) -> bool:
        """Recompute the chain; False if any entry was edited, removed or reordered."""
        prev = GENESIS
        for e in await self.entries():
            body = json.dumps(e["details"], sort_keys=True, separators=(",", ":")).encode()
            expected = sha256(
                prev + _canonical(e["at_ms"], e["actor"], e["action"], e["target"], body)
            )
            if bytes.fromhex(e["prev_hash"]) != prev or not constant_time_equal(
                expected, bytes.fromhex(e["hash"])
            ):
                return False
            prev = expected
        return True


def _canonical(at_ms: int, actor: str, action: str, target: str, body: bytes) -> bytes:
    return json.dumps([at_ms, actor, action, target, body.decode()], separators=(",", ":")).encode()
