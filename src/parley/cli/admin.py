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
    add.add_argument("--role", required=True, choices=["moderator", "legal", "auditor"])

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
                from parley.server.api.public import publish
                from parley.server.app import now_ms

                return await publish(
                    local.side.transparency, local.side.legal_store, _read_text(args.file), now_ms()
                )
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
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ParleyError(f"cannot read JSON from {path}") from exc


def _read_text(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ParleyError(f"cannot read {path}: {exc.strerror}") from exc


async def _remote(args: argparse.Namespace) -> Any:  # noqa: PLR0911, PLR0912 - one dispatch table
    if args.command == "staff":
        raise ParleyError(
            "staff can only be added on the server's machine: parley-admin --data-dir DIR staff add ..."
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


def _render(args: argparse.Namespace, result: Any) -> None:  # noqa: PLR0912 - one renderer per command
    as_json = getattr(args, "json", False)
    if args.command == "legal" and args.legal_command == "export":
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
        out.print(f"Wrote the signed disclosure package to {args.out}")
    elif args.command == "legal" and args.legal_command == "submit" and as_json:
        sys.stdout.write(
            json.dumps({"id": result["id"], "status": result["status"], "reason": result["reason"]})
            + "\n"
        )
    elif args.command == "legal" and not as_json:
        out.print(
            f"request {result['id']}: {result['status']}"
            + (f" ({result['reason']})" if result.get("reason") else "")
        )
        for part, why in result.get("refused", {}).items():
            out.print(f"  refused {part}: {why}")
        if args.legal_command == "submit":
            sys.stdout.write(result["id"] + "\n")
    elif args.command == "transparency":
        if args.html:
            from parley.server.handlers.report_page import render_html

            args.html.write_text(render_html(result))
        sys.stdout.write(json.dumps(result) + "\n")
    elif args.command in ("authority", "policy"):
        sys.stdout.write(json.dumps(result) + "\n")
    elif args.command == "staff":
        s = result["staff"]
        out.print(
            f"Added {s['name']} ({s['role']}), staff id {s['id']}. Their credential, shown once:"
        )
        sys.stdout.write(result["credential"] + "\n")
    elif as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    elif args.command == "audit":
        table = Table("seq", "time", "actor", "action", "target")
        for e in result["entries"]:
            table.add_row(str(e["seq"]), str(e["at_ms"]), e["actor"], e["action"], e["target"])
        out.print(table)
        out.print(
            "chain intact" if result["chain_intact"] else "CHAIN BROKEN: the audit log was altered"
        )
    elif args.reports_command == "list":
        table = Table("id", "category", "status", "action", "group")
        for r in result["reports"]:
            table.add_row(r["id"], r["category"], r["status"], r["action"] or "", r["group"] or "")
        out.print(table)
    elif args.reports_command == "show":
        out.print(
            f"report {result['id']}  {result['category']}  {result['status']}  sender {result['sender_account']}"
        )
        for m in result["messages"]["messages"]:
            mark = ">" if m["reported"] else " "
            out.print(f"{mark} {m['sender']}: {m['text']}", markup=False)
        for a in result["messages"]["attachments"]:
            out.print(
                f"  attachment {a['id']}: {'available, ' + str(a['size']) + ' bytes' if a['available'] else 'no longer stored'}"
            )
    else:
        out.print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = asyncio.run(_local(args) if args.data_dir else _remote(args))
    except Unreachable as exc:
        sys.stderr.write(f"parley-admin: server unreachable: {exc.message}\n")
        return 1
    except ServerError as exc:
        sys.stderr.write(f"parley-admin: refused: {exc.message} ({exc.code})\n")
        return 1
    except ParleyError as exc:
        sys.stderr.write(f"parley-admin: {exc.message}\n")
        return 1
    _render(args, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
