"""What the ``parley`` command does, as async operations on an encrypted profile.

Every operation runs under the profile's lock and commits what it changed before
returning, so separate ``parley`` processes sharing a profile stay consistent.
An ``App`` keeps the profile open between operations (the daemon, ``receive``);
it reloads only when another process wrote the profile in between.

Conventions inside encrypted messages (the ``control`` field, JSON):
``from`` is the sender's phone number, which the receiver checks against the
directory (the server's sender account must own that number) before showing
it; ``sender_key`` carries a group sender key; ``group`` carries a group's
id, name and members; ``sync`` marks a copy of one's own message for one's
other devices, with the ``chat`` it was sent to.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import hashlib
import json
import secrets
from typing import Any

from parley.client.api import ApiClient, b64e, keys_json
from parley.client.base import (
    LINK_CODE_BYTES,
    MAX_REPORT_COMMENT,
    MAX_REPORT_CONTEXT,
    RETRIES,
    ClientError,
    IdentityChanged,
    Session,
    check_name,
    normalize_phone,
    now_ms,
)
from parley.client.device import DeviceState
from parley.client.kt import (
    publish_device_list,
    verified_head,
)
from parley.client.monitoring import _start_monitoring
from parley.client.receiving import Receiving
from parley.client.records import ChatSummary, Message
from parley.client.state import Policy, ProfileState
from parley.client.store import ProfileError
from parley.crypto.primitives import aead_decrypt, aead_encrypt, hkdf
from parley.errors import (
    DecryptionError,
    ParleyError,
    ServerError,
)
from parley.protocol.keys import IdentityKeyPair

__all__ = [
    "App",
    "ClientError",
    "IdentityChanged",
    "Session",
    "normalize_phone",
    "verified_policy",
]


class App(Receiving):
    """Every operation of the ``parley`` client (see client/base.py for the layers)."""

    # -- registration -----------------------------------------------------------------------------

    def _make_room(self, force: bool) -> None:
        """Refuse to replace a registered profile; with ``force``, set it aside
        (renamed, never deleted). A registration that was never verified, opened
        with the same passphrase, is simply started again."""
        if not self.profile.exists():
            return
        if force:
            return
        try:
            state = ProfileState.from_records(self.profile.load())
        except ProfileError as exc:
            raise ClientError(
                f"a Parley profile already exists in {self.profile.dir} and was left untouched; "
                "use another --profile, or add --force to set it aside (renamed, never deleted)"
            ) from exc
        if state.registered:
            raise ClientError(
                f"{self.profile.dir} already holds the registered profile of {state.phone}; "
                "it was left untouched. Use another --profile, or add --force to set it aside "
                "(renamed, never deleted)"
            )

    def _set_aside(self, force: bool) -> None:
        if force and self.profile.exists():
            moved = self.profile.set_aside()
            self.notify(f"the previous profile was kept as {moved}")

    async def register(self, phone: str, server: str, force: bool = False) -> str:
        phone = normalize_phone(phone)
        self._make_room(force)
        api = ApiClient(server, retries=RETRIES, on_retry=self.notify)
        try:
            await api.request_code(phone)
        finally:
            await api.close()
        self._set_aside(force)
        async with self._exclusive():
            self.profile.create(ProfileState(server=api.base_url, pending_phone=phone).records())
        return phone

    async def verify(self, code: str, name: str | None) -> dict[str, Any]:
        code = code.strip()
        if len(code) != 6 or not code.isdigit():
            raise ClientError("the code is the 6 digits from the SMS")
        if name is not None:
            check_name(name)
        async with self._exclusive():
            state = ProfileState.from_records(self.profile.load())
            phone = state.pending_phone
            if not phone:
                raise ClientError(
                    "nothing to verify: run 'parley register PHONE --server URL' first"
                )
            device = DeviceState(IdentityKeyPair.generate(secrets.token_bytes), secrets.token_bytes)
            ot, kem = device.new_one_time_keys(50)
            if state.registered:
                raise ClientError("this profile is already registered")
            api = ApiClient(state.server, retries=RETRIES, on_retry=self.notify)
            try:
                result = await api.verify(
                    phone,
                    code,
                    device.identity,
                    keys_json(device.signed_prekey, device.kem_last_resort, ot, kem),
                )
                me = await api.call("GET", "/v1/accounts/me")
                kt_view = await _start_monitoring(
                    api, device.identity, result["account_id"], int(result["device_id"]), None
                )
            finally:
                await api.close()
            device.account_id, device.device_id = result["account_id"], int(result["device_id"])
            device.prekeys_rotated_ms = now_ms()  # the keys just uploaded are fresh
            state.pending_phone = None
            state.kt = kt_view
            state.prekeys_uploaded_ms = device.prekeys_rotated_ms
            state.phone, state.name = me["phone"], name or ""
            state.credential = result["credential"]
            state.device = device.to_dict()
            self.profile.save(state.records())
            return {
                "account_id": device.account_id,
                "device_id": device.device_id,
                "phone": me["phone"],
            }

    def whoami(self) -> dict[str, Any]:
        """Who this profile is, from the profile alone (no network)."""
        state = self.local_state()
        assert state.device is not None
        device = DeviceState.from_dict(state.device, secrets.token_bytes)
        return {
            "phone": state.phone,
            "name": state.name,
            "account_id": device.account_id,
            "device_id": device.device_id,
            "server": state.server,
            "identity_key": b64e(device.identity.public.to_bytes()),
        }

    # -- reports -------------------------------------------------------------------------------------

    async def report(
        self, message_id: str, reason: str, context: int, comment: str
    ) -> dict[str, Any]:
        """Reveal one received message (and up to five before it in the same chat) to
        the platform's moderators, with the franking proof that each was really sent."""
        if not 0 <= context <= MAX_REPORT_CONTEXT:
            raise ClientError(f"--context is 0..{MAX_REPORT_CONTEXT}")
        if len(comment) > MAX_REPORT_COMMENT:
            raise ClientError(f"the comment is limited to {MAX_REPORT_COMMENT} characters")

        async def act(s: Session) -> dict[str, Any]:
            found = self.profile.find_message(message_id)
            if found is None:
                raise ClientError(f"no message {message_id} in this profile")
            target = found.to_entry()
            if target.get("outgoing") or "franking" not in target or target.get("event"):
                raise ClientError("only messages you received can be reported")
            delivered = target["franking"]["server_ms"]
            # The received messages just before it in the chat (a bounded look back).
            before = self.profile.messages(found.chat, limit=200, before=found.seq)
            earlier = [
                h
                for h in (m.to_entry() for m in before)
                if "franking" in h
                and not h.get("outgoing")
                and not h.get("event")
                and h["franking"]["server_ms"] <= delivered
            ]
            # A report is distinct messages in delivery order, the reported one last.
            context_entries = sorted(
                earlier[-context:] if context else [], key=lambda h: h["franking"]["server_ms"]
            )
            chosen = [*context_entries, target]

            def reveal(h: dict[str, Any]) -> dict[str, Any]:
                f = h["franking"]
                return {
                    "franking_key": f["key"],
                    "sender": f["sender_account"],
                    "conversation": f["conversation"],
                    "sent_at_ms": h["sent_at"],
                    "text": h["text"],
                    "attachment_digests": f["digests"],
                    "control": f["control"],
                    "commitment": f["commitment"],
                    "server_ms": f["server_ms"],
                    "tag": f["tag"],
                }

            attachments = [
                {"id": a["id"], "key": a["key"], "digest": a["digest"]}
                for a in target.get("attachments", [])
            ]
            result = await s.api.call(
                "POST",
                "/v1/reports",
                {
                    "category": reason,
                    "comment": comment,
                    "messages": [reveal(h) for h in chosen],
                    "attachments": attachments,
                },
            )
            return dict(result)

        return dict(await self.run(act))

    async def notices(self) -> list[dict[str, Any]]:
        async def act(s: Session) -> list[dict[str, Any]]:
            return list((await s.api.call("GET", "/v1/notices"))["notices"])

        return list(await self.run(act))

    # -- privacy policy ----------------------------------------------------------------------------

    async def policy(self, accept: bool) -> dict[str, Any]:
        """The current policy, verified against the transparency log, with the diff
        from the version this profile last accepted."""

        async def act(s: Session) -> dict[str, Any]:
            current = await verified_policy(s.api)
            accepted = s.state.policy
            changed = accepted is None or accepted.version != current["version"]
            diff = ""
            if accepted is not None and changed:
                diff = "".join(
                    difflib.unified_diff(
                        accepted.text.splitlines(keepends=True),
                        current["text"].splitlines(keepends=True),
                        f"privacy policy v{accepted.version}",
                        f"privacy policy v{current['version']}",
                    )
                )
            if accept:
                s.state.policy = Policy(int(current["version"]), str(current["text"]))
            return {
                **current,
                "changed": changed,
                "accepted": accepted.version if accepted else None,
                "diff": diff,
            }

        return dict(await self.run(act))

    def policy_warning(self, served_version: int | None) -> str | None:
        state = self.local_state()
        accepted = state.policy
        if served_version is not None and (accepted is None or accepted.version != served_version):
            return f"notice: the privacy policy is now version {served_version}; read the changes with 'parley policy'"
        return None

    # -- devices ----------------------------------------------------------------------------------------

    async def devices(self) -> list[int]:
        async def act(s: Session) -> list[int]:
            return list((await s.api.call("GET", "/v1/devices"))["devices"])

        return list(await self.run(act))

    async def link_code(self) -> str:
        """Make a one-time code; the identity travels encrypted under a key derived from it."""

        async def act(s: Session) -> str:
            code = base64.b32encode(secrets.token_bytes(LINK_CODE_BYTES)).decode().rstrip("=")
            kt = s.state.kt
            kt.expected_links += 1
            lookup, key = _link_keys(code)
            payload = json.dumps(
                {
                    "identity": b64e(s.device.identity.private_bytes()),
                    "phone": s.phone,
                    "name": s.state.name,
                    # the new device's view of the log starts from this one's
                    "kt": kt.provisioning(),
                }
            ).encode()
            nonce = secrets.token_bytes(12)
            blob = nonce + aead_encrypt(key, nonce, payload, b"parley/provisioning/v1")
            await s.api.call(
                "POST", "/v1/devices/provisioning", {"lookup": b64e(lookup), "blob": b64e(blob)}
            )
            return code

        return str(await self.run(act))

    async def link(self, code: str, server: str, force: bool = False) -> dict[str, Any]:
        lookup, key = _link_keys(code.strip().upper())
        self._make_room(force)
        api = ApiClient(server, retries=RETRIES, on_retry=self.notify)
        try:
            blob = base64.b64decode(
                (await api.call("POST", "/v1/devices/provisioning/open", {"lookup": b64e(lookup)}))[
                    "blob"
                ]
            )
            try:
                payload = json.loads(
                    aead_decrypt(key, blob[:12], blob[12:], b"parley/provisioning/v1")
                )
            except DecryptionError as exc:
                raise ClientError("the provisioning message does not open with this code") from exc
            device = DeviceState(
                IdentityKeyPair.from_private_bytes(base64.b64decode(payload["identity"])),
                secrets.token_bytes,
            )
            ot, kem = device.new_one_time_keys(50)
            result = await api.link(
                lookup, keys_json(device.signed_prekey, device.kem_last_resort, ot, kem)
            )
            api.credential = result["credential"]
            linked_devices = (await api.call("GET", "/v1/devices"))["devices"]
            kt_view = await _start_monitoring(
                api,
                device.identity,
                result["account_id"],
                int(result["device_id"]),
                payload.get("kt"),
                linked_devices,
            )
        finally:
            await api.close()
        device.account_id, device.device_id = result["account_id"], int(result["device_id"])
        device.prekeys_rotated_ms = now_ms()  # the keys just uploaded are fresh
        self._set_aside(force)
        async with self._exclusive():
            self.profile.create(
                ProfileState(
                    server=api.base_url,
                    phone=str(payload["phone"]),
                    name=str(payload.get("name") or ""),
                    credential=result["credential"],
                    device=device.to_dict(),
                    kt=kt_view,
                    prekeys_uploaded_ms=device.prekeys_rotated_ms,
                ).records()
            )
        return {
            "account_id": device.account_id,
            "device_id": device.device_id,
            "phone": payload["phone"],
        }

    async def unlink(self, device_id: int) -> None:
        async def act(s: Session) -> None:
            await s.api.call("DELETE", f"/v1/devices/{device_id}")
            kt = s.api.kt_view
            kt.devices = sorted(set(kt.devices) - {device_id})
            if device_id != s.device.device_id:  # the signed device list loses it too
                with contextlib.suppress(ServerError):
                    await publish_device_list(
                        s.api,
                        s.device.identity.signing,
                        s.device.account_id,
                        sorted(set(kt.devices) | {s.device.device_id}),
                        now_ms(),
                    )

        await self.run(act)

    # -- local data -------------------------------------------------------------------------------------------

    def history(self, chat: str, limit: int | None = None) -> list[dict[str, Any]]:
        """A chat's local history (a phone number, or a group by id or name), oldest
        first, the last ``limit`` messages; no network."""
        return [m.public() for m in self.messages(chat, limit)]

    def messages(self, chat: str, limit: int | None = None) -> list[Message]:
        state = self.local_state()
        ref = chat
        try:
            chat = normalize_phone(chat) if chat.startswith("+") else self.group_id(state, chat)
        except ClientError:
            if not self.profile.messages(ref, limit=1):
                raise
            chat = ref
        return self.profile.messages(chat, limit)

    def chats(self) -> list[ChatSummary]:
        """The conversation list, most recent first, titled by contact or group name;
        no network."""
        state = self.local_state()
        names = {c.phone: c.name for c in state.contacts.values()}
        out = self.profile.chats()
        for c in out:
            if c.group is not None:
                c.title = state.group_name(c.group)
            elif c.chat == state.phone:
                c.title = "Note to self"
            else:
                c.title = names.get(c.chat) or c.chat
        return out

    def search(self, text: str, limit: int = 100) -> list[dict[str, Any]]:
        """Messages holding every word of ``text``, newest first; no network."""
        self.local_state()
        return [m.public() for m in self.profile.search(text, limit)]

    def group_names(self) -> dict[str, str]:
        """Group id -> name, from the profile (no network)."""
        state = self.local_state()
        return {g: state.group_name(g) for g in state.groups}

    def export(self) -> dict[str, Any]:
        """The user's own data, without any key material."""
        state = self.local_state()
        device = state.device or {}
        return {
            "phone": state.phone,
            "name": state.name,
            "server": state.server,
            "account_id": device.get("account_id"),
            "device_id": device.get("device_id"),
            "contacts": [
                {"account_id": a, "phone": c.phone, "verified": c.verified}
                for a, c in state.contacts.items()
            ],
            "groups": [{"id": g, "name": v.name} for g, v in state.groups.items()],
            "history": [m.public() for m in self.profile.all_messages()],
        }

    async def delete_account(self) -> None:
        async def act(s: Session) -> None:
            await s.api.call("DELETE", "/v1/accounts/me")

        async with self._exclusive():
            s = self._open()
            try:
                await act(s)
            finally:
                await self.close()
            self.profile.wipe()


async def verified_policy(api: ApiClient) -> dict[str, Any]:
    """Fetch the policy and check it is the latest version the signed log commits to:
    under a head signed by the pinned log key and consistent with the heads seen
    before, its entry and every entry after it proved complete (``verify_tail``), so
    a newer version cannot be left out."""
    from parley.translog import merkle

    policy = await api.call("GET", "/v1/policy")
    head = await verified_head(api)
    try:
        index = int(policy["log_index"])
        tail: list[bytes] = []
        while index + len(tail) < head.size:
            start = index + len(tail)
            page = await api.call(
                "GET",
                f"/v1/transparency/entries?start={start}&end={min(head.size, start + 1000)}",
            )
            if not page["entries"]:
                break
            tail += [base64.b64decode(e["leaf"]) for e in page["entries"]]
        proof = await api.call("GET", f"/v1/transparency/inclusion?index={index}&size={head.size}")
        merkle.verify_tail(
            index,
            head.size,
            [base64.b64decode(p) for p in proof["proof"]],
            [merkle.leaf_hash(t) for t in tail],
            head.root,
        )
        bodies = [json.loads(t) for t in tail]
    except (ParleyError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ClientError(
            "the privacy policy could not be verified against the transparency log"
        ) from exc
    body = bodies[0]
    if (
        not isinstance(body, dict)
        or body.get("kind") != "privacy_policy"
        or body.get("sha256") != hashlib.sha256(policy["text"].encode()).hexdigest()
    ):
        raise ClientError("the served privacy policy does not match the transparency log")
    if any(isinstance(b, dict) and b.get("kind") == "privacy_policy" for b in bodies[1:]):
        raise ClientError("the server serves an old privacy policy: a newer version is in the log")
    return {
        "version": int(policy["version"]),
        "text": str(policy["text"]),
        "sha256": body["sha256"],
        "log_index": index,
    }


def _link_keys(code: str) -> tuple[bytes, bytes]:
    out = hkdf(code.encode(), None, b"parley/link-code/v1", 64)
    return out[:32], out[32:]
