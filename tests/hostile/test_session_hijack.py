"""(a) A first message under the server's identity, relabelled as Alice's; (b) a first
message replayed by the server; (j) one-time prekeys drained by a third party.

The server is played for real: a puppet account stands in for the key pair the
server would make itself, and the server's database is edited to relabel or
copy queued messages, as an intruder on the server could.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from parley.errors import ServerError
from parley.server.handlers.keys import BUNDLES_PER_CONTACT
from tests.e2e.conftest import register
from tests.e2e.test_key_transparency import cli_user, parley

from .conftest import HostileServer


def _account(tmp: Path, profile: str) -> str:
    return str(json.loads(parley(tmp, profile, "whoami", "--json").stdout)["account_id"])


def _receive(tmp: Path, profile: str) -> tuple[list[dict[str, object]], str]:
    """The messages shown, and what was said on stderr; every refusal said on stderr
    is also a JSON event on stdout."""
    result = parley(tmp, profile, "receive", "--json", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
    refused = [x for x in lines if x.get("event") == "refused"]
    assert len(refused) == result.stderr.count("was refused")
    return [x for x in lines if x.get("event") != "refused"], result.stderr


async def test_a_first_message_under_the_servers_identity_is_refused(
    hostile: HostileServer, tmp_path: Path
) -> None:
    alice = await register(hostile.process)
    cli_user(hostile.process, tmp_path, "bob")
    bob = _account(tmp_path, "bob")
    puppet = await register(hostile.process)  # the server's own key pair
    puppet_id = puppet.account_id
    try:
        puppet.state.account_id = alice.account_id  # franked as Alice's, as the server would
        await puppet.send_content(bob, puppet.content("it is me, alice", control=b'{"id": "p-1"}'))
        hostile.sql(
            "UPDATE messages SET sender_account = ?, sender_device = 1 WHERE sender_account = ?",
            (alice.account_id, puppet_id),
        )
        shown, said = _receive(tmp_path, "bob")
        assert shown == []  # never shown as Alice's...
        assert "was refused: its identity is neither the key directory's" in said  # ...nor silently
        # Bob's next message to "Alice" goes to Alice's real identity, and she reads it.
        await alice.send_text(bob, "the real alice")
        shown, said = _receive(tmp_path, "bob")
        assert [m["text"] for m in shown] == ["the real alice"] and said == ""
    finally:
        await alice.api.close()
        await puppet.api.close()


async def test_a_first_message_copied_by_the_server_is_refused(
    hostile: HostileServer, tmp_path: Path
) -> None:
    alice = await register(hostile.process)
    cli_user(hostile.process, tmp_path, "bob")
    bob = _account(tmp_path, "bob")
    # No one-time prekey left (drained, or withheld by the server): the first
    # message then rests on the signed and last-resort prekeys alone, the case
    # where only remembering base keys stops a replay.
    hostile.sql("DELETE FROM one_time_prekeys WHERE account_id = ?", (bob,))
    try:
        await alice.send_text(bob, "first")
        (guid,) = hostile.sql(
            "SELECT guid FROM messages WHERE sender_account = ?", (alice.account_id,)
        )[0]
        alice.state.sessions.clear()  # alice starts a new session: the old one changed
        await alice.send_text(bob, "second session")
        copy = (
            "INSERT INTO messages (guid, account_id, device_id, sender_account, sender_device,"
            " group_id, envelope, franking_tag, server_ms, expires_ms)"
            " SELECT ?, account_id, device_id, sender_account, ?, group_id, envelope,"
            " franking_tag, server_ms, expires_ms FROM messages WHERE guid = ?"
        )
        hostile.sql(copy, (str(uuid.uuid4()), 1, guid))  # after the session changed
        hostile.sql(copy, (str(uuid.uuid4()), 2, guid))  # under a device the directory lacks
        shown, said = _receive(tmp_path, "bob")
        assert [m["text"] for m in shown] == ["first", "second session"]
        assert said.count("was refused") == 2
        await alice.send_text(bob, "and on")
        shown, _ = _receive(tmp_path, "bob")
        assert [m["text"] for m in shown] == ["and on"]
    finally:
        await alice.api.close()


async def test_one_time_prekeys_cannot_be_drained_and_are_refilled(
    hostile: HostileServer, tmp_path: Path
) -> None:
    cli_user(hostile.process, tmp_path, "bob")
    bob = _account(tmp_path, "bob")
    drainer = await register(hostile.process)
    try:
        for _ in range(BUNDLES_PER_CONTACT):
            await drainer.api.call("GET", f"/v1/keys/{bob}")
        with pytest.raises(ServerError) as refused:
            await drainer.api.call("GET", f"/v1/keys/{bob}")
        assert refused.value.status == 429
        (left,) = hostile.sql("SELECT count(*) FROM one_time_prekeys WHERE account_id = ?", (bob,))[
            0
        ]
        assert int(left) == 50 - BUNDLES_PER_CONTACT
        # Whatever empties them (many accounts, or the server), the owner refills them.
        hostile.sql("DELETE FROM one_time_prekeys WHERE account_id = ?", (bob,))
        hostile.sql(
            "DELETE FROM kem_prekeys WHERE account_id = ? AND last_resort = ?", (bob, False)
        )
        assert parley(tmp_path, "bob", "notices").returncode == 0  # any network command
        (refilled,) = hostile.sql(
            "SELECT count(*) FROM one_time_prekeys WHERE account_id = ?", (bob,)
        )[0]
        (kem,) = hostile.sql(
            "SELECT count(*) FROM kem_prekeys WHERE account_id = ? AND last_resort = ?",
            (bob, False),
        )[0]
        assert int(refilled) >= 50 and int(kem) >= 50
    finally:
        await drainer.api.close()
