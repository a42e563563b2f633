"""Lawful requests: valid court orders only; phone number and IP addresses only.

Theory of operation. An authority signs an order (Ed25519 over its RFC 8785
canonical JSON) with a key an operator registered. ``submit`` checks, in this
order, and records a refusal with its reason at the first failure: the order's
shape, the signature, a known and unrevoked authority of the stated
jurisdiction, the dates (issued, not expired), that the order id was never
seen (no replay), and that the target is an account. A replay is logged
like any refusal, marked ``"replay": true``, and the transparency report
counts it apart from requests (it is the same order again, not a new one).
Of the requested data only ``phone_number`` and ``ip_addresses`` can be
granted; anything else (messages, contacts, groups, keys, reports...) is
refused for that part with a recorded reason, and the rest goes on. Two different staff with the legal role
must approve, or one refuses. Every request and decision is appended to the
public transparency log without personal data, and every staff step to the
audit log. When an approved order's non-disclosure date passes (or at once if
it has none), the account gets a notice naming the authority and the data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import phonenumbers
import rfc8785

from parley.crypto.primitives import SigningKey, VerifyKey
from parley.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidSignature,
    MalformedMessage,
    NotFound,
)
from parley.server.disclosure.package import ALLOWED, DisclosureReader, build
from parley.server.handlers.transparency import TransparencyHandler
from parley.server.storage.accounts import AccountStore
from parley.server.storage.legal import LegalStore
from parley.server.storage.moderation import AuditLog, NoticeStore, Staff

REQUIRED = (
    "order_id",
    "authority",
    "jurisdiction",
    "case_reference",
    "legal_basis",
    "offence_category",
    "target",
    "time_range",
    "requested_data",
    "issued_at",
    "expires_at",
)
WHY_NOT = {
    "messages": "Parley cannot disclose messages: they are end-to-end encrypted and the server never has them",
    "contacts": "Parley does not keep contact lists",
    "groups": "group membership is not disclosable under Parley's policy",
    "keys": "encryption keys are never disclosed",
    "reports": "abuse reports are not disclosable under Parley's policy",
}
APPROVALS_NEEDED = 2
# The checks ``submit`` runs, in order; each request records how each went.
CHECKS = (
    "the order has every required field",
    "the authority is registered",
    "the signature verifies against the authority's key",
    "the authority's key is not revoked",
    "the order's jurisdiction is the authority's",
    "the dates are well-formed",
    "the order is not dated in the future",
    "the order has not expired",
    "the order id was never submitted before (no replay)",
    "the target is a Parley account",
    "something Parley can disclose was requested",
)
# A re-submitted order: refused, logged, and counted as a replay, not as a request.
REPLAY = "replay: this order id was already submitted"


def _ms(value: object, name: str) -> int:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be an ISO 8601 date-time", "invalid_order")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(f"{name} is not an ISO 8601 date-time", "invalid_order") from exc
    if parsed.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone (e.g. Z)", "invalid_order")
    return int(parsed.timestamp() * 1000)


def _quarter(ms: int) -> str:
    d = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return f"{d.year}Q{(d.month - 1) // 3 + 1}"


class LegalHandler:
    def __init__(
        self,
        store: LegalStore,
        accounts: AccountStore,
        reader: DisclosureReader,
        transparency: TransparencyHandler,
        audit: AuditLog,
        notices: NoticeStore,
        disclosure_key: SigningKey,
        retention_ms: int,
        clock_ms: Callable[[], int],
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._reader = reader
        self._log = transparency
        self._audit = audit
        self._notices = notices
        self._key = disclosure_key
        self._retention = retention_ms
        self._now = clock_ms

    # -- authorities (operators) ---------------------------------------------------------------

    async def add_authority(
        self, actor: str, name: str, jurisdiction: str, public_key: bytes
    ) -> str:
        if len(jurisdiction) != 2 or not jurisdiction.isalpha() or not jurisdiction.isupper():
            raise BadRequest(
                "jurisdiction is a two-letter country code (ISO 3166-1), e.g. DE", "invalid_request"
            )
        try:
            VerifyKey(public_key)
        except MalformedMessage as exc:
            raise BadRequest("not an Ed25519 public key", "invalid_request") from exc
        if await self._store.authority(name) is not None:
            raise Conflict("an authority with this name exists")
        authority_id = secrets.token_hex(8)
        await self._store.add_authority(authority_id, name, jurisdiction, public_key, self._now())
        await self._audit.append(
            actor,
            "authority.add",
            authority_id,
            {"name": name, "jurisdiction": jurisdiction},
            self._now(),
        )
        return authority_id

    async def revoke_authority(self, actor: str, name: str) -> None:
        if not await self._store.revoke_authority(name, self._now()):
            raise NotFound("no such (unrevoked) authority")
        await self._audit.append(actor, "authority.revoke", name, {}, self._now())

    async def add_authority_as(
        self, staff: Staff, name: str, jurisdiction: str, public_key: bytes
    ) -> str:
        """``add_authority`` for a staff member, who must hold the legal role."""
        self._require(staff, ("legal",))
        if not name.strip() or len(name) > 200:
            raise BadRequest("an authority's name is 1..200 characters", "invalid_request")
        return await self.add_authority(staff.actor, name, jurisdiction, public_key)

    async def revoke_authority_as(self, staff: Staff, name: str) -> None:
        """``revoke_authority`` for a staff member, who must hold the legal role."""
        self._require(staff, ("legal",))
        await self.revoke_authority(staff.actor, name)

    # -- privacy policy ----------------------------------------------------------------------------

    async def publish_policy(self, text: bytes) -> dict[str, Any]:
        """A new policy version: its hash goes into the log first, then the text is stored."""
        latest = await self._store.latest_policy()
        version = 1 if latest is None else latest["version"] + 1
        digest = hashlib.sha256(text).digest()
        index = await self._log.append(
            "privacy_policy", {"version": version, "sha256": digest.hex()}
        )
        await self._store.add_policy(version, text, digest, index, self._now())
        return {"version": version, "sha256": digest.hex(), "log_index": index}

    async def current_policy(self) -> dict[str, Any]:
        """The current privacy policy, given out only if its hash is in the transparency log."""
        p = await self._store.latest_policy()
        if p is None:
            raise NotFound("no privacy policy has been published")
        found = await self._log.entries(p["log_index"], p["log_index"] + 1)
        entry = found[0] if found else None
        digest = hashlib.sha256(p["text"]).hexdigest()
        if (
            entry is None
            or entry["kind"] != "privacy_policy"
            or entry["body"].get("sha256") != digest
        ):
            raise NotFound(
                "the stored policy does not match the transparency log; refusing to serve it"
            )
        return {
            "version": p["version"],
            "text": p["text"].decode(),
            "sha256": digest,
            "log_index": p["log_index"],
            "published_ms": p["published_ms"],
        }

    # -- requests --------------------------------------------------------------------------------

    async def submit(self, staff: Staff, signed: dict[str, Any]) -> dict[str, Any]:
        """Validate an order and record it; a failed check is recorded as a refusal."""
        self._require(staff, ("legal",))
        now = self._now()
        order = signed.get("order") if isinstance(signed, dict) else None
        if not isinstance(order, dict) or not all(k in order for k in REQUIRED):
            raise BadRequest(
                f'a signed order is {{"order": {{{", ".join(REQUIRED)}...}}, "signature": ...}}',
                "invalid_order",
            )
        order_id = str(order["order_id"])[:128]
        authority = await self._store.authority(str(order["authority"]))
        reason, checks = await self._checks(order, signed.get("signature"), authority, now)
        target = None
        if reason is None:
            target = await self._target(order["target"])
            if target is None:
                reason = "the target is not a Parley account"
                checks.append({"check": CHECKS[9], "result": "failed", "reason": reason})
            else:
                checks.append({"check": CHECKS[9], "result": "passed"})
        else:
            checks.append({"check": CHECKS[9], "result": "not run"})
        requested = (
            [str(d) for d in order["requested_data"]]
            if isinstance(order["requested_data"], list)
            else []
        )
        granted = [d for d in ALLOWED if d in requested] if reason is None else []
        refused = {
            d: WHY_NOT.get(d, "only phone_number and ip_addresses can be disclosed")
            for d in requested
            if d not in ALLOWED
        }
        if reason is None and not granted:
            reason = "nothing that Parley can disclose was requested"
            checks.append({"check": CHECKS[10], "result": "failed", "reason": reason})
        else:
            checks.append({"check": CHECKS[10], "result": "not run" if reason else "passed"})
        status = "refused" if reason else "pending"
        request_id = secrets.token_hex(12)
        await self._store.add_request(
            {
                "id": request_id,
                "order_id": order_id,
                "authority_id": authority["id"] if authority else "",
                "order": json.dumps(order).encode(),
                "target_account": target,
                "status": status,
                "granted": ",".join(granted),
                "refused": json.dumps(refused).encode(),
                "approvals": "",
                "reason": reason,
                "created_ms": now,
                "notice_sent": False,
                "checks": json.dumps(checks).encode(),
            }
        )
        await self._audit.append(
            staff.actor,
            "legal.submit",
            request_id,
            {"status": status, "reason": reason},
            now,
        )
        await self._log.append(
            "legal_request",
            {
                "request": request_id,
                "jurisdiction": str(order.get("jurisdiction"))[:2],
                "category": str(order.get("offence_category"))[:40],
                "received": _quarter(now),
                "requested": sorted(set(requested))[:10],
                "status": status,
                "refusal": reason if reason else None,
                "refused_parts": sorted(refused),
                "accounts": 1 if target else 0,
                **({"replay": True} if reason == REPLAY else {}),
            },
        )
        return await self.show(staff, request_id, audit=False)

    async def _checks(
        self, order: dict[str, Any], signature: object, authority: dict[str, Any] | None, now: int
    ) -> tuple[str | None, list[dict[str, str]]]:
        """Run the checks in order; returns the first failure (the refusal reason) and
        every check as passed, failed (with the reason) or not run (after a failure)."""
        results: list[dict[str, str]] = [{"check": CHECKS[0], "result": "passed"}]
        failure: str | None = None

        def record(check: str, reason: str | None) -> bool:
            nonlocal failure
            if failure is not None:
                results.append({"check": check, "result": "not run"})
                return False
            if reason is not None:
                failure = reason
                results.append({"check": check, "result": "failed", "reason": reason})
                return False
            results.append({"check": check, "result": "passed"})
            return True

        record(CHECKS[1], None if authority is not None else "unknown authority")
        signature_ok: str | None = "the signature does not verify against the authority's key"
        if failure is None and authority is not None:
            try:
                sig = base64.b64decode(str(signature), validate=True)
                VerifyKey(authority["public_key"]).verify(sig, bytes(rfc8785.dumps(order)))
                signature_ok = None
            except (InvalidSignature, ValueError, MalformedMessage):
                pass
        record(CHECKS[2], signature_ok)
        record(
            CHECKS[3],
            "the authority's key was revoked"
            if authority is not None and authority["revoked_ms"] is not None
            else None,
        )
        record(
            CHECKS[4],
            "the order's jurisdiction is not the authority's"
            if authority is not None and order["jurisdiction"] != authority["jurisdiction"]
            else None,
        )
        issued = expires = 0
        try:
            issued, expires = (
                _ms(order["issued_at"], "issued_at"),
                _ms(order["expires_at"], "expires_at"),
            )
            (
                _ms(order["time_range"]["from"], "time_range.from"),
                _ms(order["time_range"]["to"], "time_range.to"),
            )
            dates: str | None = None
        except (BadRequest, KeyError, TypeError):
            dates = "malformed dates"
        record(CHECKS[5], dates)
        record(CHECKS[6], "the order is dated in the future" if issued > now else None)
        record(CHECKS[7], "the order has expired" if expires <= now else None)
        seen = failure is None and await self._store.order_seen(str(order["order_id"]))
        record(CHECKS[8], REPLAY if seen else None)
        return failure, results

    async def _target(self, raw: object) -> str | None:
        try:
            number = phonenumbers.parse(str(raw), None)
        except phonenumbers.NumberParseException:
            return None
        account = await self._accounts.get_by_phone(
            phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        )
        return None if account is None else account.id

    async def show(self, staff: Staff, request_id: str, audit: bool = True) -> dict[str, Any]:
        self._require(staff, ("legal", "auditor"))
        request = await self._store.request(request_id)
        if request is None:
            raise NotFound("no such request")
        if audit:
            await self._audit.append(staff.actor, "legal.show", request_id, {}, self._now())
        return request

    async def approve(self, staff: Staff, request_id: str) -> dict[str, Any]:
        self._require(staff, ("legal",))
        request = await self._pending(request_id)
        if staff.id in request["approvals"]:
            raise Conflict(
                "an officer can approve a request only once; a second officer must approve"
            )
        approvals = [*request["approvals"], staff.id]
        status = "approved" if len(approvals) >= APPROVALS_NEEDED else "pending"
        if not await self._store.update_request(
            request_id, "pending", approvals=approvals, status=status
        ):
            raise Conflict("the request changed meanwhile; try again")
        await self._audit.append(
            staff.actor,
            "legal.approve",
            request_id,
            {"approvals": len(approvals)},
            self._now(),
        )
        await self._log.append(
            "legal_decision",
            {
                "request": request_id,
                "decision": "approve",
                "approvals": len(approvals),
                "status": status,
                "date": _quarter(self._now()),
            },
        )
        if status == "approved":
            await self.send_due_notices()
        return await self.show(staff, request_id, audit=False)

    async def refuse(self, staff: Staff, request_id: str, reason: str) -> dict[str, Any]:
        self._require(staff, ("legal",))
        await self._pending(request_id)
        if not reason.strip():
            raise BadRequest("a refusal needs a reason", "invalid_request")
        if not await self._store.update_request(
            request_id, "pending", status="refused", reason=reason[:1000]
        ):
            raise Conflict("the request changed meanwhile; try again")
        await self._audit.append(
            staff.actor, "legal.refuse", request_id, {"reason": reason[:1000]}, self._now()
        )
        await self._log.append(
            "legal_decision",
            {
                "request": request_id,
                "decision": "refuse",
                "status": "refused",
                "date": _quarter(self._now()),
            },
        )
        return await self.show(staff, request_id, audit=False)

    async def export(self, staff: Staff, request_id: str) -> dict[str, Any]:
        """The signed package of an approved request: phone number and IPs only."""
        self._require(staff, ("legal",))
        request = await self._store.request(request_id)
        if request is None:
            raise NotFound("no such request")
        if request["status"] != "approved":
            raise Forbidden("only an approved request can be exported")
        now = self._now()
        order = request["order"]
        start = max(_ms(order["time_range"]["from"], "from"), now - self._retention)
        end = min(_ms(order["time_range"]["to"], "to"), now)
        package = await build(self._reader, self._key, request, (start, end), now)
        await self._audit.append(
            staff.actor, "legal.export", request_id, {"granted": request["granted"]}, now
        )
        return package

    async def send_due_notices(self) -> int:
        """Tell targets of approved orders whose non-disclosure date has passed."""
        sent = 0
        now = self._now()
        for r in await self._store.requests():
            if r["status"] != "approved" or r["notice_sent"] or not r["target_account"]:
                continue
            until = r["order"].get("non_disclosure_until")
            if until and _ms(until, "non_disclosure_until") > now:
                continue
            await self._notices.add(
                r["target_account"],
                {
                    "kind": "lawful_request",
                    "authority": r["order"]["authority"],
                    "jurisdiction": r["order"]["jurisdiction"],
                    "data": r["granted"],
                    "request": r["id"],
                },
                now,
            )
            await self._store.update_request(r["id"], "approved", notice_sent=True)
            sent += 1
        return sent

    async def _pending(self, request_id: str) -> dict[str, Any]:
        request = await self._store.request(request_id)
        if request is None:
            raise NotFound("no such request")
        if request["status"] != "pending":
            raise Conflict(f"this request is already {request['status']}")
        return request

    @staticmethod
    def _require(staff: Staff, roles: tuple[str, ...]) -> None:
        if staff.role not in roles:
            raise Forbidden(f"the {staff.role} role cannot do this")

    # -- the console's views (each audited) ------------------------------------------------------

    async def list_requests(self, staff: Staff) -> list[dict[str, Any]]:
        """Every lawful request, oldest first."""
        self._require(staff, ("legal", "auditor"))
        found = await self._store.requests()
        await self._audit.append(
            staff.actor, "legal.list", "requests", {"count": len(found)}, self._now()
        )
        return found

    async def authorities(self, staff: Staff) -> list[dict[str, Any]]:
        """Registered authorities, revoked ones included, with their public keys."""
        self._require(staff, ("legal", "auditor"))
        found = await self._store.authorities()
        await self._audit.append(
            staff.actor, "authority.list", "authorities", {"count": len(found)}, self._now()
        )
        return found

    async def notice_schedule(self, staff: Staff) -> list[dict[str, Any]]:
        """When each approved request's target is (or was) told: at approval, or when
        the order's non-disclosure date passes."""
        self._require(staff, ("legal", "auditor"))
        schedule = []
        for r in await self._store.requests():
            if r["status"] != "approved" or not r["target_account"]:
                continue
            until = r["order"].get("non_disclosure_until")
            try:
                due = _ms(until, "non_disclosure_until") if until else None
            except BadRequest:
                due = None
            schedule.append(
                {
                    "request": r["id"],
                    "authority": r["order"].get("authority"),
                    "data": r["granted"],
                    "due_ms": due,
                    "sent": r["notice_sent"],
                }
            )
        await self._audit.append(
            staff.actor, "legal.notices", "schedule", {"count": len(schedule)}, self._now()
        )
        return schedule

    async def policy_history(self) -> list[dict[str, Any]]:
        """Every privacy-policy version whose hash is in the transparency log (public);
        a version that does not match its log entry is listed as such, without text."""
        out = []
        for p in await self._store.policies():
            found = await self._log.entries(p["log_index"], p["log_index"] + 1)
            entry = found[0] if found else None
            digest = hashlib.sha256(p["text"]).hexdigest()
            matches = (
                entry is not None
                and entry["kind"] == "privacy_policy"
                and entry["body"].get("sha256") == digest
                and entry["body"].get("version") == p["version"]
            )
            out.append(
                {
                    "version": p["version"],
                    "sha256": digest,
                    "log_index": p["log_index"],
                    "published_ms": p["published_ms"],
                    "in_log": matches,
                    "text": p["text"].decode(errors="replace") if matches else None,
                }
            )
        return out
