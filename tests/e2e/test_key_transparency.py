"""Key transparency end to end: no silent key substitution or ghost device."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from parley.client.kt import KeyTransparencyError, verified_lookup

from .conftest import new_phone, register
from .server import ServerProcess


def parley(tmp: Path, profile: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARLEY_PASSPHRASE": "pw"}
    return subprocess.run(
        [sys.executable, "-m", "parley.cli.main", "--profile", str(tmp / profile), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def cli_user(server: ServerProcess, tmp: Path, profile: str) -> str:
    phone = new_phone()
    assert parley(tmp, profile, "register", phone, "--server", server.url).returncode == 0
    code = [
        ln.split()[1] for ln in server.sms_file.read_text().splitlines() if ln.split()[0] == phone
    ][-1]
    assert parley(tmp, profile, "verify", code).returncode == 0
    return phone


def ghost_device(server: ServerProcess, account_id: str, device_id: int = 9) -> None:
    """A malicious server adds a device straight into its database."""
    with sqlite3.connect(server.data_dir / "parley.db") as conn:
        conn.execute(
            "insert into devices (account_id, device_id, credential_hash, created_ms) values (?, ?, ?, ?)",
            (account_id, device_id, b"\x00" * 32, 0),
        )


def kt_server(tmp_path: Path, epoch_s: str) -> ServerProcess:
    server = ServerProcess(
        tmp_path,
        f"sqlite:///{tmp_path / 'data' / 'parley.db'}",
        extra=["--kt-epoch-seconds", epoch_s],
    )
    server.start()
    return server


async def test_a_device_the_user_linked_passes_monitoring(tmp_path: Path) -> None:
    server = kt_server(tmp_path, "0.5")
    try:
        cli_user(server, tmp_path, "alice")
        code = parley(tmp_path, "alice", "devices", "link").stdout.strip().splitlines()[-1]
        assert (
            parley(tmp_path, "alice-laptop", "link", code, "--server", server.url).returncode == 0
        )
        time.sleep(1.0)
        check = parley(tmp_path, "alice", "keys", "check", "--json")
        assert check.returncode == 0, check.stderr
        assert json.loads(check.stdout)["devices"] == [1, 2]
        assert parley(tmp_path, "alice-laptop", "keys", "check").returncode == 0
    finally:
        server.stop()


async def test_a_ghost_device_in_the_database_is_caught_by_the_owner(tmp_path: Path) -> None:
    server = kt_server(tmp_path, "0.5")
    try:
        cli_user(server, tmp_path, "alice")
        me = json.loads(parley(tmp_path, "alice", "whoami", "--json").stdout)
        ghost_device(server, me["account_id"])
        time.sleep(1.5)  # the next epoch publishes what the database holds
        check = parley(tmp_path, "alice", "keys", "check")
        assert (
            check.returncode == 1
            and "device 9 was added to your account and you did not link it" in check.stderr
        )
        warned = parley(tmp_path, "alice", "whoami")
        assert "ALARM" in warned.stderr  # on every command until acknowledged
        assert parley(tmp_path, "alice", "keys", "check", "--ack").returncode == 0
        assert "ALARM" not in parley(tmp_path, "alice", "whoami").stderr
    finally:
        server.stop()


async def test_a_substituted_identity_key_is_caught_by_the_owner(tmp_path: Path) -> None:
    server = kt_server(tmp_path, "0.5")
    try:
        cli_user(server, tmp_path, "alice")
        me = json.loads(parley(tmp_path, "alice", "whoami", "--json").stdout)
        with sqlite3.connect(server.data_dir / "parley.db") as conn:
            conn.execute(
                "update accounts set identity_key = ? where id = ?",
                (os.urandom(64), me["account_id"]),
            )
        time.sleep(1.5)
        check = parley(tmp_path, "alice", "keys", "check")
        assert check.returncode == 1 and "identity key" in check.stderr
    finally:
        server.stop()


async def test_a_contact_refuses_keys_that_are_not_in_the_directory(tmp_path: Path) -> None:
    server = kt_server(tmp_path, "3600")  # no scheduled epoch: the insert below is never published
    try:
        alice, bob = await register(server), await register(server)
        await alice.send_text(bob.account_id, "before")
        ghost_device(server, bob.account_id)
        server.stop()
        server.start()  # fresh caches; the directory is rebuilt at start, so add the ghost after
        ghost_device(server, bob.account_id, 10)
        alice.api = type(alice.api)(server.url, alice.api.credential)
        alice._verified.clear()
        with pytest.raises(KeyTransparencyError):
            await alice.send_text(bob.account_id, "to a ghost?")
    finally:
        server.stop()


async def test_lookups_verify_and_leak_no_other_account(sqlite_server: ServerProcess) -> None:
    users = [await register(sqlite_server) for _ in range(4)]
    time.sleep(0.5)
    published = await verified_lookup(users[0].api, users[1].account_id)
    assert published["devices"] == [1]
    raw = httpx.get(f"{sqlite_server.url}/v1/kt/lookup/{users[1].account_id}").text
    others = [u for i, u in enumerate(users) if i != 1]
    for u in others:
        me = await u.api.call("GET", "/v1/accounts/me")
        assert (
            u.account_id not in raw
            and me["phone"] not in raw
            and me["phone"].lstrip("+") not in raw
        )


async def test_a_rewritten_log_is_refused_by_every_client_that_saw_it(tmp_path: Path) -> None:
    server = kt_server(tmp_path, "3600")
    try:
        cli_user(server, tmp_path, "alice")
        cli_user(server, tmp_path, "bob")
        head_a = parley(tmp_path, "alice", "keys", "head").stdout.strip()
        assert parley(tmp_path, "bob", "keys", "head").stdout.strip() == head_a  # the same log
        with sqlite3.connect(server.data_dir / "parley.db") as conn:  # rewrite history
            from parley.server.handlers.transparency import canonical
            from parley.translog.merkle import leaf_hash

            body = canonical({"kind": "kt_epoch", "epoch": 1, "root": "ff" * 32, "size": 0})
            conn.execute(
                "update translog_entries set body = ?, leaf_hash = ? where seq = 0",
                (body, leaf_hash(body)),
            )
        server.stop()
        server.start()
        for user in ("alice", "bob"):  # each kept the head it verified: no comparing needed
            seen = parley(tmp_path, user, "keys", "head")
            assert seen.returncode == 1 and "FORK" in seen.stderr, seen.stderr
            assert "ALARM: FORK" in parley(tmp_path, user, "whoami").stderr
    finally:
        server.stop()
