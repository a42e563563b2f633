"""Contacts and identity: directory lookups proven by key transparency, pinned
identities, safety numbers, and who a sender is."""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from typing import Any

from parley.client import groups as grp
from parley.client.api import b64e
from parley.client.base import (
    KT_GRACE_S,
    MAX_NAME,
    PROOF_TTL,
    ClientError,
    Core,
    IdentityChanged,
    Session,
    normalize_phone,
)
from parley.client.device import Received
from parley.client.kt import (
    KeyTransparencyError,
    verified_lookup,
)
from parley.client.state import ContactRecord
from parley.client.store import ProfileError
from parley.errors import (
    ParleyError,
    ServerError,
)
from parley.protocol import group_state as gs
from parley.protocol.fingerprint import display, parse, safety_number
from parley.protocol.wire import IdentityPublic


class Contacts(Core):
    async def _contact(self, s: Session, phone: str) -> ContactRecord:
        """Look a phone up; its identity is the one the key directory proves (never the
        server's word alone), checked against what we trusted before."""
        phone = normalize_phone(phone, self.known_phones(s))
        for again in (False, True):
            cached = self._lookups.get(phone)
            fresh = again or cached is None or time.monotonic() - cached[0] >= PROOF_TTL
            if not fresh and cached is not None:
                info = cached[1]
            else:
                try:
                    info = await s.api.call("GET", f"/v1/directory/{phone}")
                except ServerError as exc:
                    if exc.code == "not_found":
                        raise ClientError(f"{phone} is not on Parley") from exc
                    raise
                self._lookups[phone] = (time.monotonic(), info)
            published = await self._published(s, str(info["account_id"]), fresh)
            if b64e(published["identity_key"]) == info["identity_key"]:
                return self._remember(s, info["account_id"], info["identity_key"], phone=phone)
            if fresh:
                break
        raise KeyTransparencyError(
            f"the server's identity key for {phone} is not the one in the key directory"
        )

    async def _published(self, s: Session, account_id: str, fresh: bool = True) -> dict[str, Any]:
        """An account's identity and devices as the key directory proves them, waiting
        briefly for an epoch in progress (a brand-new account). Unless ``fresh``, a
        proof this process verified less than ``PROOF_TTL`` seconds ago is reused."""
        cached = self._proofs.get(account_id)
        if not fresh and cached is not None and time.monotonic() - cached[0] < PROOF_TTL:
            return cached[1]
        deadline = time.monotonic() + KT_GRACE_S
        while True:
            try:
                published = await verified_lookup(s.api, account_id)
                self._proofs[account_id] = (time.monotonic(), published)
                return published
            except ServerError as exc:
                if exc.code != "not_found" or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.3)

    async def _first_message_refusal(  # noqa: PLR0911 - one answer per rule
        self, s: Session, frame: dict[str, Any], claimed: bytes
    ) -> str | None:
        """Why a first message (PreKeyMessage) must be refused, or None. Its identity
        must be the sender's as the key directory proves it, or as pinned for that
        contact, and its device one the directory lists: a server that builds a first
        message under its own key and labels it as someone's is refused here. A
        recent proof may admit it; only a fresh one may refuse it."""
        sender, device = str(frame["sender"]), int(frame["sender_device"])
        try:
            published = await self._published(s, sender, fresh=False)
            if device not in published["devices"] or claimed != published["identity_key"]:
                published = await self._published(s, sender)
        except ParleyError:
            return "the key directory does not confirm its sender's keys"
        if device not in published["devices"]:
            return "it comes from a device the key directory does not list for its sender"
        if sender == s.device.account_id:
            mine = s.device.identity.public.to_bytes()
            return None if claimed == mine else "it claims your account under another identity"
        contact = s.state.contacts.get(sender)
        pinned = base64.b64decode(contact.identity) if contact else None
        if claimed == published["identity_key"]:
            if pinned is not None and pinned != claimed:
                record = self._remember(s, sender, b64e(claimed))  # the identity-change flow
                if record.verified:
                    return (
                        "it comes under a new identity of a contact you verified; compare "
                        "the safety number again before you trust it"
                    )
            return None
        if pinned is not None and pinned == claimed:
            return None
        return "its identity is neither the key directory's nor the one you know for the sender"

    def _remember(
        self, s: Session, account_id: str, identity_key: str, phone: str | None = None
    ) -> ContactRecord:
        contacts = s.state.contacts
        contact = contacts.get(account_id)
        if contact is None:
            contact = contacts[account_id] = ContactRecord(
                account_id, phone=phone or "", identity=identity_key
            )
        elif contact.identity != identity_key:
            # A new identity: sessions with the old one are dropped; a verified
            # contact stays blocked until the user checks the new safety number.
            contact.previous = contact.identity
            contact.identity = identity_key
            contact.changed = True
            contact.notified = False
            for key in [k for k in s.device.sessions if k[0] == account_id]:
                del s.device.sessions[key]
        if phone:
            contact.phone = phone
            s.state.phones[phone] = account_id
        return contact

    def _check_sendable(self, contact: ContactRecord) -> None:
        if contact.changed and contact.verified:
            raise IdentityChanged(
                f"the safety number with {contact.phone} has changed: compare it ('parley safety-number {contact.phone}') "
                f"and run 'parley trust {contact.phone} --safety-number DIGITS' before sending"
            )

    async def safety_number(self, phone: str) -> str:
        async def act(s: Session) -> str:
            contact = await self._contact(s, phone)
            theirs = IdentityPublic.from_bytes(base64.b64decode(contact.identity))
            return display(safety_number(s.device.identity.public, s.phone, theirs, phone))

        return str(await self.run(act))

    async def trust(self, phone: str, digits: str) -> None:
        async def act(s: Session) -> None:
            contact = await self._contact(s, phone)
            theirs = IdentityPublic.from_bytes(base64.b64decode(contact.identity))
            expected = safety_number(s.device.identity.public, s.phone, theirs, phone)
            try:
                given = parse(digits)
            except ValueError as exc:
                raise ClientError(str(exc)) from exc
            if not hmac.compare_digest(given, expected):
                raise ClientError(
                    f"that is not the safety number with {phone}: nothing was changed"
                )
            contact.verified, contact.changed, contact.previous = True, False, None

        await self.run(act)

    def warnings(self) -> list[str]:
        """Identity changes to show: for a verified contact on every command until the
        user re-verifies; for an unverified one, once."""
        try:
            with self.profile.locked():
                session = self._open()
                state = session.state
                shown = []
                for account, c in state.contacts.items():
                    if c.changed and (c.verified or not c.notified):
                        shown.append(
                            f"warning: the safety number with {c.phone or account} changed; "
                            f"compare it with 'parley safety-number {c.phone or account}'"
                        )
                        c.notified = True
                shown += [f"ALARM: {a}; check with 'parley keys check'" for a in state.kt.alarms]
                if shown:
                    self._save(session)
                return shown
        except ProfileError:
            return []

    async def _member_phone(self, s: Session, gid: str, account: str) -> str:
        """A member's number: known from contacts, or the adding admin's word for it once
        the directory agrees (same account and the identity the admin signed); else the
        account id."""
        if account == s.device.account_id:
            return s.phone
        contact = s.state.contacts.get(account)
        if contact and contact.phone:
            return contact.phone
        log = grp.log_of(s.device, gid)
        added = [
            a
            for change in (log.changes if log else [])
            for a in change.actions
            if isinstance(a, gs.Add) and a.member == account and a.phone
        ]
        if not added:
            return account
        hint = added[-1]
        try:
            info = await s.api.call("GET", f"/v1/directory/{normalize_phone(hint.phone)}")
        except (ServerError, ClientError):
            return account
        if info["account_id"] == account and info["identity_key"] == b64e(hint.identity):
            self._remember(s, account, info["identity_key"], phone=hint.phone)
            return hint.phone
        return account

    async def _sender_phone(self, s: Session, received: Received, claimed: str | None) -> str:
        """The sender's phone, believed only if the directory says that number is theirs."""
        contact = s.state.contacts.get(received.sender)
        if contact and contact.phone:
            return contact.phone
        if received.sender == s.device.account_id:
            return s.phone
        if claimed:
            try:
                info = await s.api.call("GET", f"/v1/directory/{claimed}")
            except ServerError:
                info = None
            if info and info["account_id"] == received.sender:
                self._remember(s, received.sender, info["identity_key"], phone=claimed)
                return claimed
        return received.sender

    @staticmethod
    def _sender_name(s: Session, sender: str, claimed: object) -> str:
        """The display name a contact gave itself (inside the encryption)."""
        if sender == s.device.account_id:
            return s.state.name
        contact = s.state.contacts.get(sender)
        if contact is None:
            return ""
        if isinstance(claimed, str) and len(claimed) <= MAX_NAME:
            contact.name = claimed
        return contact.name
