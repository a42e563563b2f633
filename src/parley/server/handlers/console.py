"""Staff console sessions: sign-in with a staff credential, a cookie, CSRF tokens.

Theory of operation. ``sign_in`` checks a staff credential exactly as the API
does (``ModerationHandler.authenticate``) and opens a session: a random 256-bit
token goes to the browser in an HttpOnly, SameSite=Strict cookie; the database
keeps only ``HMAC(pepper, "console-session" || token)``, so a copy of it opens no
session. A session ends after ``idle_ms`` without a request, after ``max_ms`` in
any case, at sign-out, and when its staff credential is revoked. Every request
re-reads the staff member, so a revoked credential's sessions stop at once and a
role is always the current one.

The CSRF token of a session is ``HMAC(pepper, "console-csrf" || token)``: bound
to the session, never stored, and useless without the cookie it derives from.
The sign-in form, before any session, carries a token bound to a random
pre-session cookie in the same way (login CSRF). Roles are not checked here:
every page and action calls the same handler method as the API, which checks.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from parley.crypto.primitives import constant_time_equal, hmac_sha256
from parley.errors import Forbidden, Unauthorized
from parley.server.handlers.moderation import ModerationHandler, Staff
from parley.server.storage.moderation import AuditLog, SessionStore

__all__ = ["ConsoleHandler", "Session", "SessionExpired"]


class SessionExpired(Unauthorized):
    code = "session_expired"


class CsrfRefused(Forbidden):
    code = "csrf_refused"


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    staff: Staff
    expires_ms: int
    csrf: str


class ConsoleHandler:
    def __init__(
        self,
        sessions: SessionStore,
        moderation: ModerationHandler,
        audit: AuditLog,
        pepper: bytes,
        idle_ms: int,
        max_ms: int,
        clock_ms: Callable[[], int],
    ) -> None:
        self._sessions = sessions
        self._moderation = moderation
        self._audit = audit
        self._pepper = pepper
        self.idle_ms = idle_ms
        self._max_ms = max_ms
        self._now = clock_ms

    def _mac(self, label: bytes, token: str) -> bytes:
        return hmac_sha256(self._pepper, label + b"\x00" + token.encode())

    def csrf_for(self, token: str) -> str:
        return self._mac(b"console-csrf", token).hex()

    @staticmethod
    def new_token() -> str:
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")

    def check_csrf(self, token: str | None, submitted: str | None) -> None:
        """The form's token must be the one derived from this cookie's token."""
        if (
            not token
            or not submitted
            or not constant_time_equal(self.csrf_for(token).encode(), submitted.encode())
        ):
            raise CsrfRefused("the form's security token is missing or wrong; reload the page")

    async def sign_in(self, credential: str) -> Session:
        """Open a session for a valid, unrevoked staff credential (audited either way)."""
        try:
            staff = await self._moderation.authenticate(f"Bearer {credential.strip()}")
        except Unauthorized:
            await self._audit.append(
                "console", "console.sign_in_refused", "console", {}, self._now()
            )
            raise Unauthorized("that staff credential is not valid") from None
        token = self.new_token()
        now = self._now()
        expires = now + min(self.idle_ms, self._max_ms)
        await self._sessions.add(self._mac(b"console-session", token), staff.id, now, expires)
        await self._audit.append(staff.actor, "console.sign_in", "console", {}, now)
        return Session(token, staff, expires, self.csrf_for(token))

    async def session(self, token: str | None) -> Session:
        """The session of this cookie token, extended by the idle time (never past the
        maximum); ``SessionExpired`` when there is none or it ended."""
        if not token or len(token) > 100:
            raise SessionExpired("please sign in")
        id_hash = self._mac(b"console-session", token)
        now = self._now()
        found = await self._sessions.get(id_hash, now)
        if found is None:
            raise SessionExpired("your session has ended; please sign in again")
        staff_id, created, expires = found
        staff = await self._moderation.member(staff_id)
        if staff is None:  # revoked since
            await self._sessions.remove(id_hash)
            raise SessionExpired("your session has ended; please sign in again")
        wanted = min(now + self.idle_ms, created + self._max_ms)
        if wanted - expires > self.idle_ms // 10:  # write at most every tenth of the idle time
            await self._sessions.extend(id_hash, wanted)
            expires = wanted
        return Session(token, staff, expires, self.csrf_for(token))

    async def sign_out(self, session: Session) -> None:
        await self._sessions.remove(self._mac(b"console-session", session.token))
        await self._audit.append(
            session.staff.actor, "console.sign_out", "console", {}, self._now()
        )
