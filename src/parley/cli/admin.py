"""``parley-admin``: staff tools, on the server's machine or remotely.

Local: ``parley-admin --data-dir DIR ...`` (or ``--database-url``) works on the
database directly; it is the only way to add staff (``staff add`` needs no
credential there: whoever can read the data directory is the operator).
Remote: ``parley-admin --server URL --token CREDENTIAL ...`` uses the admin API.
Every other command needs a staff credential in both modes (``--token`` or
``PARLEY_ADMIN_TOKEN``), so roles are enforced and every action is attributed
in the audit log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from parley.client.api import ApiClient
from parley.display import join, literal, local_time, visible, with_iso
from parley.errors import ParleyError, ServerError, Unreachable

out = Console(highlight=False, soft_wrap=True)


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - the whole command table
    p = argparse.ArgumentParser(prog="parley-admin", description="Parley staff tools")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="work on this server's data directory (local)")
    where.add_argument("--server", help="work through this server's admin API (remote)")
    p.add_argument("--database-url", help="local: the server's database, if not DATA_DIR/parley.db")
    p.add_argument("--token", default=os.environ.get("PARLEY_ADMIN_TOKEN"), help="staff credential")
    sub = p.add_subparsers(dest="command", required=True)

    staff = sub.add_parser("staff").add_subparsers(dest="staff_command", required=True)
    add = staff.add_parser(
        "add", help="create a staff member (local only); prints the credential once"
    )
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["moderator", "legal", "auditor", "operator"])
    sl = staff.add_parser("list", help="list staff members (local only)")
    sl.add_argument("--json", action="store_true")
    sv = staff.add_parser("revoke", help="revoke a staff credential (local only)")
    sv.add_argument("id", help="the staff id (the part of the credential before the dot)")

    reports = sub.add_parser("reports").add_subparsers(dest="reports_command", required=True)
    rl = reports.add_parser("list")
    rl.add_argument("--json", action="store_true")
    rl.add_argument("--status", choices=["open", "resolved"])
    rs = reports.add_parser("show")
    rs.add_argument("id")
    rs.add_argument("--json", action="store_true")
    rr = reports.add_parser("resolve")
    rr.add_argument("id")
    rr.add_argument(
        "--action", required=True, choices=["dismiss", "warn", "restrict", "suspend", "ban"]
    )
    rr.add_argument("--note", default="")
    rg = reports.add_parser(
        "remove-from-group", help="remove the reported sender from the report's group"
    )
    rg.add_argument("id")

    authority = sub.add_parser("authority").add_subparsers(dest="authority_command", required=True)
    aa = authority.add_parser("add", help="register a judicial authority's Ed25519 key")
    aa.add_argument("name")
    aa.add_argument("--jurisdiction", required=True, metavar="CC")
    aa.add_argument("--public-key", required=True, type=Path, metavar="FILE")
    ar = authority.add_parser("revoke")
    ar.add_argument("name")

    legal = sub.add_parser("legal").add_subparsers(dest="legal_command", required=True)
    ls = legal.add_parser("submit", help="submit a signed order")
    ls.add_argument("file", type=Path, metavar="SIGNED.json")
    ls.add_argument("--json", action="store_true")
    for name in ("approve", "show"):
        lp = legal.add_parser(name)
        lp.add_argument("id")
        lp.add_argument("--json", action="store_true")
    lr = legal.add_parser("refuse")
    lr.add_argument("id")
    lr.add_argument("--reason", required=True)
    le = legal.add_parser("export")
    le.add_argument("id")
    le.add_argument("--out", required=True, type=Path)

    tr = sub.add_parser("transparency").add_subparsers(dest="transparency_command", required=True)
    trr = tr.add_parser(
        "report", help="aggregate the quarter's lawful requests from the public log"
    )
    trr.add_argument("--quarter", required=True, help="e.g. 2026Q4")
    trr.add_argument("--html", type=Path, metavar="FILE")

    policy = sub.add_parser("policy").add_subparsers(dest="policy_command", required=True)
    pp = policy.add_parser(
        "publish", help="publish a new privacy-policy version (its hash goes into the log)"
    )
    pp.add_argument("file", type=Path, metavar="FILE.md")

    audit = sub.add_parser("audit").add_subparsers(dest="audit_command", required=True)
    al = audit.add_parser("list")
    al.add_argument("--json", action="store_true")
    return p


class Local:
    """The staff handlers over the database itself."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    async def __aenter__(self) -> Local:
        import time

        from parley.server.app import build_staff_side
        from parley.server.config import ServerConfig
        from parley.server.handlers.ratelimit import RateLimiter
        from parley.server.storage import db
        from parley.server.storage.blobs import BlobStore
        from parley.server.storage.groups import GroupStore
        from parley.server.storage.secrets import load_or_create

        data_dir: Path = self.args.data_dir.resolve()
        if not data_dir.exists():
            raise ParleyError(f"no data directory {data_dir}")
        url = self.args.database_url or ServerConfig.default_database_url(data_dir)
        self.engine = db.create_engine(url)
        await db.migrate(self.engine)
        pepper = await load_or_create(self.engine, "pepper")
        franking = await load_or_create(self.engine, "franking")
        config = ServerConfig(data_dir=data_dir, database_url=url)
        self.side = await build_staff_side(
            self.engine,
            GroupStore(self.engine),
            BlobStore(self.engine, data_dir / "attachments"),
            RateLimiter(time.monotonic),
            franking,
            pepper,
            config,
        )
        self.moderation = self.side.moderation
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.engine.dispose()

    async def staff(self) -> Any:
        return await self.moderation.authenticate(f"Bearer {_token(self.args)}")


def _token(args: argparse.Namespace) -> str:
    if not args.token:
        raise ParleyError("a staff credential is needed: --token CREDENTIAL or PARLEY_ADMIN_TOKEN")
    return str(args.token)


async def _local(args: argparse.Namespace) -> Any:  # noqa: PLR0911, PLR0912 - one dispatch table
    async with Local(args) as local:
        m = local.moderation
        if args.command == "staff" and args.staff_command == "list":
            return {"staff": await m.list_staff(None)}
        if args.command == "staff" and args.staff_command == "revoke":
            return await m.revoke_staff(None, args.id)
        if args.command == "staff":
            member, credential = await m.add_staff("operator@local", args.name, args.role)
            return {
                "staff": {"id": member.id, "name": member.name, "role": member.role},
                "credential": credential,
            }
        staff = await local.staff()
        actor = staff.actor
        legal = local.side.legal
        match args.command:
            case "audit":
                return await m.audit_entries(staff)
            case "authority":
                _require_legal(staff)
                if args.authority_command == "add":
                    return {
                        "id": await legal.add_authority(
                            actor, args.name, args.jurisdiction, _public_key(args.public_key)
                        )
                    }
                await legal.revoke_authority(actor, args.name)
                return {"revoked": args.name}
            case "legal":
                match args.legal_command:
                    case "submit":
                        return await legal.submit(staff, _read_json(args.file))
                    case "approve":
                        return await legal.approve(staff, args.id)
                    case "refuse":
                        return await legal.refuse(staff, args.id, args.reason)
                    case "show":
                        return await legal.show(staff, args.id)
                    case _:
                        return await legal.export(staff, args.id)
            case "transparency":
                from parley.server.handlers.report_page import aggregate

                return await aggregate(local.side.transparency, args.quarter)
            case "policy":
                _require_legal(staff)
                return await legal.publish_policy(_read_text(args.file))
        match args.reports_command:
            case "list":
                return {"reports": await m.list_reports(staff, args.status)}
            case "show":
                return await m.show_report(staff, args.id)
            case "resolve":
                return await m.resolve(staff, args.id, args.action, args.note)
            case _:
                return await m.remove_from_group(staff, args.id)


def _require_legal(staff: Any) -> None:
    if staff.role != "legal":
        raise ParleyError("only the legal role manages authorities, orders and the policy")


def _public_key(path: Path) -> bytes:
    import base64

    try:
        text = path.read_text().strip()
        key = base64.b64decode(text, validate=True)
    except (OSError, ValueError) as exc:
        raise ParleyError(f"cannot read a base64 Ed25519 public key from {path}") from exc
    if len(key) != 32:
        raise ParleyError(f"{path} does not hold a 32-byte Ed25519 public key")
    return key


def _read_json(path: Path) -> Any:
    """A JSON file, read by the server's own rules (no lone surrogates, no NUL, bounded
    numbers and nesting), so what cannot be sent is refused here, in one line."""
    from parley.errors import BadRequest
    from parley.server.api.edge import loads

    try:
        return loads(path.read_bytes())
    except OSError as exc:
        raise ParleyError(f"cannot read {path}: {exc.strerror}") from exc
    except BadRequest as exc:
        raise ParleyError(f"cannot read JSON from {path}: {exc.message}") from exc


def _read_text(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ParleyError(f"cannot read {path}: {exc.strerror}") from exc


async def _remote(args: argparse.Namespace) -> Any:  # noqa: PLR0911, PLR0912 - one dispatch table
    if args.command == "staff":
        raise ParleyError(
            "staff are managed on the server's machine: parley-admin --data-dir DIR staff ..."
        )
    api = ApiClient(args.server, _token(args))
    try:
        match args.command:
            case "audit":
                return await api.call("GET", "/v1/admin/audit")
            case "authority":
                if args.authority_command == "add":
                    key = _public_key(args.public_key)
                    import base64

                    body = {
                        "name": args.name,
                        "jurisdiction": args.jurisdiction,
                        "public_key": base64.b64encode(key).decode(),
                    }
                    return await api.call("POST", "/v1/admin/authorities", body)
                return await api.call("DELETE", f"/v1/admin/authorities/{args.name}")
            case "legal":
                match args.legal_command:
                    case "submit":
                        return await api.call("POST", "/v1/admin/legal", _read_json(args.file))
                    case "approve":
                        return await api.call("POST", f"/v1/admin/legal/{args.id}/approve")
                    case "refuse":
                        return await api.call(
                            "POST", f"/v1/admin/legal/{args.id}/refuse", {"reason": args.reason}
                        )
                    case "show":
                        return await api.call("GET", f"/v1/admin/legal/{args.id}")
                    case _:
                        return await api.call("GET", f"/v1/admin/legal/{args.id}/export")
            case "transparency":
                return await api.call(
                    "GET", f"/v1/admin/transparency/report?quarter={args.quarter}"
                )
            case "policy":
                return await api.call(
                    "POST", "/v1/admin/policy", {"text": _read_text(args.file).decode()}
                )
        match args.reports_command:
            case "list":
                return await api.call(
                    "GET", "/v1/admin/reports" + (f"?status={args.status}" if args.status else "")
                )
            case "show":
                return await api.call("GET", f"/v1/admin/reports/{args.id}")
            case "resolve":
                return await api.call(
                    "POST",
                    f"/v1/admin/reports/{args.id}/resolve",
                    {"action": args.action, "note": args.note},
                )
            case _:
                return await api.call("POST", f"/v1/admin/reports/{args.id}/remove-from-group")
    finally:
        await api.close()


# -- output -----------------------------------------------------------------------------------------
#
# Every string in a result may come from another person (a reporter's comment, a
# reported message and its sender, a staff or authority name, the fields of a court
# order, audit details) or from a server that is not trusted to be honest. It is
# printed only through ``display``: rich gets ``Text`` built by ``literal``/``join``
# (never a markup string), plain lines go through ``visible``, and JSON is written
# with ``ensure_ascii`` so no control character is ever raw. Times are local date and
# time for people; JSON keeps the milliseconds and adds ISO 8601 beside them.


def _say(*parts: object) -> None:
    """One line: ``Text`` parts are kept, anything else is shown literally."""
    out.print(join(*parts))


def _json(value: object) -> None:
    sys.stdout.write(json.dumps(value) + "\n")


def _field(label: str, value: object) -> None:
    _say(f"  {label:<10} ", "" if value is None else value)


def _plain(value: object) -> str:
    """A value for a line: strings as they are (shown literally by the caller), lists
    and objects spelled out, so every string inside is shown the same way."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    return json.dumps(value)


def _report_json(report: dict[str, Any]) -> dict[str, Any]:
    shown = with_iso(report, "created_ms", "resolved_ms")
    content = report.get("messages")
    if isinstance(content, dict):
        shown["messages"] = {
            **content,
            "messages": [
                with_iso(m, "sent_at_ms", "delivered_ms") if isinstance(m, dict) else m
                for m in content.get("messages", [])
            ],
        }
    return shown


def _in_delivery_order(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first, the reported message last among equal times."""
    return sorted(messages, key=lambda m: (m.get("delivered_ms") or 0, bool(m.get("reported"))))


def _render_report(r: dict[str, Any]) -> None:
    _say("report ", r.get("id"))
    _field("category", r.get("category"))
    status = r.get("status")
    if status == "resolved":
        status = f"resolved at {local_time(r.get('resolved_ms'))}: {r.get('action')}"
    _field("status", status)
    if r.get("note"):
        _field("note", r["note"])
    _field("created", local_time(r.get("created_ms")))
    _field("reporter", r.get("reporter"))
    _field("sender", r.get("sender_account"))
    _field("chat", f"group {r['group']}" if r.get("group") else "one-to-one")
    _field("comment", r.get("comment") or "(none)")
    content = r.get("messages") or {}
    messages = _in_delivery_order(list(content.get("messages", [])))
    _say("messages, oldest first (> marks the reported one):")
    for m in messages:
        mark = ">" if m.get("reported") else " "
        _say(
            f"{mark} {local_time(m.get('delivered_ms'))}  ",
            literal(m.get("sender"), style="bold"),
            ": ",
            m.get("text", ""),
        )
        _say(
            f"      sent {local_time(m.get('sent_at_ms'))} (the sender's clock), "
            f"delivered {local_time(m.get('delivered_ms'))}"
        )
        for digest in m.get("attachment_digests", []):
            _say("      attachment SHA-256 ", digest)
    attachments = content.get("attachments", [])
    _say("attachments:" if attachments else "attachments: none revealed")
    for a in attachments:
        if a.get("available"):
            state = f"available, {a.get('size')} bytes (in --json as base64)"
        else:
            state = f"not available: {a.get('reason') or 'no longer stored'}"
        _say("  ", a.get("id"), " (SHA-256 ", a.get("digest"), "): ", state)


def _render_reports(reports: list[dict[str, Any]]) -> None:
    table = Table("id", "created", "category", "status", "action", "group", "comment")
    for r in reports:
        table.add_row(
            literal(r.get("id")),
            literal(local_time(r.get("created_ms"))),
            literal(r.get("category")),
            literal(r.get("status")),
            literal(r.get("action") or ""),
            literal(r.get("group") or ""),
            literal(r.get("comment") or ""),
        )
    out.print(table)


def _render_staff(staff: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        _json({"staff": [with_iso(s, "created_ms", "revoked_ms") for s in staff]})
        return
    table = Table("id", "name", "role", "added", "revoked")
    for s in staff:
        table.add_row(
            literal(s.get("id")),
            literal(s.get("name")),
            literal(s.get("role")),
            literal(local_time(s.get("created_ms"))),
            literal(local_time(s.get("revoked_ms")) if s.get("revoked_ms") else ""),
        )
    out.print(table)


def _render_audit(result: dict[str, Any]) -> None:
    table = Table("seq", "time", "actor", "action", "target", "details")
    for e in result["entries"]:
        table.add_row(
            literal(e.get("seq")),
            literal(local_time(e.get("at_ms"))),
            literal(e.get("actor")),
            literal(e.get("action")),
            literal(e.get("target")),
            literal(_plain(e.get("details"))),
        )
    out.print(table)
    out.print(
        "chain intact" if result["chain_intact"] else "CHAIN BROKEN: the audit log was altered"
    )


def checked_report(report: Any) -> dict[str, Any]:
    """A transparency report as a (possibly hostile) server sent it, checked for the
    shape the page draws: every count a non-negative integer. Text is escaped by the
    page; a count that is not a number is a malformed report, said in one line."""
    buckets: list[Any] = []
    if isinstance(report, dict):
        buckets.append(report.get("totals"))
        for key in ("by_country", "by_category"):
            group = report.get(key)
            buckets += list(group.values()) if isinstance(group, dict) else [None]
    counts = ("requests", "accounts", "granted", "partly_granted", "refused", "pending")
    for bucket in buckets or [None]:
        if not isinstance(bucket, dict) or not all(
            type(bucket.get(k)) is int and bucket[k] >= 0 for k in counts
        ):
            raise ParleyError("the server sent a malformed transparency report")
    return dict(report)


_ORDER_FIELDS = (
    "order_id",
    "authority",
    "jurisdiction",
    "case_reference",
    "legal_basis",
    "offence_category",
    "target",
    "requested_data",
    "time_range",
    "issued_at",
    "expires_at",
    "non_disclosure_until",
)


def _render_legal(command: str, r: dict[str, Any]) -> None:
    reason = r.get("reason")
    _say("request ", r.get("id"), ": ", r.get("status"), *((" (", reason, ")") if reason else ()))
    for part, why in (r.get("refused") or {}).items():
        _say("  refused ", part, ": ", why)
    if command == "show":
        _field("received", local_time(r.get("created_ms")))
        _field("approvals", len(r.get("approvals") or []))
        if r.get("granted"):
            _field("granted", ", ".join(str(g) for g in r["granted"]))
        _say("the order:")
        order = r.get("order")
        if not isinstance(order, dict):
            order = {}
        for name in _ORDER_FIELDS:
            if name in order:
                _field(name, _plain(order[name]))
        for name in sorted(set(order) - set(_ORDER_FIELDS)):
            _field(str(name), _plain(order[name]))


def _render(args: argparse.Namespace, result: Any) -> None:  # noqa: PLR0912 - one renderer per command
    as_json = getattr(args, "json", False)
    command = args.command
    if command == "legal" and args.legal_command == "export":
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
        _say("Wrote the signed disclosure package to ", str(args.out))
    elif command == "legal" and args.legal_command == "submit" and as_json:
        _json({"id": result["id"], "status": result["status"], "reason": result["reason"]})
    elif command == "legal" and as_json:
        _json(with_iso(result, "created_ms"))
    elif command == "legal":
        _render_legal(args.legal_command, result)
        if args.legal_command == "submit":
            sys.stdout.write(visible(result["id"]) + "\n")
    elif command == "transparency":
        if args.html:
            from parley.server.handlers.report_page import render_html

            args.html.write_text(render_html(checked_report(result)))
        _json(result)
    elif command == "authority":
        if args.authority_command == "add":
            _say(
                "Added the authority ",
                args.name,
                f" ({args.jurisdiction}), id ",
                result.get("id"),
                ".",
            )
        else:
            _say("Revoked the authority ", result.get("revoked", args.name), ".")
    elif command == "policy":
        _json(result)
    elif command == "staff" and args.staff_command == "list":
        _render_staff(result["staff"], getattr(args, "json", False))
    elif command == "staff" and args.staff_command == "revoke":
        _say("Revoked staff credential ", result["revoked"], "; its console sessions ended.")
    elif command == "staff":
        s = result["staff"]
        _say(
            "Added ",
            s["name"],
            f" ({s['role']}), staff id ",
            s["id"],
            ". Their credential, shown once:",
        )
        sys.stdout.write(visible(result["credential"]) + "\n")
    elif command == "audit":
        if as_json:
            entries = [with_iso(e, "at_ms") for e in result["entries"]]
            _json({**result, "entries": entries})
        else:
            _render_audit(result)
    else:
        _render_reports_command(args, result, as_json)


_DONE = {
    "warn": "warned",
    "restrict": "restricted (no new groups or members)",
    "suspend": "suspended from sending",
    "ban": "banned",
}


def _render_reports_command(args: argparse.Namespace, result: Any, as_json: bool) -> None:
    if args.reports_command == "list":
        reports = result["reports"]
        if as_json:
            _json({"reports": [with_iso(r, "created_ms", "resolved_ms") for r in reports]})
        else:
            _render_reports(reports)
    elif args.reports_command == "show":
        if as_json:
            _json(_report_json(result))
        else:
            _render_report(result)
    elif args.reports_command == "resolve":
        action = result.get("action")
        if action == "dismiss":
            _say("Report ", result.get("report"), " dismissed; no action taken.")
        else:
            done = _DONE.get(str(action), str(action))
            _say(
                "Report ",
                result.get("report"),
                " resolved: account ",
                result.get("account"),
                f" {done}.",
            )
    else:
        _say("Removed ", result.get("removed"), " from group ", result.get("group"), ".")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = asyncio.run(_local(args) if args.data_dir else _remote(args))
    except Unreachable as exc:
        sys.stderr.write(f"parley-admin: server unreachable: {visible(exc.message)}\n")
        return 1
    except ServerError as exc:
        sys.stderr.write(f"parley-admin: refused: {visible(exc.message)} ({visible(exc.code)})\n")
        return 1
    except ParleyError as exc:
        sys.stderr.write(f"parley-admin: {visible(exc.message)}\n")
        return 1
    _render(args, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
