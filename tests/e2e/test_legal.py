"""Lawful requests, the transparency log and the privacy policy, through the real server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import new_phone, register
from .server import ServerProcess
from .test_reports import admin


def tool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley.cli.authority", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def parley(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARLEY_PASSPHRASE": "pw"}
    return subprocess.run(
        [sys.executable, "-m", "parley.cli.main", "--profile", str(profile), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def order(target: str, order_id: str, **changes: Any) -> dict[str, Any]:
    base = {
        "order_id": order_id,
        "authority": "Amtsgericht Berlin",
        "jurisdiction": "DE",
        "case_reference": "123 Js 456/26",
        "legal_basis": "StPO §100g",
        "offence_category": "fraud",
        "target": target,
        "time_range": {"from": "2020-01-01T00:00:00Z", "to": "2099-01-01T00:00:00Z"},
        "requested_data": ["ip_addresses", "phone_number"],
        "issued_at": "2026-01-01T00:00:00Z",
        "expires_at": "2099-01-01T00:00:00Z",
    }
    base.update(changes)
    return base


class Legal:
    def __init__(self, server: ServerProcess, tmp: Path) -> None:
        self.server, self.tmp = server, tmp
        self.officers = [self._staff(f"officer{i}", "legal") for i in range(2)]
        assert tool("keygen", "--out", "court.key", cwd=tmp).returncode == 0
        added = admin(
            server,
            "authority",
            "add",
            "Amtsgericht Berlin",
            "--jurisdiction",
            "DE",
            "--public-key",
            str(tmp / "court.key.pub"),
            token=self.officers[0],
        )
        assert added.returncode == 0, added.stderr

    def _staff(self, name: str, role: str) -> str:
        out = admin(self.server, "staff", "add", name, "--role", role, remote=False)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    def submit(self, content: dict[str, Any], key: str = "court.key") -> dict[str, Any]:
        (self.tmp / "order.json").write_text(json.dumps(content))
        assert (
            tool(
                "sign", "order.json", "--key", key, "--out", "signed.json", cwd=self.tmp
            ).returncode
            == 0
        )
        out = admin(
            self.server,
            "legal",
            "submit",
            str(self.tmp / "signed.json"),
            "--json",
            token=self.officers[0],
        )
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def show(self, request_id: str) -> dict[str, Any]:
        return dict(
            json.loads(
                admin(
                    self.server, "legal", "show", request_id, "--json", token=self.officers[1]
                ).stdout
            )
        )


@pytest.fixture
def legal(server: ServerProcess, tmp_path: Path) -> Legal:
    return Legal(server, tmp_path)


async def test_a_valid_order_is_approved_by_two_officers_and_exports_only_phone_and_ips(
    server: ServerProcess, legal: Legal, tmp_path: Path
) -> None:
    target, friend = await register(server), await register(server)
    canary = "CANARY-" + os.urandom(6).hex()
    await target.send_text(friend.account_id, canary)
    phone = (await target.api.call("GET", "/v1/accounts/me"))["phone"]
    submitted = legal.submit(
        order(
            phone, "DE-1", requested_data=["ip_addresses", "phone_number", "messages", "contacts"]
        )
    )
    assert submitted["status"] == "pending"
    shown = legal.show(submitted["id"])
    assert (
        set(shown["refused"]) == {"messages", "contacts"}
        and "end-to-end encrypted" in shown["refused"]["messages"]
    )
    assert (
        admin(
            server,
            "legal",
            "export",
            submitted["id"],
            "--out",
            str(tmp_path / "early.json"),
            token=legal.officers[0],
        ).returncode
        == 1
    )
    assert (
        admin(server, "legal", "approve", submitted["id"], token=legal.officers[0]).returncode == 0
    )
    twice = admin(server, "legal", "approve", submitted["id"], token=legal.officers[0])
    assert twice.returncode == 1 and "only once" in twice.stderr
    moderator = legal._staff("mo", "moderator")
    assert admin(server, "legal", "approve", submitted["id"], token=moderator).returncode == 1
    assert (
        admin(server, "legal", "approve", submitted["id"], token=legal.officers[1]).returncode == 0
    )
    assert legal.show(submitted["id"])["status"] == "approved"
    out = admin(
        server,
        "legal",
        "export",
        submitted["id"],
        "--out",
        str(tmp_path / "pkg.json"),
        token=legal.officers[1],
    )
    assert out.returncode == 0, out.stderr
    raw = (tmp_path / "pkg.json").read_text()
    package = json.loads(raw)
    assert set(package["package"]["data"]) == {"phone_number", "ip_addresses"}
    assert package["package"]["data"]["phone_number"] == phone
    assert package["package"]["data"]["ip_addresses"] and all(
        set(x) == {"ip", "at_ms"} for x in package["package"]["data"]["ip_addresses"]
    )
    assert canary not in raw and friend.account_id not in raw
    # the package is signed by the platform's disclosure key
    import base64

    import rfc8785

    from parley.crypto.primitives import VerifyKey

    VerifyKey(base64.b64decode(package["public_key"])).verify(
        base64.b64decode(package["signature"]), bytes(rfc8785.dumps(package["package"]))
    )
    notices = (await target.api.call("GET", "/v1/notices"))[
        "notices"
    ]  # no non-disclosure date: told at once
    assert (
        notices
        and notices[0]["kind"] == "lawful_request"
        and notices[0]["authority"] == "Amtsgericht Berlin"
    )


async def test_invalid_orders_are_refused_with_the_right_reason(
    server: ServerProcess, legal: Legal
) -> None:
    target = await register(server)
    phone = (await target.api.call("GET", "/v1/accounts/me"))["phone"]
    assert tool("keygen", "--out", "other.key", cwd=legal.tmp).returncode == 0
    cases = {
        "bad signature": (order(phone, "X-1"), "other.key", "signature"),
        "unknown authority": (
            order(phone, "X-2", authority="Nobody's Court"),
            "court.key",
            "unknown authority",
        ),
        "expired": (order(phone, "X-3", expires_at="2025-01-01T00:00:00Z"), "court.key", "expired"),
        "unknown target": (order(new_phone(), "X-4"), "court.key", "not a Parley account"),
        "messages only": (
            order(phone, "X-5", requested_data=["messages"]),
            "court.key",
            "nothing that Parley can disclose",
        ),
    }
    for name, (content, key, reason) in cases.items():
        result = legal.submit(content, key)
        assert result["status"] == "refused" and reason in result["reason"], name
    first = legal.submit(order(phone, "X-6"))
    assert first["status"] == "pending"
    replay = legal.submit(order(phone, "X-6"))
    assert replay["status"] == "refused" and "replay" in replay["reason"]
    assert (
        admin(
            server, "authority", "revoke", "Amtsgericht Berlin", token=legal.officers[0]
        ).returncode
        == 0
    )
    revoked = legal.submit(order(phone, "X-7"))
    assert revoked["status"] == "refused" and "revoked" in revoked["reason"]
    refused = admin(
        server,
        "legal",
        "refuse",
        first["id"],
        "--reason",
        "disproportionate",
        token=legal.officers[1],
    )
    assert refused.returncode == 0 and legal.show(first["id"])["status"] == "refused"


async def test_replayed_order_is_not_counted_as_a_second_request(
    sqlite_server: ServerProcess, tmp_path: Path
) -> None:
    """Re-submitting a signed order is refused as a replay and logged, but the
    transparency report counts it under "replays", not as another request."""
    server = sqlite_server
    legal = Legal(server, tmp_path)
    target = await register(server)
    phone = (await target.api.call("GET", "/v1/accounts/me"))["phone"]
    assert legal.submit(order(phone, "R-1"))["status"] == "pending"
    for _ in range(2):
        replay = legal.submit(order(phone, "R-1"))
        assert replay["status"] == "refused" and "replay" in replay["reason"]
    data = httpx.get(server.url + "/transparency.json").json()
    assert data["totals"]["requests"] == 1 and data["totals"]["pending"] == 1
    assert data["totals"]["refused"] == 0 and data["totals"]["replays"] == 2
    assert data["by_country"]["DE"]["replays"] == 2
    assert data["by_category"]["fraud"]["requests"] == 1
    page = httpx.get(server.url + "/transparency").text
    assert "1 lawful requests" in page and "2 replays" in page
    entries = httpx.get(server.url + "/v1/transparency/entries").json()["entries"]
    logged = [e["body"] for e in entries if e["kind"] == "legal_request"]
    assert [b.get("replay", False) for b in logged] == [False, True, True]  # still logged


async def test_non_disclosure_date_delays_the_users_notice(
    server: ServerProcess, legal: Legal
) -> None:
    target = await register(server)
    phone = (await target.api.call("GET", "/v1/accounts/me"))["phone"]
    r = legal.submit(order(phone, "ND-1", non_disclosure_until="2099-01-01T00:00:00Z"))
    for officer in legal.officers:
        assert admin(server, "legal", "approve", r["id"], token=officer).returncode == 0
    assert (await target.api.call("GET", "/v1/notices"))["notices"] == []


async def test_transparency_log_proofs_report_and_a_tampered_log_is_detected(
    sqlite_server: ServerProcess, tmp_path: Path
) -> None:
    server = sqlite_server
    legal = Legal(server, tmp_path)
    target = await register(server)
    phone = (await target.api.call("GET", "/v1/accounts/me"))["phone"]
    granted = legal.submit(order(phone, "T-1", requested_data=["ip_addresses", "messages"]))
    for officer in legal.officers:
        admin(server, "legal", "approve", granted["id"], token=officer)
    legal.submit(order(phone, "T-2", expires_at="2020-01-01T00:00:00Z"))
    report = admin(
        server,
        "transparency",
        "report",
        "--quarter",
        _quarter(),
        "--html",
        str(tmp_path / "r.html"),
        token=legal.officers[0],
    )
    data = json.loads(report.stdout)
    assert (
        data["totals"]["requests"] == 2
        and data["totals"]["partly_granted"] == 1
        and data["totals"]["refused"] == 1
    )
    assert data["by_country"]["DE"]["accounts"] == 1
    assert "<svg" in (tmp_path / "r.html").read_text()
    page = httpx.get(server.url + "/transparency")
    assert page.status_code == 200 and "Transparency report" in page.text
    state = tmp_path / "audit.json"
    first = parley(
        tmp_path / "auditor", "audit", "--server", server.url, "--state", str(state), "--json"
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["size"] >= 4
    legal.submit(order(phone, "T-3"))  # the log grows: still consistent
    assert (
        parley(
            tmp_path / "auditor", "audit", "--server", server.url, "--state", str(state)
        ).returncode
        == 0
    )
    entries = httpx.get(server.url + "/v1/transparency/entries").json()["entries"]
    assert all(
        "+" not in json.dumps(e["body"]) for e in entries
    )  # no phone numbers in the public log
    with sqlite3.connect(server.data_dir / "parley.db") as conn:  # rewrite history
        body = json.loads(
            conn.execute("select body from translog_entries where seq = 0").fetchone()[0]
        )
        body["status"] = "refused"
        from parley.server.handlers.transparency import canonical
        from parley.translog.merkle import leaf_hash

        raw = canonical(body)
        conn.execute(
            "update translog_entries set body = ?, leaf_hash = ? where seq = 0",
            (raw, leaf_hash(raw)),
        )
    server.stop()
    server.start()  # a fresh process, so nothing cached hides the edit
    tampered = parley(tmp_path / "auditor", "audit", "--server", server.url, "--state", str(state))
    assert tampered.returncode == 1 and "rewritten" in tampered.stderr


async def test_a_policy_change_reaches_the_client_with_its_diff(
    server: ServerProcess, legal: Legal, tmp_path: Path
) -> None:
    profile = tmp_path / "user"
    phone = new_phone()
    assert parley(profile, "register", phone, "--server", server.url).returncode == 0
    code = [
        ln.split()[1] for ln in server.sms_file.read_text().splitlines() if ln.split()[0] == phone
    ][-1]
    assert parley(profile, "verify", code).returncode == 0
    (tmp_path / "v1.md").write_text("# Privacy\nWe keep your phone number.\n")
    assert (
        admin(
            server, "policy", "publish", str(tmp_path / "v1.md"), token=legal.officers[0]
        ).returncode
        == 0
    )
    first = parley(profile, "policy", "--accept")
    assert first.returncode == 0 and "We keep your phone number." in first.stdout
    (tmp_path / "v2.md").write_text(
        "# Privacy\nWe keep your phone number and the day you were last seen.\n"
    )
    assert (
        admin(
            server, "policy", "publish", str(tmp_path / "v2.md"), token=legal.officers[1]
        ).returncode
        == 0
    )
    warned = parley(profile, "receive", "--timeout", "3")
    assert "privacy policy is now version 2" in warned.stderr
    diff = parley(profile, "policy")
    assert (
        "-We keep your phone number." in diff.stdout
        and "+We keep your phone number and the day you were last seen." in diff.stdout
    )
    served = httpx.get(server.url + "/v1/policy").json()
    assert served["version"] == 2


def _quarter() -> str:
    import datetime

    d = datetime.datetime.now(tz=datetime.UTC)
    return f"{d.year}Q{(d.month - 1) // 3 + 1}"
