"""Prekey upload and bundle fetch.

Uploads are checked against the account's identity key (both prekey
signatures), so the server never hands out a bundle that a client would
refuse. Fetching consumes one one-time key of each kind per device; when a
device's one-time keys fall below the threshold, its owner is told
(``prekeys_low`` on the websocket, and ``/v1/keys/status``).
"""

from __future__ import annotations

from collections.abc import Callable

from parley.errors import BadRequest, InvalidSignature, MalformedMessage, NotFound
from parley.protocol.keys import verify_kem_prekey, verify_signed_prekey
from parley.protocol.wire import IdentityPublic
from parley.server.handlers.accounts import AccountsHandler, Principal
from parley.server.handlers.ratelimit import Limiter
from parley.server.storage.keys import DeviceBundle, KemKey, KeyStore, OneTimeKey, SignedKey

# The key records are re-exported: routes take them from here, not from storage
# (parley/server/api/__init__.py).
__all__ = [
    "BUNDLES_PER_CONTACT",
    "MAX_ONE_TIME_UPLOAD",
    "DeviceBundle",
    "KemKey",
    "KeysHandler",
    "OneTimeKey",
    "SignedKey",
    "validate_upload",
]

MAX_ONE_TIME_UPLOAD = 200
BUNDLES_PER_CONTACT = 5  # then one more every 10 minutes, per requester and contact


class KeysHandler:
    def __init__(
        self,
        accounts: AccountsHandler,
        keys: KeyStore,
        limiter: Limiter,
        low_threshold: int,
        notify_low: Callable[[str, int, int, int], None],
    ) -> None:
        self._accounts = accounts
        self._keys = keys
        self._limiter = limiter
        self._low = low_threshold
        self._notify_low = notify_low

    async def upload(
        self,
        who: Principal,
        signed: SignedKey | None,
        kem_last_resort: KemKey | None,
        one_time: list[OneTimeKey],
        kem_one_time: list[KemKey],
    ) -> None:
        account = await self._accounts.account(who.account_id)
        validate_upload(account.identity_key, signed, kem_last_resort, one_time, kem_one_time)
        await self._keys.upload(
            who.account_id, who.device_id, signed, kem_last_resort, one_time, kem_one_time
        )

    async def store_validated(
        self,
        who: Principal,
        signed: SignedKey,
        kem_last_resort: KemKey,
        one_time: list[OneTimeKey],
        kem_one_time: list[KemKey],
    ) -> None:
        """Keys sent with registration or linking, already checked by ``validate_upload``."""
        await self._keys.upload(
            who.account_id, who.device_id, signed, kem_last_resort, one_time, kem_one_time
        )

    async def status(self, who: Principal) -> tuple[int, int, bool]:
        one_time, kem = await self._keys.counts(who.account_id, who.device_id)
        return one_time, kem, min(one_time, kem) < self._low

    async def fetch(
        self, who: Principal, account_id: str, device: int | None
    ) -> tuple[bytes, list[DeviceBundle]]:
        """The identity key and a bundle per device (or for one device)."""
        await self._limiter.check("bundle", who.account_id, 200, 2)
        if account_id != who.account_id:
            # One account cannot drain another's one-time prekeys: a session needs
            # one bundle per device, so a few fetches per contact are plenty.
            await self._limiter.check(
                "bundle-contact", f"{who.account_id}:{account_id}", BUNDLES_PER_CONTACT, 1 / 600
            )
        account = await self._accounts.account(account_id)
        device_ids = await self._accounts.device_ids(account_id)
        if device is not None:
            if device not in device_ids:
                raise NotFound("no such device")
            device_ids = [device]
        bundles = []
        for device_id in device_ids:
            if account_id == who.account_id and device_id == who.device_id:
                continue
            bundle = await self._keys.take_bundle(account_id, device_id)
            if bundle is None:
                continue  # a device that has not uploaded keys yet cannot be messaged
            bundles.append(bundle)
            one_time, kem = await self._keys.counts(account_id, device_id)
            if min(one_time, kem) < self._low:
                self._notify_low(account_id, device_id, one_time, kem)
        return account.identity_key, bundles


def validate_upload(
    identity_key: bytes,
    signed: SignedKey | None,
    kem_last_resort: KemKey | None,
    one_time: list[OneTimeKey],
    kem_one_time: list[KemKey],
) -> None:
    """Check bounds and every prekey signature against the identity key (400 otherwise)."""
    if len(one_time) > MAX_ONE_TIME_UPLOAD or len(kem_one_time) > MAX_ONE_TIME_UPLOAD:
        raise BadRequest(f"at most {MAX_ONE_TIME_UPLOAD} one-time keys per upload")
    if kem_last_resort is not None and not kem_last_resort.last_resort:
        raise BadRequest("the last-resort KEM key must be marked last_resort")
    if any(k.last_resort for k in kem_one_time):
        raise BadRequest("one-time KEM keys must not be marked last_resort")
    try:
        identity = IdentityPublic.from_bytes(identity_key)
        if signed is not None:
            verify_signed_prekey(identity, signed.key_id, signed.public_key, signed.signature)
        for kem in [*([kem_last_resort] if kem_last_resort else []), *kem_one_time]:
            verify_kem_prekey(identity, kem.key_id, kem.public_key, kem.last_resort, kem.signature)
    except (InvalidSignature, MalformedMessage) as exc:
        raise BadRequest(
            "a prekey signature does not verify against the identity key", "invalid_signature"
        ) from exc
