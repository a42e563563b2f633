"""(k) The server withholds a group removal from one member, so that member keeps
sending under the old roster and the removed member, still routed by the server,
keeps reading (Rösler, Mainka, Schwenk 2018: messages withheld per member).

Every group message and every sender key names the state it was sent under; a
member shown an older state notices, holds its own messages, and asks for what it
lacks. If the server also withholds the removing admin's new key, the member
notices that too: a member's messages under a key it never received, after one it
did, mean that member rotated, as on a removal.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.test_key_transparency import cli_user, parley

from .conftest import HostileServer
from .test_ghost_group_members import account, create_group, group_send, receive, route


def _queued_for(hostile: HostileServer, account_id: str, after: int) -> list[int]:
    rows = hostile.sql(
        "SELECT id FROM messages WHERE account_id = ? AND id > ? ORDER BY id", (account_id, after)
    )
    return [int(r[0]) for r in rows]


def _last_id(hostile: HostileServer) -> int:
    """The newest queued message's id (0 if the queue is empty: psql prints no row)."""
    rows = hostile.sql("SELECT max(id) FROM messages")
    return int(rows[0][0] or 0) if rows and rows[0] else 0


def _friends(hostile: HostileServer, tmp: Path) -> tuple[str, str, str, str]:
    """alice (admin), bob and carol in a group where everyone has everyone's key."""
    cli_user(hostile.process, tmp, "alice")
    bob_phone = cli_user(hostile.process, tmp, "bob")
    carol_phone = cli_user(hostile.process, tmp, "carol")
    gid = create_group(tmp, "alice", "friends", bob_phone, carol_phone)
    for name in ("bob", "carol"):
        receive(tmp, name)
        group_send(tmp, name, gid, f"hello from {name}")
    for name in ("alice", "bob", "carol"):
        receive(tmp, name)
    return gid, bob_phone, carol_phone, account(tmp, "bob")


def _send_fails(tmp: Path, profile: str, gid: str, text: str) -> str:
    result = parley(tmp, profile, "group", "send", gid, text)
    assert result.returncode == 1 and "Nothing was sent" in result.stderr, result.stderr
    return result.stderr


async def test_k_a_withheld_removal_is_noticed_and_holds_the_members_sends(
    hostile: HostileServer, tmp_path: Path
) -> None:
    gid, _, carol_phone, bob = _friends(hostile, tmp_path)
    before = _last_id(hostile)
    assert parley(tmp_path, "alice", "group", "remove", gid, carol_phone).returncode == 0
    # The server drops the change on its way to bob (the first of alice's two messages
    # to him; the second carries her new key), hides it from its stored copy, and
    # keeps routing carol.
    change_to_bob, _key_to_bob = _queued_for(hostile, bob, before)
    hostile.sql("DELETE FROM messages WHERE id = ?", (change_to_bob,))
    hostile.sql(
        "UPDATE group_changes SET group_id = ? WHERE group_id = ? AND version = 1",
        ("withheld", gid),
    )
    route(hostile, gid, account(tmp_path, "carol"))
    group_send(tmp_path, "alice", gid, "carol is gone")

    shown, refused, said = receive(tmp_path, "bob")
    assert [m["text"] for m in shown] == ["carol is gone"] and refused == []
    assert "'friends' has changed (version 1), but the change has not reached this device" in said
    said = _send_fails(tmp_path, "bob", gid, "for alice and carol")
    assert "has changed (version 1) but this device has only version 0" in said
    shown, _, _ = receive(tmp_path, "carol")
    assert "for alice and carol" not in [m["text"] for m in shown]  # nothing went out

    # The server serves the change again: bob catches up, rotates, and sends to alice only.
    hostile.sql(
        "UPDATE group_changes SET group_id = ? WHERE group_id = ? AND version = 1",
        (gid, "withheld"),
    )
    said = group_send(tmp_path, "bob", gid, "now without carol")
    assert f"removed {carol_phone}" in said
    shown, _, _ = receive(tmp_path, "alice")
    assert "now without carol" in [m["text"] for m in shown]
    shown, refused, _ = receive(tmp_path, "carol")
    assert "now without carol" not in [m["text"] for m in shown] and refused  # routed, unread


async def test_k_withholding_the_new_key_too_is_noticed_and_healed_by_the_admin(
    hostile: HostileServer, tmp_path: Path
) -> None:
    gid, _, carol_phone, bob = _friends(hostile, tmp_path)
    before = _last_id(hostile)
    assert parley(tmp_path, "alice", "group", "remove", gid, carol_phone).returncode == 0
    for withheld in _queued_for(hostile, bob, before):  # the change and alice's new key
        hostile.sql("DELETE FROM messages WHERE id = ?", (withheld,))
    hostile.sql(
        "UPDATE group_changes SET group_id = ? WHERE group_id = ? AND version = 1",
        ("withheld", gid),
    )
    route(hostile, gid, account(tmp_path, "carol"))
    group_send(tmp_path, "alice", gid, "carol is gone")

    shown, refused, _ = receive(tmp_path, "bob")
    assert shown == [] and len(refused) == 1 and "unknown_sender_key" in refused[0]
    said = _send_fails(tmp_path, "bob", gid, "for alice and carol")
    assert "use a key this device never received" in said
    # Bob asked alice; her client answers with the change and her key.
    receive(tmp_path, "alice")
    shown, refused, _ = receive(tmp_path, "bob")
    assert [(m["event"], m["member"]) for m in shown] == [("member_removed", carol_phone)]
    group_send(tmp_path, "bob", gid, "now without carol")
    shown, _, _ = receive(tmp_path, "alice")
    assert "now without carol" in [m["text"] for m in shown]
    shown, _, _ = receive(tmp_path, "carol")
    assert "now without carol" not in [m["text"] for m in shown]
    (group,) = json.loads(parley(tmp_path, "bob", "group", "list", "--json").stdout)
    assert carol_phone not in group["members"]
