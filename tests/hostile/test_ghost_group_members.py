"""(h) A ghost group member added by the server; (i) a removed member that re-adds
itself with a sender key. Rösler, Mainka and Schwenk ("More is less", EuroS&P
2018) did (h) to WhatsApp, Signal and Threema, and Albrecht et al. (IEEE S&P
2023) to Matrix; (i) was Parley's own bug (any sender of a sender key joined the
receiver's member list).

The roster is the group's signed state: members send their sender key to it
alone and accept keys and messages from it alone, whatever the server routes.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from parley.client.device import DeviceState
from parley.client.messenger import Messenger
from parley.protocol import group_state as gs
from tests.e2e.conftest import new_phone, register
from tests.e2e.test_key_transparency import cli_user, parley

from .conftest import HostileServer


def account(tmp: Path, profile: str) -> str:
    return str(json.loads(parley(tmp, profile, "whoami", "--json").stdout)["account_id"])


def receive(tmp: Path, profile: str) -> tuple[list[dict[str, object]], list[str], str]:
    """Lines shown, the reasons of refused messages, and stderr."""
    result = parley(tmp, profile, "receive", "--json", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
    refused = [str(x["reason"]) for x in lines if x.get("event") == "refused"]
    return [x for x in lines if x.get("event") != "refused"], refused, result.stderr


def create_group(tmp: Path, creator: str, name: str, *phones: str) -> str:
    members = [a for p in phones for a in ("--member", p)]
    result = parley(tmp, creator, "group", "create", name, *members, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["id"])


def group_send(tmp: Path, profile: str, gid: str, text: str) -> str:
    result = parley(tmp, profile, "group", "send", gid, text)
    assert result.returncode == 0, result.stderr
    return result.stderr


async def drain(m: Messenger) -> list[str]:
    """What a library user could read: the texts of every message it opened, and
    whether any of them carried a sender key (delivery and read receipts left out)."""
    async with m.api.websocket() as ws:
        got = await m.receive(ws, timeout=5)
    return [
        "<sender key>" if b'"sender_key"' in r.content.control else r.content.text
        for r in got
        if b'"receipt"' not in r.content.control
    ]


def route(hostile: HostileServer, gid: str, account_id: str) -> None:
    """The server adds an account to a group's routing, straight into its database."""
    hostile.sql(
        "INSERT INTO group_members (group_id, account_id, admin, joined_ms) VALUES (?, ?, ?, ?)",
        (gid, account_id, False, 0),
    )


async def forge_membership(eve: Messenger, gid: str, to: str, text: str) -> None:
    """Eve claims a place in the group: her own sender key over a 1:1 session, then a
    group message under it (the server routes it, as it routes her)."""
    session = eve.state.group(gid)
    control = DeviceState.sender_key_control(session.outbound.distribution())
    await eve.send_content(to, eve.content("", control=control))
    msg = session.encrypt(eve.content(text))
    await eve.api.call(
        "PUT",
        f"/v1/groups/{gid}/messages",
        {"client_id": str(uuid.uuid4()), "envelope": base64.b64encode(msg.to_bytes()).decode()},
    )


async def test_h_a_ghost_added_by_the_server_gets_no_key_and_is_refused(
    hostile: HostileServer, tmp_path: Path
) -> None:
    cli_user(hostile.process, tmp_path, "alice")
    bob_phone = cli_user(hostile.process, tmp_path, "bob")
    gid = create_group(tmp_path, "alice", "friends", bob_phone)
    shown, refused, _ = receive(tmp_path, "bob")
    assert [m["event"] for m in shown] == ["created"] and refused == []
    ghost = await register(hostile.process)  # an account the server controls
    try:
        route(hostile, gid, ghost.account_id)
        # Members send as before, to the signed roster only, and are told of the ghost.
        said = group_send(tmp_path, "alice", gid, "after the ghost came")
        assert f"ALARM: the server lists {ghost.account_id} as a member of 'friends'" in said
        said = group_send(tmp_path, "bob", gid, "bob too")
        assert "ALARM: the server lists" in said
        shown, refused, _ = receive(tmp_path, "bob")
        assert [m["text"] for m in shown] == ["after the ghost came"] and refused == []
        # The ghost is routed the ciphertexts but was sent no key: it reads nothing.
        assert await drain(ghost) == []
        # It claims a place with its own key and speaks: refused, never shown.
        await forge_membership(ghost, gid, account(tmp_path, "bob"), "i am one of you")
        shown, refused, said = receive(tmp_path, "bob")
        assert shown == []
        assert len(refused) == 2 and all("not_a_group_member" in r for r in refused)
        listed = parley(tmp_path, "alice", "group", "list", "--json")
        (group,) = json.loads(listed.stdout)
        assert group["unconfirmed"] == [ghost.account_id]
        assert ghost.account_id not in group["members"] and len(group["members"]) == 2
        assert "ALARM" in listed.stderr
    finally:
        await ghost.api.close()


async def test_i_a_removed_member_cannot_re_add_itself_with_a_sender_key(
    hostile: HostileServer, tmp_path: Path
) -> None:
    cli_user(hostile.process, tmp_path, "alice")
    bob_phone = cli_user(hostile.process, tmp_path, "bob")
    carol_phone = new_phone()
    carol = await register(hostile.process, carol_phone)  # a library user: she can craft
    try:
        gid = create_group(tmp_path, "alice", "friends", bob_phone, carol_phone)
        receive(tmp_path, "bob")
        assert await drain(carol) == ["", "<sender key>"]  # the history, alice's key
        await carol.send_group(gid, "carol here")
        shown, _, _ = receive(tmp_path, "bob")
        assert [m["text"] for m in shown] == ["carol here"]
        assert parley(tmp_path, "alice", "group", "remove", gid, carol_phone).returncode == 0
        shown, _, _ = receive(tmp_path, "bob")
        assert [(m["event"], m["member"]) for m in shown] == [("member_removed", carol_phone)]
        assert await drain(carol) == [""]  # she is told (the signed removal)
        # Carol re-adds herself: a change adding herself, signed by her; her sender key;
        # and, with the server routing her again, a group message.
        bob = account(tmp_path, "bob")
        log = carol.state.groups[gid].log
        assert log is not None and carol.account_id not in log.state.members
        rejoin = gs.sign(
            carol.state.identity,
            gs.GroupChange(
                log.state.group_id,
                log.version + 1,
                log.state.head,
                carol.account_id,
                (gs.Add(carol.account_id, carol.state.identity.public.to_bytes()),),
            ),
        )
        forged = {"id": gid, "changes": [base64.b64encode(rejoin.to_bytes()).decode()]}
        await carol.send_content(
            bob, carol.content("", control=json.dumps({"group": forged}).encode())
        )
        route(hostile, gid, carol.account_id)
        await forge_membership(carol, gid, bob, "i never left")
        shown, refused, _ = receive(tmp_path, "bob")
        assert shown == [] and len(refused) == 3
        assert "invalid_group_change" in refused[0]
        assert all("not_a_group_member" in r for r in refused[1:])
        # Bob's rotated key goes to the signed roster (alice) only: carol, still routed
        # by the server, gets his messages but no key to read them.
        group_send(tmp_path, "bob", gid, "without carol")
        shown, _, _ = receive(tmp_path, "alice")
        assert [m["text"] for m in shown] == ["without carol"]
        assert await drain(carol) == []
        (group,) = json.loads(parley(tmp_path, "bob", "group", "list", "--json").stdout)
        assert carol_phone not in group["members"] and group["unconfirmed"] == [carol_phone]
    finally:
        await carol.api.close()
