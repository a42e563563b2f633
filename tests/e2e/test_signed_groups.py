"""Signed groups through the real server: joining, the library rotating after another
admin's removal, and the server's sealed copy of each group's changes."""

from __future__ import annotations

import base64
import json
import secrets

import pytest

from parley.client.messenger import Messenger
from parley.errors import ServerError

from .server import ServerProcess
from .test_cli import Run, _received, _register, cli  # noqa: F401 - the fixture


async def _inbox(m: Messenger) -> list[str]:
    async with m.api.websocket() as ws:
        return [r.content.text for r in await m.receive(ws, timeout=5)]


def test_a_new_member_is_shown_to_everyone_and_reads_from_then_on(
    cli: tuple[ServerProcess, Run],  # noqa: F811
) -> None:
    server, run = cli
    alice, bob, dave = (_register(server, run, n) for n in ("alice", "bob", "dave"))
    gid = json.loads(run("alice", "group", "create", "club", "--member", bob, "--json").stdout)[
        "id"
    ]
    run("alice", "group", "send", "club", "before dave")
    assert run("alice", "group", "add", "club", dave).stdout.strip() == "Done."
    got = _received(run, "dave")
    assert [(m["event"], m["sender"], m["member"], m["group"]) for m in got] == [
        ("added", alice, dave, gid)
    ]
    line = run("dave", "history", "club").stdout
    assert "added you to the group" in line and "before dave" not in line
    got = _received(run, "bob")
    assert [(m["event"], m["member"], m["text"]) for m in got] == [
        ("created", None, ""),
        (None, None, "before dave"),
        ("member_added", dave, ""),
    ]
    plain = run("bob", "history", "club").stdout
    assert f"added {dave}" in plain
    run("alice", "group", "send", "club", "welcome")
    run("dave", "group", "send", "club", "hi all")  # dave's key goes to alice and bob
    assert [m["text"] for m in _received(run, "dave")] == ["welcome"]
    assert [m["text"] for m in _received(run, "bob")] == ["welcome", "hi all"]
    (group,) = json.loads(run("bob", "group", "list", "--json").stdout)
    assert sorted(group["members"]) == sorted([alice, bob, dave])
    assert group["admins"] == [alice] and group["unconfirmed"] == [] and group["version"] == 1
    refused = run("bob", "group", "add", "club", dave, check=False)
    assert refused.returncode == 1 and "only an admin of 'club'" in refused.stderr


async def test_the_library_rotates_after_another_admins_removal(
    server: ServerProcess, users: list[Messenger]
) -> None:
    alice, bob, carol = users
    gid = await alice.create_group([bob.account_id, carol.account_id])
    await _inbox(bob)
    await _inbox(carol)
    await bob.send_group(gid, "bob to all")
    assert await _inbox(carol) == ["", "bob to all"]  # bob's key, then his message
    before = bob.state.groups[gid].outbound.distribution_id
    await alice.remove_member(gid, carol.account_id)
    assert await _inbox(bob) == ["", ""]  # the signed removal, then alice's new key
    assert bob.state.groups[gid].outbound.distribution_id != before  # rotated on receipt
    await bob.send_group(gid, "without carol")  # ...and sent to alice before this
    assert await _inbox(alice) == ["", "bob to all", "", "without carol"]  # bob: key, text x2
    assert await _inbox(carol) == []  # no key of bob's new chain, no message


async def test_the_server_keeps_changes_in_order_for_members_only(
    server: ServerProcess, users: list[Messenger]
) -> None:
    alice, bob, outsider = users
    gid = await alice.create_group([bob.account_id])
    sealed = base64.b64encode(secrets.token_bytes(100)).decode()
    page = await bob.api.call("GET", f"/v1/groups/{gid}/changes")
    assert [c["version"] for c in page["changes"]] == [0] and page["next_version"] == 1
    with pytest.raises(ServerError) as err:
        await bob.api.call("PUT", f"/v1/groups/{gid}/changes/0", {"change": sealed})
    assert (err.value.status, err.value.code) == (409, "version_conflict")
    assert err.value.details["next_version"] == 1
    with pytest.raises(ServerError) as err:
        await bob.api.call("PUT", f"/v1/groups/{gid}/changes/5", {"change": sealed})
    assert err.value.code == "version_conflict"
    for call in (
        outsider.api.call("GET", f"/v1/groups/{gid}/changes"),
        outsider.api.call("PUT", f"/v1/groups/{gid}/changes/1", {"change": sealed}),
    ):
        with pytest.raises(ServerError) as err:
            await call
        assert err.value.status == 404
    # Any member may store the next one: the server cannot tell a forgery (members
    # refuse whatever no admin signed; an insider can only jam the copy, see README).
    await bob.api.call("PUT", f"/v1/groups/{gid}/changes/1", {"change": sealed})
    page = await alice.api.call("GET", f"/v1/groups/{gid}/changes?since=1")
    assert [c["version"] for c in page["changes"]] == [1] and page["next_version"] == 2
