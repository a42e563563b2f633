"""A device's groups: signed state, sender keys, and the control messages that carry them.

No I/O: ``App`` and ``Messenger`` move the bytes. The roster is the signed
member list of ``protocol.group_state`` and nothing else: the server's
``GET /v1/groups`` is used only to route, and to show where it disagrees.

Group controls travel in the ``control`` JSON of 1:1 messages (``CONTROL``):

    {"group": {"id": GID,
               "head": [VERSION, HASH_HEX],      # the sender's state
               "changes": [B64, ...],            # signed changes (a suffix of the chain)
               "key": B64,                       # the master key (new members, own devices)
               "request": true},                 # "send me your key and what I lack"
     "sender_key": B64}                          # a SenderKeyDistribution

and every group message names the sender's state in its franked control
(``{"group": {"id", "head"}}``), so a member that was shown an older state
sees a newer version it does not have (``GroupLog.note_head``).

Handling a control (``handle_control``, from ``DeviceState.open``): changes
are verified and applied first (a new group only from a member of it whose
identity is the one this device's 1:1 session verified), then the head is
compared, then a sender key is accepted only from an account in the signed
member list (kept aside while this member is behind, until it catches up).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any

from parley.errors import InvalidGroupChange, MalformedMessage, NotAGroupMember
from parley.protocol import group_state as gs
from parley.protocol.group_state import GroupChange, GroupEvent, GroupLog
from parley.protocol.sender_keys import GroupSession
from parley.protocol.wire import SenderKeyDistribution

if TYPE_CHECKING:
    from parley.client.device import DeviceState

CONTROL = "group"
CONTROL_SENDER_KEY = "sender_key"
GROUP_ID = re.compile(r"[0-9a-f]{32}")
# Changes sent inline in one control message (the rest comes from the server's copy).
INLINE_BUDGET = 40 * 1024
MAX_INLINE = 2000
SERVER_PAGE = 100  # changes per page of the server's sealed copy


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedMessage(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedMessage(f"{what} is not base64") from exc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def known_identity(device: DeviceState, account: str) -> bytes | None:
    """The identity this device verified for ``account``: its own, or its 1:1 sessions'."""
    if account == device.account_id:
        return device.identity.public.to_bytes()
    for (peer, _), session in device.sessions.items():
        if peer == account:
            return session.peer.to_bytes()
    return None


def log_of(device: DeviceState, gid: str) -> GroupLog | None:
    group = device.groups.get(gid)
    return None if group is None else group.log


def head(log: GroupLog) -> list[Any]:
    return [log.version, log.state.head.hex()]


def parse_head(value: object) -> tuple[int, bytes] | None:
    if not (isinstance(value, list) and len(value) == 2):
        return None
    version, digest = value
    if not (isinstance(version, int) and 0 <= version <= gs.MAX_VERSION):
        return None
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        return None
    return version, bytes.fromhex(digest)


def inline(changes: list[GroupChange]) -> list[str]:
    """The longest suffix of ``changes`` that fits one control message."""
    out: list[str] = []
    size = 0
    for change in reversed(changes[-MAX_INLINE:]):
        encoded = b64(change.to_bytes())
        if size + len(encoded) > INLINE_BUDGET:
            break
        out.append(encoded)
        size += len(encoded)
    return out[::-1]


def info(
    device: DeviceState,
    gid: str,
    changes: list[GroupChange] | None = None,
    key: bool = False,
    request: bool = False,
) -> dict[str, Any]:
    """The ``group`` object of a control (or of a group message's control)."""
    log = log_of(device, gid)
    out: dict[str, Any] = {"id": gid}
    if log is None:
        return out
    out["head"] = head(log)
    if changes:
        out["changes"] = inline(changes)
    if key:
        out["key"] = b64(log.master_key)
    if request:
        out["request"] = True
    return out


def sender_key(device: DeviceState, gid: str) -> str:
    return b64(device.group(gid).outbound.distribution().to_bytes())


def _joined_at(events: list[GroupEvent], me: str) -> int:
    """The version of the change that (last) brought ``me`` in."""
    since = 0
    for e in events:
        if e.kind == "created" or (e.kind == "member_added" and e.subject == me):
            since = e.version
    return since


def start(
    device: DeviceState, gid: str, master: bytes, changes: list[GroupChange], deliverer: str
) -> GroupSession:
    """A group this device learns of: the whole history, from a member of it."""
    log, events = GroupLog.start(master, changes, lambda a: known_identity(device, a))
    if log.state.group_id != bytes.fromhex(gid):
        raise InvalidGroupChange("a group history for another group")
    members = log.state.members
    if device.account_id not in members:
        raise InvalidGroupChange("a group history that does not include this account")
    vouched = members.get(deliverer)
    if vouched is None or vouched.identity != known_identity(device, deliverer):
        raise InvalidGroupChange("a group history from someone who is not a member of it")
    group = device.group(gid)
    group.log = log
    group.sync_roster(device.rng)
    since = _joined_at(events, device.account_id)
    group.events += [e for e in events if e.version >= since]
    return group


def extend(device: DeviceState, gid: str, changes: list[GroupChange]) -> list[GroupEvent]:
    """Apply verified changes (from a member's message or the server's copy)."""
    group = device.groups[gid]
    assert group.log is not None
    events = group.log.extend(changes, lambda a: known_identity(device, a))
    group.sync_roster(device.rng)
    group.events += events
    return events


def handle_control(device: DeviceState, sender: str, control: dict[str, Any]) -> None:
    """Apply a group control that arrived over an authenticated 1:1 session from
    ``sender``; raises ``RemoteProtocolError`` for what must be refused."""
    group_info = control.get(CONTROL)
    if isinstance(group_info, dict):
        _apply_info(device, sender, group_info)
    if CONTROL_SENDER_KEY in control:
        skd = SenderKeyDistribution.from_bytes(_b64(control[CONTROL_SENDER_KEY], "sender key"))
        _accept_key(device, sender, skd)


def _apply_info(device: DeviceState, sender: str, group_info: dict[str, Any]) -> None:
    gid = group_info.get("id")
    if not (isinstance(gid, str) and GROUP_ID.fullmatch(gid)):
        return
    raw = group_info.get("changes", [])
    if not isinstance(raw, list) or len(raw) > MAX_INLINE:
        raise MalformedMessage("group changes are a bounded list")
    changes = [GroupChange.from_bytes(_b64(c, "group change")) for c in raw]
    group = device.groups.get(gid)
    if changes and (group is None or group.log is None):
        if "key" not in group_info or changes[0].version != 0:
            return  # a suffix without the history: nothing to verify it against
        master = _b64(group_info["key"], "group key")
        group = start(device, gid, master, changes, sender)
    elif changes and group is not None and group.log is not None:
        fresh = [c for c in changes if c.version > group.log.version]
        if fresh and fresh[0].version != group.log.version + 1:
            # A gap (a change withheld before these): what they lead to is pending,
            # to be read from the server's copy or asked for, never applied out of order.
            group.log.note_head(fresh[-1].version, fresh[-1].hash(), sender)
        else:
            extend(device, gid, changes)
    if group is None or group.log is None:
        return
    named = parse_head(group_info.get("head"))
    if named is not None:
        group.log.note_head(named[0], named[1], sender)
    if group_info.get("request") is True and sender in group.log.state.members:
        group.requests[sender] = named


def _accept_key(device: DeviceState, sender: str, skd: SenderKeyDistribution) -> None:
    gid = skd.group_id.hex()
    group = device.groups.get(gid)
    if group is None or group.log is None:
        raise NotAGroupMember("a sender key for a group this device has no signed state for")
    if sender not in group.log.state.members:
        if group.log.pending is not None:  # perhaps a member in the state it names
            group.deferred[sender] = skd
            return
        raise NotAGroupMember("a sender key from an account the signed member list lacks")
    group.process_distribution(sender, skd)


def retry_deferred(device: DeviceState, gid: str) -> None:
    """Keys kept aside while behind: accepted from members of the state caught up to."""
    group = device.groups.get(gid)
    if group is None or group.log is None:
        return
    for sender, skd in list(group.deferred.items()):
        if sender in group.log.state.members:
            group.process_distribution(sender, skd)
    group.deferred.clear()


def take_events(device: DeviceState) -> list[tuple[str, GroupEvent]]:
    out = []
    for gid, group in device.groups.items():
        out += [(gid, e) for e in group.events]
        group.events = []
    return out


def needs_key(group: GroupSession) -> list[str]:
    """Members (and our own other devices, as ``me``) who lack our current key."""
    if group.log is None:
        return []
    return sorted(set(group.log.state.members) - group.sent_to)


# -- changes this device makes --------------------------------------------------------------------


def create(
    device: DeviceState, gid: str, name: str, phone: str, members: list[gs.Add]
) -> tuple[bytes, GroupChange]:
    """A new group's master key and genesis, signed by this device (not yet applied)."""
    master = device.rng(gs.MASTER_KEY_LEN)
    change = gs.genesis(
        device.identity, bytes.fromhex(gid), device.account_id, phone, name, members
    )
    return master, change


def propose(device: DeviceState, gid: str, actions: list[gs.Action]) -> GroupChange:
    """The next change, signed; ``InvalidGroupChange`` says why it is not allowed."""
    log = log_of(device, gid)
    if log is None:
        raise InvalidGroupChange("this device has no signed state for the group")
    return gs.propose(device.identity, log.state, device.account_id, actions)


def commit(
    device: DeviceState, gid: str, change: GroupChange, master: bytes | None = None
) -> list[GroupEvent]:
    """Apply a change this device made, once the server has stored it."""
    group = device.group(gid)
    if change.version == 0:
        assert master is not None
        group.log, events = GroupLog.start(master, [change], lambda a: known_identity(device, a))
    else:
        assert group.log is not None
        events = group.log.extend([change], lambda a: known_identity(device, a))
    group.sync_roster(device.rng)
    return events


def describe(kind: str, member: str | None, name: str | None, about_me: bool) -> str:
    """What a change did, after the name of whoever made it ("added +1…")."""
    who = "you" if about_me else (member or "")
    phrases = {
        "created": "created the group",
        "added": "added you to the group",
        "member_added": f"added {who}",
        "removed": "removed you from the group",
        "member_removed": f"removed {who}",
        "left": "left the group",
        "renamed": f"renamed the group to {name}",
        "admin_added": f"made {who} an admin",
        "admin_removed": f"removed {who} as an admin",
    }
    return phrases.get(kind, kind)
