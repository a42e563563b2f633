"""Key transparency against a server that lies: (c) a ghost device, (d) a forged
directory and log under a fresh log key, (e) a split view, (f) a stale epoch
serving a replaced key, (g) a key published for one epoch and reverted.

Each attack is played as the server could play it: by editing its own database
(``hostile.sql``), by restarting itself with a new log key, or by answering
through a lying front (``proxy.LyingProxy``) that serves real, signed data from
the real server, chosen to deceive. Users are real ``parley`` processes with
their own profiles. Every attack must end in a refusal (non-zero exit, one line
saying why, a JSON field under ``--json``) or an alarm the user cannot miss
(shown on every command, listed by ``parley keys check --json``), and the
honest flow must keep working.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from parley.client.kt import KeyTransparencyError, verified_lookup
from parley.protocol.keys import IdentityKeyPair
from parley.server.handlers.transparency import canonical
from parley.translog import merkle
from parley.translog.directory import DeviceList
from tests.e2e.conftest import new_phone, register
from tests.e2e.test_key_transparency import parley

from .conftest import HostileServer
from .proxy import LyingProxy, replay


@pytest.fixture
def server(hostile: HostileServer) -> HostileServer:
    """The hostile server, publishing an epoch every half second (a key change in its
    database reaches the directory at once, as any honest change would)."""
    hostile.process.stop()
    hostile.process.extra = ["--kt-epoch-seconds", "0.5"]
    hostile.process.start()
    return hostile


@pytest.fixture
def proxy(server: HostileServer) -> Iterator[LyingProxy]:
    front = LyingProxy(server.url)
    front.start()
    yield front
    front.stop()


def user(server: HostileServer, tmp: Path, profile: str, url: str | None = None) -> str:
    """A registered ``parley`` profile (through ``url``, the server's by default)."""
    phone = new_phone()
    assert parley(tmp, profile, "register", phone, "--server", url or server.url).returncode == 0
    sms = server.process.sms_file.read_text().splitlines()
    code = [ln.split()[1] for ln in sms if ln.split()[0] == phone][-1]
    verified = parley(tmp, profile, "verify", code)
    assert verified.returncode == 0, verified.stderr
    return phone


def account(tmp: Path, profile: str) -> str:
    return str(json.loads(parley(tmp, profile, "whoami", "--json").stdout)["account_id"])


def published(server: HostileServer, account_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/v1/kt/lookup/{account_id}").json())


def wait_for(
    server: HostileServer, account_id: str, version: int, signed: bool = False
) -> dict[str, Any]:
    """The directory entry once it reaches ``version`` (the next epoch), and, with
    ``signed``, carries its owner's signed device list."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        entry = published(server, account_id)
        if entry.get("version", 0) >= version and (entry.get("device_list") or not signed):
            time.sleep(0.3)  # and any epoch the change set off
            return entry
        time.sleep(0.2)
    raise AssertionError(f"version {version} of {account_id} was never published")


def count(server: HostileServer, statement: str, params: tuple[Any, ...]) -> int:
    return int(server.sql(statement, params)[0][0])  # psql answers in text


def check(tmp: Path, profile: str) -> tuple[int, dict[str, Any]]:
    result = parley(tmp, profile, "keys", "check", "--json")
    return result.returncode, json.loads(result.stdout)


def refused(result: Any, *said: str) -> None:
    """A refused action: exit 1, one line on stderr saying why."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("parley: ")]
    assert len(errors) == 1, result.stderr
    for words in said:
        assert words in errors[0], errors[0]


# -- (c) -----------------------------------------------------------------------------------------


async def test_c_a_ghost_device_alarms_its_owner_and_contacts_do_not_encrypt_to_it(
    server: HostileServer, tmp_path: Path
) -> None:
    alice_phone = user(server, tmp_path, "alice")
    bob_phone = user(server, tmp_path, "bob")
    alice = account(tmp_path, "alice")
    assert parley(tmp_path, "bob", "send", alice_phone, "hello").returncode == 0
    version = published(server, alice)["version"]
    # The strongest ghost a server can make: a device row plus copies of device 1's
    # prekeys, so every prekey signature in its bundle checks out.
    server.sql(
        "INSERT INTO devices (account_id, device_id, credential_hash, created_ms)"
        " VALUES (?, 9, ?, 0)",
        (alice, b"\x00" * 32),
    )
    server.sql(
        "INSERT INTO signed_prekeys (account_id, device_id, key_id, public_key, signature)"
        " SELECT account_id, 9, key_id, public_key, signature FROM signed_prekeys"
        " WHERE account_id = ? AND device_id = 1",
        (alice,),
    )
    server.sql(
        "INSERT INTO kem_prekeys (account_id, device_id, key_id, public_key, signature,"
        " last_resort) SELECT account_id, 9, key_id, public_key, signature, last_resort"
        " FROM kem_prekeys WHERE account_id = ? AND device_id = 1 AND last_resort",
        (alice,),
    )
    server.process.stop()  # and serves it (its caches were filled before)
    server.process.start()
    assert wait_for(server, alice, version + 1)["devices"] == [1, 9]  # in the directory

    # A contact does not encrypt to it: the send is refused, and nothing is queued.
    sent = parley(tmp_path, "bob", "send", alice_phone, "to the ghost?")
    refused(sent, "device 9", "never signed it into its device list", "not encrypting to it")
    as_json = parley(tmp_path, "bob", "send", alice_phone, "to the ghost?", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["error"]["code"] == "key_transparency"
    queued = "SELECT count(*) FROM messages WHERE account_id = ? AND device_id = ?"
    assert count(server, queued, (alice, 9)) == 0

    # The owner is alarmed, on every command, until it acknowledges.
    code, result = check(tmp_path, "alice")
    assert code == 1 and not result["ok"]
    assert any(
        "device 9 was added to your account and you did not link it" in a for a in result["alarms"]
    )
    assert "ALARM: device 9" in parley(tmp_path, "alice", "whoami").stderr
    assert result["signed_devices"] == [1]  # the owner never signs it

    # Honest again: the ghost removed, Bob's messages reach Alice.
    for table in ("devices", "signed_prekeys", "kem_prekeys"):
        server.sql(f"DELETE FROM {table} WHERE account_id = ? AND device_id = 9", (alice,))
    server.process.stop()
    server.process.start()
    wait_for(server, alice, version + 2)
    assert parley(tmp_path, "bob", "send", alice_phone, "still here").returncode == 0

    # A server that drops the owner's signed list only stops delivery; the owner's
    # next command signs it again.
    server.sql("DELETE FROM kt_device_lists WHERE account_id = ?", (alice,))
    wait_for(server, alice, version + 3)
    refused(parley(tmp_path, "bob", "send", alice_phone, "x"), "no device list signed")
    assert parley(tmp_path, "alice", "keys", "check", "--ack").returncode == 0
    wait_for(server, alice, version + 4)
    assert parley(tmp_path, "bob", "send", alice_phone, "and on").returncode == 0
    got = parley(tmp_path, "alice", "receive", "--json", "--timeout", "5")
    texts = [json.loads(x).get("text") for x in got.stdout.splitlines() if x.strip()]
    assert texts == ["hello", "still here", "and on"], got.stderr
    assert bob_phone


def signed_list(server: HostileServer, account_id: str) -> DeviceList | None:
    raw = published(server, account_id).get("device_list")
    return DeviceList.from_bytes(base64.b64decode(raw)) if raw else None


def wait_for_list(server: HostileServer, account_id: str, devices: tuple[int, ...]) -> DeviceList:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = signed_list(server, account_id)
        if found is not None and found.devices == devices:
            time.sleep(0.3)
            return found
        time.sleep(0.2)
    raise AssertionError(f"the signed list {devices} was never published")


async def test_c_an_unlinked_device_slipped_back_with_its_old_signed_list_is_caught(
    server: HostileServer, tmp_path: Path
) -> None:
    alice_phone = user(server, tmp_path, "alice")
    user(server, tmp_path, "bob")
    alice = account(tmp_path, "alice")
    link_code = parley(tmp_path, "alice", "devices", "link").stdout.strip().splitlines()[-1]
    linked = parley(tmp_path, "alice-laptop", "link", link_code, "--server", server.url)
    assert linked.returncode == 0, linked.stderr
    old = wait_for_list(server, alice, (1, 2))  # the laptop signed itself in
    assert parley(tmp_path, "bob", "send", alice_phone, "to both").returncode == 0
    assert parley(tmp_path, "alice", "keys", "check").returncode == 0
    assert parley(tmp_path, "alice", "devices", "unlink", "2").returncode == 0
    newer = wait_for_list(server, alice, (1,))
    assert newer.counter > old.counter
    assert parley(tmp_path, "bob", "send", alice_phone, "to one").returncode == 0
    version = published(server, alice)["version"]
    # The server brings device 2 back (say, a stolen laptop) with the list that once
    # named it, signed by Alice herself: every signature checks out.
    server.sql(
        "INSERT INTO devices (account_id, device_id, credential_hash, created_ms)"
        " VALUES (?, 2, ?, 0)",
        (alice, b"\x00" * 32),
    )
    for table, columns in (
        ("signed_prekeys", "key_id, public_key, signature"),
        ("kem_prekeys", "key_id, public_key, signature, last_resort"),
    ):
        server.sql(
            f"INSERT INTO {table} (account_id, device_id, {columns}) SELECT account_id, 2,"
            f" {columns} FROM {table} WHERE account_id = ? AND device_id = 1",
            (alice,),
        )
    server.sql(
        "UPDATE kt_device_lists SET counter = ?, device_list = ? WHERE account_id = ?",
        (old.counter, old.to_bytes(), alice),
    )
    server.process.stop()
    server.process.start()
    wait_for(server, alice, version + 1)
    refused(
        parley(tmp_path, "bob", "send", alice_phone, "to the old laptop?"),
        "older device list",
    )
    code, result = check(tmp_path, "alice")
    assert code == 1
    assert any("an older device list of yours was published again" in a for a in result["alarms"])


# -- (d) -----------------------------------------------------------------------------------------


async def test_d_a_forged_directory_and_log_under_a_fresh_log_key_is_refused(
    server: HostileServer, tmp_path: Path
) -> None:
    alice_phone = user(server, tmp_path, "alice")
    user(server, tmp_path, "bob")
    alice = account(tmp_path, "alice")
    assert parley(tmp_path, "bob", "send", alice_phone, "hello").returncode == 0
    # The server swaps Alice's identity for a key pair of its own, signs her device
    # list with it, and publishes a whole new directory and log under a new log key:
    # every proof in it is valid; only the log key is not the one pinned.
    forged = IdentityKeyPair.generate(secrets.token_bytes)
    signed = DeviceList.sign(forged.signing, alice, int(time.time() * 1000) + 10_000, [1])
    server.process.stop()
    server.sql(
        "UPDATE accounts SET identity_key = ? WHERE id = ?", (forged.public.to_bytes(), alice)
    )
    server.sql("DELETE FROM kt_device_lists WHERE account_id = ?", (alice,))
    server.sql(
        "INSERT INTO kt_device_lists (account_id, counter, device_list) VALUES (?, ?, ?)",
        (alice, signed.counter, signed.to_bytes()),
    )
    for statement in (
        "DELETE FROM server_secrets WHERE name = 'log'",
        "DELETE FROM translog_entries",
        "DELETE FROM kt_versions",
    ):
        server.sql(statement)
    server.process.start()
    forged_entry = wait_for(server, alice, 1)
    assert (
        forged_entry["identity_key"]
        != json.loads(parley(tmp_path, "alice", "whoami", "--json").stdout)["identity_key"]
    )

    sent = parley(tmp_path, "bob", "send", alice_phone, "to the forged alice?")
    refused(sent, "another key than the one pinned at registration")
    assert "ALARM: the server's transparency log is signed with another key" in sent.stderr
    as_json = parley(tmp_path, "bob", "send", alice_phone, "x", "--json")
    assert json.loads(as_json.stdout)["refused"] is True
    for profile in ("bob", "alice"):  # the owner too, and both stay alarmed
        code, result = check(tmp_path, profile)
        assert code == 1 and not result["ok"]
        assert any("pinned at registration" in a for a in result["alarms"])
        refused(parley(tmp_path, profile, "keys", "head"), "pinned at registration")
        assert "ALARM" in parley(tmp_path, profile, "whoami").stderr


# -- (e) -----------------------------------------------------------------------------------------


async def test_e_a_split_view_two_heads_of_one_size_is_caught(
    server: HostileServer, tmp_path: Path
) -> None:
    bob_phone = user(server, tmp_path, "bob")
    alice_phone = user(server, tmp_path, "alice")
    time.sleep(1.0)  # the epochs of Alice's registration are in the log
    assert parley(tmp_path, "alice", "keys", "check").returncode == 0
    head_a = parley(tmp_path, "alice", "keys", "head").stdout.strip()
    assert parley(tmp_path, "alice", "send", bob_phone, "hello bob").returncode == 0
    # Alice has seen the log up to its last entry. Bob has not looked since he
    # registered. The server now shows Bob another log of the same size: its last
    # entry rewritten (same epoch and root, one more field), signed with its own key.
    size = int(head_a.split("-")[0])
    (last,) = httpx.get(f"{server.url}/v1/transparency/entries?start={size - 1}&end={size}").json()[
        "entries"
    ]
    body = canonical({**last["body"], "note": "the log Bob is shown"})
    server.process.stop()
    server.sql(
        "UPDATE translog_entries SET body = ?, leaf_hash = ? WHERE seq = ?",
        (body, merkle.leaf_hash(body), size - 1),
    )
    server.process.start()
    head_b = parley(tmp_path, "bob", "keys", "head")
    assert head_b.returncode == 0, head_b.stderr  # an extension of what Bob saw before
    code_b = head_b.stdout.strip()
    assert code_b.split("-")[0] == head_a.split("-")[0] and code_b != head_a  # the split

    # Gossip: Alice's message carries her head; Bob's client asks the server to prove
    # it consistent with his own, and it cannot.
    got = parley(tmp_path, "bob", "receive", "--json", "--timeout", "5")
    shown = [json.loads(x) for x in got.stdout.splitlines() if x.strip()]
    assert [m.get("text") for m in shown if m.get("event") != "alarm"] == ["hello bob"]
    assert f"ALARM: FORK: a message from {alice_phone}" in got.stderr
    assert any(m.get("alarm", "").startswith("FORK") for m in shown if m.get("event") == "alarm")
    code, result = check(tmp_path, "bob")
    assert code == 1 and any(a.startswith("FORK: a message from") for a in result["alarms"])
    # And Alice's own client refuses the other log the moment it is shown it.
    refused(parley(tmp_path, "alice", "send", bob_phone, "x"), "FORK")
    code, result = check(tmp_path, "alice")
    assert code == 1 and any(a.startswith("FORK") for a in result["alarms"])


# -- (f) -----------------------------------------------------------------------------------------


async def test_f_a_stale_epoch_serving_a_replaced_key_is_refused(
    server: HostileServer, proxy: LyingProxy, tmp_path: Path
) -> None:
    user(server, tmp_path, "alice", url=proxy.url)  # Alice's server is the lying front
    bob_phone = new_phone()
    bob = await register(server.process, bob_phone)
    bob_new = None
    try:
        first = wait_for(server, bob.account_id, 1, signed=True)
        old_lookup = published(server, bob.account_id)
        old_account = await bob.api.call("GET", f"/v1/accounts/{bob.account_id}")
        old_directory = await bob.api.call("GET", f"/v1/directory/{bob_phone}")
        # Bob replaces his key (a new phone, re-registered): a new version, a new epoch.
        bob_new = await register(server.process, bob_phone)
        assert bob_new.account_id == bob.account_id
        wait_for(server, bob.account_id, first["version"] + 1)
        assert parley(tmp_path, "alice", "keys", "check").returncode == 0  # Alice sees it all

        async def stale(request: Request) -> dict[str, Any]:
            """Bob's old entry, proved in its old epoch, under the current signed head:
            every proof verifies; only a later epoch in the log gives it away."""
            since = int(request.query_params.get("since", "0"))
            head = await proxy.upstream_json("/v1/transparency/head")
            n, i = head["size"], old_lookup["log_index"]
            inclusion = await proxy.upstream_json(f"/v1/transparency/inclusion?index={i}&size={n}")
            tail = await proxy.upstream_json(f"/v1/transparency/entries?start={i}&end={n}")
            consistency = (
                await proxy.upstream_json(f"/v1/transparency/consistency?first={since}&second={n}")
                if 0 < since < n
                else {"proof": []}
            )
            return {
                **old_lookup,
                "head": {k: head[k] for k in ("size", "root", "timestamp_ms", "signature")},
                "public_key": head["public_key"],
                "inclusion": inclusion["proof"],
                "tail": [e["leaf"] for e in tail["entries"]],
                "consistency": consistency["proof"],
            }

        proxy.answers[f"/v1/kt/lookup/{bob.account_id}"] = stale
        proxy.answers[f"/v1/accounts/{bob.account_id}"] = replay(old_account)
        proxy.answers[f"/v1/directory/{bob_phone}"] = replay(old_directory)
        sent = parley(tmp_path, "alice", "send", bob_phone, "to bob's old key?")
        refused(sent, "stale epoch")
        code, result = check(tmp_path, "alice")
        assert code == 1 and any(a.startswith("stale epoch") for a in result["alarms"])

        # The old answer replayed whole, with its old signed head, is refused too.
        proxy.answers[f"/v1/kt/lookup/{bob.account_id}"] = replay(old_lookup)
        refused(parley(tmp_path, "alice", "send", bob_phone, "x"), "rolled-back or split view")

        # Honest again: Alice reaches Bob's new key.
        proxy.answers.clear()
        assert parley(tmp_path, "alice", "keys", "check", "--ack").returncode == 0
        assert parley(tmp_path, "alice", "send", bob_phone, "to the new bob").returncode == 0
        async with bob_new.api.websocket() as ws:
            assert [m.content.text for m in await bob_new.receive(ws)] == ["to the new bob"]
    finally:
        await bob.api.close()
        if bob_new is not None:
            await bob_new.api.close()


# -- (g) -----------------------------------------------------------------------------------------


async def test_g_a_key_published_for_one_epoch_and_reverted_is_still_seen(
    server: HostileServer, tmp_path: Path
) -> None:
    user(server, tmp_path, "alice")
    alice = account(tmp_path, "alice")
    code, result = check(tmp_path, "alice")
    assert code == 0, result
    version = result["version"]
    contact = await register(server.process)
    try:
        # One epoch with the server's identity key for Alice, shown to a contact...
        forged = IdentityKeyPair.generate(secrets.token_bytes).public.to_bytes()
        mine = published(server, alice)["identity_key"]
        server.sql("UPDATE accounts SET identity_key = ? WHERE id = ?", (forged, alice))
        wait_for(server, alice, version + 1)
        shown = await verified_lookup(contact.api, alice)
        assert shown["identity_key"] == forged  # the attack window is real
        # ...then reverted before Alice looks.
        server.sql(
            "UPDATE accounts SET identity_key = ? WHERE id = ?", (base64.b64decode(mine), alice)
        )
        wait_for(server, alice, version + 2)
        code, result = check(tmp_path, "alice")
        assert code == 1
        assert any(
            "identity key for your account that is not yours" in a
            and f"directory version {version + 1}" in a
            and "reverted since" in a
            for a in result["alarms"]
        ), result["alarms"]
        assert (
            "ALARM: the key directory published an identity key"
            in parley(tmp_path, "alice", "whoami").stderr
        )

        # The same for a device: listed for one epoch, then gone.
        assert parley(tmp_path, "alice", "keys", "check", "--ack").returncode == 0
        server.sql(
            "INSERT INTO devices (account_id, device_id, credential_hash, created_ms)"
            " VALUES (?, 7, ?, 0)",
            (alice, b"\x00" * 32),
        )
        wait_for(server, alice, version + 3)
        server.sql("DELETE FROM devices WHERE account_id = ? AND device_id = 7", (alice,))
        now = wait_for(server, alice, version + 4)
        assert now["devices"] == [1]
        code, result = check(tmp_path, "alice")
        assert code == 1
        assert any(
            "device 7 was added to your account and you did not link it" in a
            and "removed again since" in a
            for a in result["alarms"]
        ), result["alarms"]
        assert parley(tmp_path, "alice", "keys", "check", "--ack").returncode == 0

        # A server that instead erases the versions it showed (rewinding its records)
        # is caught by whoever saw them: versions only grow.
        await verified_lookup(contact.api, alice)
        server.process.stop()
        server.sql("DELETE FROM kt_versions WHERE account_id = ? AND version > ?", (alice, version))
        server.process.start()
        with pytest.raises(KeyTransparencyError, match="went back"):
            await verified_lookup(contact.api, alice)
        code, result = check(tmp_path, "alice")
        assert code == 1 and any("went back" in a for a in result["alarms"]), result["alarms"]
    finally:
        await contact.api.close()
