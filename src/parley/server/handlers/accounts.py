"""Registration, authentication, devices and linking.

Privacy rules kept here:
- answers never reveal whether a number is registered: requesting a code
  always answers the same, and a wrong code, an unknown account or a bad
  credential all give the same 401/400;
- codes and credentials are stored only as HMAC-SHA256 under a server pepper.
  Credentials are 256-bit random tokens, so a fast keyed hash is enough (no
  password to brute-force; Argon2 is for the client's passphrase);
- the connection log keeps (account, IP, time) for the retention period only.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from parley.crypto.primitives import constant_time_equal, hmac_sha256
from parley.errors import BadRequest, Forbidden, NotFound, Unauthorized
from parley.phone import InvalidPhone, e164
from parley.server.config import ServerConfig
from parley.server.handlers.ratelimit import Limiter
from parley.server.sms import SmsSender
from parley.server.storage.accounts import (
    PRIMARY_DEVICE,
    Account,
    AccountStore,
    CodeStore,
    ConnectionLog,
    ProvisioningStore,
)

CONNECTION_LOG_INTERVAL_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated device."""

    account_id: str
    device_id: int


@dataclass(frozen=True, slots=True)
class Credentials:
    account_id: str
    device_id: int
    token: str

    @property
    def header(self) -> str:
        return f"Bearer {self.account_id}.{self.device_id}.{self.token}"


def normalize_phone(raw: str) -> str:
    """E.164, or ``BadRequest(invalid_phone)``."""
    try:
        return e164(raw)
    except InvalidPhone as exc:
        raise BadRequest(str(exc), "invalid_phone") from exc


def day_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


class AccountsHandler:
    def __init__(
        self,
        config: ServerConfig,
        accounts: AccountStore,
        codes: CodeStore,
        provisioning: ProvisioningStore,
        connections: ConnectionLog,
        sms: SmsSender,
        limiter: Limiter,
        pepper: bytes,
        clock_ms: Callable[[], int],
    ) -> None:
        self._config = config
        self._accounts = accounts
        self._codes = codes
        self._provisioning = provisioning
        self._connections = connections
        self._sms = sms
        self._limiter = limiter
        self._pepper = pepper
        self._now = clock_ms
        self._auth_cache: dict[str, dict[int, bytes]] = {}  # account -> device -> hash
        self._seen_day: dict[str, int] = {}
        self._logged_ip: dict[tuple[str, str], int] = {}
        self._devices: dict[str, list[int]] = {}
        self._accounts_cache: dict[str, Account] = {}
        self.on_device_removed: Callable[[str, int], None] = lambda _a, _d: None
        self.check_login: Callable[[str], None] = lambda _a: None  # moderation (Standing)
        self.on_keys_changed: Callable[[], None] = lambda: None  # key transparency (KtHandler)
        # A cluster tells the other nodes to drop their cached copy of the account.
        self.on_account_changed: Callable[[str], None] = lambda _a: None
        # Off while cluster signals are down: a revocation elsewhere must not be missed.
        self.caching = True

    # -- registration ------------------------------------------------------------------

    def _hash(self, label: str, value: str) -> bytes:
        return hmac_sha256(self._pepper, f"{label}\x00{value}".encode())

    async def request_code(self, raw_phone: str, ip: str) -> None:
        phone = normalize_phone(raw_phone)
        await self._limiter.check(
            "code-ip",
            ip,
            self._config.registrations_per_ip_hour,
            self._config.registrations_per_ip_hour / 3600,
        )
        await self._limiter.check("code-phone", phone, 3, 1 / 300)
        code = f"{secrets.randbelow(1_000_000):06d}"
        await self._codes.put(
            phone, self._hash("code", phone + ":" + code), self._now() + self._config.code_ttl_ms
        )
        await self._sms.send_code(phone, code)

    async def verify(self, raw_phone: str, code: str, identity_key: bytes, ip: str) -> Credentials:
        """Finish registration: the code must match, in time, within the attempt bound."""
        phone = normalize_phone(raw_phone)
        await self._limiter.check(
            "verify-ip",
            ip,
            self._config.registrations_per_ip_hour,
            self._config.registrations_per_ip_hour / 3600,
        )
        expected = self._hash("code", phone + ":" + code)
        ok = await self._codes.check(
            phone,
            lambda stored: constant_time_equal(stored, expected),
            self._now(),
            self._config.code_attempts,
        )
        if ok == "wrong":
            raise BadRequest("wrong code", "invalid_code")
        if ok == "exhausted":
            raise BadRequest(
                "too many wrong codes: this code no longer works; ask for a new one",
                "too_many_attempts",
            )
        if ok == "none":
            raise BadRequest(
                "no code is waiting for this number (it expired, was used, or too many wrong "
                "codes were tried); ask for a new one",
                "no_code",
            )
        token = _new_token()
        now = self._now()
        old = await self._accounts.get_by_phone(phone)
        if old is not None:
            for device_id in await self._accounts.device_ids(old.id):
                self._forget_device(old.id, device_id)
        account_id, _ = await self._accounts.register(
            phone, identity_key, self._hash("credential", token), day_of(now), now
        )
        self.forget_account(account_id)
        self.on_account_changed(account_id)
        self.on_keys_changed()
        await self._log_connection(account_id, ip)
        return Credentials(account_id, PRIMARY_DEVICE, token)

    # -- authentication ------------------------------------------------------------------------

    async def authenticate(self, header: str | None, ip: str) -> Principal:
        """Check ``Bearer ACCOUNT.DEVICE.TOKEN``; every failure is the same 401."""
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing credentials")
        try:
            account_id, device, token = header[7:].strip().split(".", 2)
            device_id = int(device)
        except ValueError as exc:
            raise Unauthorized("invalid credentials") from exc
        stored = self._auth_cache.get(account_id, {}).get(device_id) if self.caching else None
        if stored is None:
            stored = await self._accounts.credential_hash(account_id, device_id)
            if stored is None:
                raise Unauthorized("invalid credentials")
            if self.caching:
                if len(self._auth_cache) > 100_000:
                    self._auth_cache.clear()
                self._auth_cache.setdefault(account_id, {})[device_id] = stored
        if not constant_time_equal(stored, self._hash("credential", token)):
            raise Unauthorized("invalid credentials")
        self.check_login(account_id)
        await self._touch(account_id, ip)
        return Principal(account_id, device_id)

    async def _touch(self, account_id: str, ip: str) -> None:
        now = self._now()
        day = now // 86_400_000
        if self._seen_day.get(account_id) != day:
            self._seen_day[account_id] = day
            await self._accounts.touch(account_id, day_of(now))
        await self._log_connection(account_id, ip)

    async def _log_connection(self, account_id: str, ip: str) -> None:
        """At most one connection-log row per account and IP per hour."""
        now = self._now()
        last = self._logged_ip.get((account_id, ip))
        if last is None or now - last >= CONNECTION_LOG_INTERVAL_MS:
            if len(self._logged_ip) > 100_000:
                self._logged_ip.clear()
            self._logged_ip[(account_id, ip)] = now
            await self._connections.record(account_id, ip, now)

    # -- accounts and devices -------------------------------------------------------------------

    async def account(self, account_id: str) -> Account:
        """An account by id (cached: the send path must not read the database)."""
        account = self._accounts_cache.get(account_id) if self.caching else None
        if account is None:
            account = await self._accounts.get(account_id)
            if account is None:
                raise NotFound("no such account")
            if len(self._accounts_cache) > 100_000:
                self._accounts_cache.clear()
            if self.caching:
                self._accounts_cache[account_id] = account
        return account

    async def lookup(self, who: Principal, raw_phone: str) -> Account:
        await self._limiter.check("lookup", who.account_id, 100, 1)
        account = await self._accounts.get_by_phone(normalize_phone(raw_phone))
        if account is None:
            raise NotFound("no such contact")
        return account

    def cached_device_ids(self, account_id: str) -> list[int] | None:
        """An account's device ids if the account and its devices are both cached
        (no I/O: the send path's steady state), else None."""
        if not self.caching or account_id not in self._accounts_cache:
            return None
        return self._devices.get(account_id)

    async def device_ids(self, account_id: str) -> list[int]:
        cached = self._devices.get(account_id) if self.caching else None
        if cached is None:
            cached = await self._accounts.device_ids(account_id)
            if self.caching:
                self._devices[account_id] = cached
        return cached

    async def start_linking(self, who: Principal, lookup: bytes, blob: bytes) -> int:
        """The primary device leaves an encrypted provisioning blob under a lookup key
        derived from the code it shows; the server never sees the code."""
        if who.device_id != PRIMARY_DEVICE:
            raise Forbidden("only the primary device can link devices")
        expires = self._now() + self._config.code_ttl_ms
        await self._provisioning.put(
            hmac_sha256(self._pepper, lookup), who.account_id, blob, expires
        )
        return expires

    async def provisioning_blob(self, lookup: bytes, ip: str) -> bytes:
        """The encrypted provisioning message for a lookup key (not consumed)."""
        await self._limiter.check("link-ip", ip, 20, 1 / 60)
        blob = await self._provisioning.peek(hmac_sha256(self._pepper, lookup), self._now())
        if blob is None:
            raise BadRequest("unknown or expired provisioning code", "invalid_code")
        return blob

    async def link(self, lookup: bytes, ip: str) -> tuple[Credentials, bytes]:
        await self._limiter.check("link-ip", ip, 20, 1 / 60)
        taken = await self._provisioning.take(hmac_sha256(self._pepper, lookup), self._now())
        if taken is None:
            raise BadRequest("unknown or expired provisioning code", "invalid_code")
        account_id, blob = taken
        token = _new_token()
        device_id = await self._accounts.add_device(
            account_id,
            self._hash("credential", token),
            self._config.max_linked_devices + 1,
            self._now(),
        )
        if device_id is None:
            raise Forbidden(
                f"an account has at most {self._config.max_linked_devices} linked devices"
            )
        self._devices.pop(account_id, None)
        self.on_account_changed(account_id)
        self.on_keys_changed()
        await self._log_connection(account_id, ip)
        return Credentials(account_id, device_id, token), blob

    async def unlink(self, who: Principal, device_id: int) -> None:
        if device_id == PRIMARY_DEVICE:
            raise BadRequest("the primary device cannot be unlinked; delete the account instead")
        if who.device_id not in (PRIMARY_DEVICE, device_id):
            raise Forbidden("only the primary device can unlink other devices")
        if not await self._accounts.remove_device(who.account_id, device_id):
            raise NotFound("no such device")
        self._forget_device(who.account_id, device_id)

    async def delete_account(self, who: Principal) -> None:
        for device_id in await self._accounts.device_ids(who.account_id):
            self._forget_device(who.account_id, device_id)
        await self._accounts.delete_account(who.account_id)
        self.forget_account(who.account_id)
        self.on_account_changed(who.account_id)

    def forget_account(self, account_id: str) -> None:
        """Drop this process's cached copy of an account (changed here or elsewhere)."""
        self._auth_cache.pop(account_id, None)
        self._devices.pop(account_id, None)
        self._accounts_cache.pop(account_id, None)

    def forget_all(self) -> None:
        self._auth_cache.clear()
        self._devices.clear()
        self._accounts_cache.clear()

    def _forget_device(self, account_id: str, device_id: int) -> None:
        """Revoke at once: drop cached credentials and close the device's socket."""
        self._auth_cache.get(account_id, {}).pop(device_id, None)
        self._devices.pop(account_id, None)
        self.on_device_removed(account_id, device_id)


def _new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
