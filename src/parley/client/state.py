"""The profile's small records, typed: who the profile is, its contacts, its groups,
its key-transparency view with its alarms, its accepted policy and its settings.

The store (``client/store.py``) keeps one encrypted row per record name and knows
nothing of their shape; ``ProfileState.from_records`` and ``records`` are the one
place that turns those rows (JSON values) into these records and back. A record
name this version does not know is kept as it is (``extra``), so an older Parley
that opens a profile a newer one wrote drops nothing of it.

The device's keys and ratchets are the protocol's own typed record
(``protocol.device.DeviceState``); the profile holds them in their stored form
(``device``) and the session decodes them once per load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_ALARMS = 100


def _ints(value: Any) -> list[int]:
    return [int(x) for x in value or []]


@dataclass
class ContactRecord:
    """An account this profile has talked to: the identity key first pinned for it
    (trust on first use, then checked against the key directory), whether the user
    compared the safety number, and whether the identity changed since. Stored under
    its account id, which ``account_id`` repeats for the code that holds one."""

    account_id: str
    phone: str = ""
    identity: str = ""  # base64 of the pinned identity key
    verified: bool = False
    changed: bool = False  # a new identity replaced the pinned one
    notified: bool = False  # the change was shown (once, for an unverified contact)
    previous: str | None = None  # the identity before the change
    name: str = ""  # the display name the contact gave itself, inside the encryption

    @classmethod
    def from_json(cls, account_id: str, d: dict[str, Any]) -> ContactRecord:
        previous = d.get("previous")
        return cls(
            account_id=account_id,
            phone=str(d.get("phone") or ""),
            identity=str(d.get("identity") or ""),
            verified=bool(d.get("verified", False)),
            changed=bool(d.get("changed", False)),
            notified=bool(d.get("notified", False)),
            previous=None if previous is None else str(previous),
            name=str(d.get("name") or ""),
        )

    def public(self) -> dict[str, Any]:
        """What the daemon's ``listContacts`` answers for this contact."""
        return {
            "account_id": self.account_id,
            "phone": self.phone,
            "name": self.name,
            "verified": self.verified,
            "identity_changed": self.changed,
        }

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phone": self.phone,
            "identity": self.identity,
            "verified": self.verified,
            "changed": self.changed,
            "notified": self.notified,
            "name": self.name,
        }
        if self.previous is not None:
            out["previous"] = self.previous
        return out


@dataclass
class GroupRecord:
    """What the profile keeps of a group beside its signed state (which the device
    record holds): the name to show, whether we left, members the server routes to
    that the signed roster does not hold."""

    name: str
    left: bool = False
    unconfirmed: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, gid: str, d: dict[str, Any]) -> GroupRecord:
        return cls(
            name=str(d.get("name") or gid),
            left=bool(d.get("left", False)),
            unconfirmed=[str(a) for a in d.get("unconfirmed") or []],
        )

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "left": self.left, "unconfirmed": list(self.unconfirmed)}


@dataclass
class Head:
    """A signed head of the transparency log this client verified."""

    size: int
    root: str  # base64
    timestamp_ms: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Head:
        ts = d.get("timestamp_ms")
        return cls(int(d["size"]), str(d["root"]), None if ts is None else int(ts))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "root": self.root}
        if self.timestamp_ms is not None:
            out["timestamp_ms"] = self.timestamp_ms
        return out


@dataclass
class Seen:
    """The latest directory entry this client accepted for an account: versions only
    grow, one version has one value, and the signed device list's counter only grows
    under one identity."""

    version: int
    value: str  # base64 of the entry's value hash
    counter: int | None = None  # None: kept by a version that did not track device lists
    identity: str | None = None  # base64

    @classmethod
    def from_json(cls, v: list[Any]) -> Seen:
        if len(v) > 3:
            return cls(int(v[0]), str(v[1]), int(v[2]), str(v[3]))
        return cls(int(v[0]), str(v[1]))

    def to_json(self) -> list[Any]:
        if self.counter is None:
            return [self.version, self.value]
        return [self.version, self.value, self.counter, self.identity]


@dataclass
class OwnEntry:
    """The owner's own directory entry as last checked: the next check reads every
    version since."""

    version: int
    value: str  # base64


@dataclass
class KtView:
    """This client's view of the transparency log and of its own account's entry
    (theory of operation in ``client/kt.py``)."""

    devices: list[int] = field(default_factory=list)  # our devices we know we linked
    expected_links: int = 0  # link codes made and not yet seen used
    alarms: list[str] = field(default_factory=list)  # shown until acknowledged
    log_key: str | None = None  # base64; pinned at registration
    head: Head | None = None
    seen: dict[str, Seen] = field(default_factory=dict)
    own: OwnEntry | None = None
    acknowledged: list[int] = field(default_factory=list)  # unknown devices acknowledged
    version: int | None = None  # our entry's version and epoch at the last check
    epoch: int | None = None
    checked_ms: int = 0
    list_counter: int = 0  # the counter of the last device list we signed
    signed: list[int] | None = None  # the devices in it
    signed_ms: int = 0
    list_seen: int = 0  # the newest device-list counter seen in our history
    gossip_ok: list[str] = field(default_factory=list)  # heads from messages, proven

    def alarm(self, text: str) -> None:
        """Keep an alarm (once) until the user acknowledges it."""
        if text not in self.alarms:
            self.alarms.append(text)
            del self.alarms[:-MAX_ALARMS]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KtView:
        own = d.get("own")
        head = d.get("head")
        signed = d.get("signed")
        version, epoch = d.get("version"), d.get("epoch")
        return cls(
            devices=_ints(d.get("devices")),
            expected_links=int(d.get("expected_links", 0)),
            alarms=[str(a) for a in d.get("alarms") or []],
            log_key=d.get("log_key") if isinstance(d.get("log_key"), str) else None,
            head=Head.from_json(head) if head else None,
            seen={str(a): Seen.from_json(v) for a, v in (d.get("seen") or {}).items()},
            own=OwnEntry(int(own["version"]), str(own["value"])) if own else None,
            acknowledged=_ints(d.get("acknowledged")),
            version=None if version is None else int(version),
            epoch=None if epoch is None else int(epoch),
            checked_ms=int(d.get("checked_ms", 0)),
            list_counter=int(d.get("list_counter", 0)),
            signed=None if signed is None else _ints(signed),
            signed_ms=int(d.get("signed_ms", 0)),
            list_seen=int(d.get("list_seen", 0)),
            gossip_ok=[str(k) for k in d.get("gossip_ok") or []],
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "devices": list(self.devices),
            "expected_links": self.expected_links,
            "alarms": list(self.alarms),
            "seen": {a: s.to_json() for a, s in self.seen.items()},
            "acknowledged": list(self.acknowledged),
            "checked_ms": self.checked_ms,
            "list_counter": self.list_counter,
            "signed_ms": self.signed_ms,
            "list_seen": self.list_seen,
            "gossip_ok": list(self.gossip_ok),
        }
        if self.log_key is not None:
            out["log_key"] = self.log_key
        if self.head is not None:
            out["head"] = self.head.to_json()
        if self.own is not None:
            out["own"] = {"version": self.own.version, "value": self.own.value}
        if self.version is not None:
            out["version"], out["epoch"] = self.version, self.epoch
        if self.signed is not None:
            out["signed"] = list(self.signed)
        return out

    def provisioning(self) -> dict[str, Any]:
        """What a new linked device starts its view from (inside the encrypted
        provisioning message): the pinned log key, the head, the devices we vouch for."""
        return {
            "log_key": self.log_key,
            "head": None if self.head is None else self.head.to_json(),
            "devices": list(self.devices),
        }


@dataclass
class Policy:
    """The privacy policy version this profile accepted, with its text (for the diff)."""

    version: int
    text: str


@dataclass
class Settings:
    read_receipts: bool = True


@dataclass
class ProfileState:
    """Everything of a profile except its history (which the store keeps as rows)."""

    server: str = ""
    phone: str = ""
    pending_phone: str | None = None  # registered, code not yet verified
    name: str = ""
    credential: str | None = None
    device: dict[str, Any] | None = None  # DeviceState.to_dict(); None until verified
    contacts: dict[str, ContactRecord] = field(default_factory=dict)  # by account id
    phones: dict[str, str] = field(default_factory=dict)  # phone -> account id
    groups: dict[str, GroupRecord] = field(default_factory=dict)  # by group id
    kt: KtView = field(default_factory=KtView)
    policy: Policy | None = None
    settings: Settings = field(default_factory=Settings)
    maintained_ms: int = 0
    prekeys_uploaded_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # records of a newer version

    @property
    def registered(self) -> bool:
        return self.device is not None

    def group_name(self, gid: str) -> str:
        group = self.groups.get(gid)
        return group.name if group and group.name else gid

    # -- the store's rows ------------------------------------------------------------------------

    _SCALARS = ("server", "phone", "pending_phone", "name", "credential", "device")
    _COUNTERS = ("maintained_ms", "prekeys_uploaded_ms")

    @classmethod
    def from_records(cls, rows: dict[str, Any]) -> ProfileState:
        rows = dict(rows)
        s = cls()
        for name in cls._SCALARS:
            if name in rows:
                setattr(s, name, rows.pop(name))
        for name in cls._COUNTERS:
            if name in rows:
                setattr(s, name, int(rows.pop(name) or 0))
        s.contacts = {
            str(a): ContactRecord.from_json(str(a), c)
            for a, c in (rows.pop("contacts", None) or {}).items()
            if isinstance(c, dict)
        }
        s.phones = {str(p): str(a) for p, a in (rows.pop("phones", None) or {}).items()}
        s.groups = {
            str(g): GroupRecord.from_json(str(g), v)
            for g, v in (rows.pop("groups", None) or {}).items()
            if isinstance(v, dict)
        }
        s.kt = KtView.from_json(rows.pop("kt", None) or {})
        policy = rows.pop("policy", None)
        if isinstance(policy, dict):
            s.policy = Policy(int(policy["version"]), str(policy["text"]))
        settings = rows.pop("settings", None) or {}
        s.settings = Settings(read_receipts=bool(settings.get("read_receipts", True)))
        s.extra = rows
        return s

    def records(self) -> dict[str, Any]:
        """The rows to store: name -> JSON value (a record left at None is not stored)."""
        out: dict[str, Any] = dict(self.extra)
        for name in self._SCALARS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if not self.registered:
            return out  # a registration in progress holds only where and who
        for name in self._COUNTERS:
            out[name] = getattr(self, name)
        out["contacts"] = {a: c.to_json() for a, c in self.contacts.items()}
        out["phones"] = dict(self.phones)
        out["groups"] = {g: v.to_json() for g, v in self.groups.items()}
        out["kt"] = self.kt.to_json()
        if self.policy is not None:
            out["policy"] = {"version": self.policy.version, "text": self.policy.text}
        out["settings"] = {"read_receipts": self.settings.read_receipts}
        return out
