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


def _parser() -> argparse.ArgumentParser:
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

    audit = sub.add_parser("audit").add_subparsers(dest="audit_command", required=True)
    al = audit.add_parser("list")
    al.add_argument("--json", action="store_true")
    return p


class Local:
    """The moderation handler over the database itself."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    async def __aenter__(self) -> Local:
        from parley.server.app import _moderation, now_ms  # noqa: F401 - the shared construction
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
        import time

        self.moderation, _, _ = _moderation(
            self.engine,
            GroupStore(self.engine),
            BlobStore(self.engine, data_dir / "attachments"),
            RateLimiter(time.monotonic),
            franking,
            pepper,
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.engine.dispose()

    async def staff(self) -> Any:
        return await self.moderation.authenticate(f"Bearer {_token(self.args)}")


def _token(args: argparse.Namespace) -> str:
    if not args.token:
        raise ParleyError("a staff credential is needed: --token CREDENTIAL or PARLEY_ADMIN_TOKEN")
    return str(args.token)


async def _local(args: argparse.Namespace) -> Any:
    async with Local(args) as local:
        m = local.moderation
        if args.command == "staff":
            member, credential = await m.add_staff("operator@local", args.name, args.role)
            return {
                "staff": {"id": member.id, "name": member.name, "role": member.role},
                "credential": credential,
            }
        staff = await local.staff()
        if args.command == "audit":
            return await m.audit_entries(staff)
        match args.reports_command:
            case "list":
                return {"reports": await m.list_reports(staff, args.status)}
            case "show":
                return await m.show_report(staff, args.id)
            case "resolve":
                return await m.resolve(staff, args.id, args.action, args.note)
            case _:
                return await m.remove_from_group(staff, args.id)


async def _remote(args: argparse.Namespace) -> Any:
    if args.command == "staff":
        raise ParleyError(
            "staff can only be added on the server's machine: parley-admin --data-dir DIR staff add ..."
        )
    api = ApiClient(args.server, _token(args))
    try:
        if args.command == "audit":
            return await api.call("GET", "/v1/admin/audit")
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


def _render(args: argparse.Namespace, result: Any) -> None:
    as_json = getattr(args, "json", False)
    if args.command == "staff":
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
