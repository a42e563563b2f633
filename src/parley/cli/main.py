"""``parley``: the command-line client.

Every command takes ``--profile DIR`` (default ``~/.parley``); the profile is
encrypted with a key derived from a passphrase, read from
``PARLEY_PASSPHRASE`` or asked on the terminal. Errors are one line on
stderr and exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import mimetypes
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from parley.client.app import App
from parley.client.store import Profile
from parley.errors import ParleyError, ServerError, Unreachable

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - the whole command table
    p = argparse.ArgumentParser(prog="parley", description="Parley: end-to-end encrypted messaging")
    p.add_argument(
        "--profile",
        type=Path,
        default=Path.home() / ".parley",
        help="profile directory (default ~/.parley)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("register", help="ask for a registration code")
    r.add_argument("phone")
    r.add_argument("--server", required=True)
    v = sub.add_parser("verify", help="finish registration with the code")
    v.add_argument("code")
    v.add_argument("--name")
    w = sub.add_parser("whoami")
    w.add_argument("--json", action="store_true")

    s = sub.add_parser("send", help="send a 1:1 message")
    s.add_argument("phone")
    s.add_argument("text")
    s.add_argument("--attach", action="append", type=Path, default=[], metavar="FILE")
    s.add_argument("--json", action="store_true")

    rc = sub.add_parser("receive", help="print what arrived")
    rc.add_argument("--json", action="store_true")
    rc.add_argument("--follow", action="store_true", help="keep listening")
    rc.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="give up after SECONDS without a frame (default 10)",
    )
    rc.add_argument(
        "--save-attachments",
        type=Path,
        metavar="DIR",
        help="download and decrypt attachments into DIR",
    )

    g = sub.add_parser("group", help="group chats").add_subparsers(
        dest="group_command", required=True
    )
    gc = g.add_parser("create")
    gc.add_argument("name")
    gc.add_argument("--member", action="append", default=[], required=True, metavar="PHONE")
    gc.add_argument("--json", action="store_true")
    for name in ("add", "remove"):
        ga = g.add_parser(name)
        ga.add_argument("group")
        ga.add_argument("phone")
    gs = g.add_parser("send")
    gs.add_argument("group")
    gs.add_argument("text")
    gs.add_argument("--json", action="store_true")
    gl = g.add_parser("list")
    gl.add_argument("--json", action="store_true")

    sn = sub.add_parser("safety-number", help="the 60-digit number to compare with a contact")
    sn.add_argument("phone")
    t = sub.add_parser("trust", help="mark a contact verified after comparing safety numbers")
    t.add_argument("phone")
    t.add_argument("--safety-number", required=True, dest="digits")

    d = sub.add_parser("devices", help="linked devices").add_subparsers(
        dest="devices_command", required=True
    )
    dl = d.add_parser("list")
    dl.add_argument("--json", action="store_true")
    d.add_parser("link", help="print a one-time code for a new device")
    du = d.add_parser("unlink")
    du.add_argument("device_id", type=int)
    lk = sub.add_parser("link", help="join an account as a linked device")
    lk.add_argument("code")
    lk.add_argument("--server", required=True)

    rp = sub.add_parser("report", help="report a received message to the platform's moderators")
    rp.add_argument("message_id")
    rp.add_argument(
        "--reason",
        required=True,
        choices=["csam", "terrorism", "violence", "fraud", "spam", "other"],
    )
    rp.add_argument(
        "--context", type=int, default=0, help="also reveal the N (0..5) messages before it"
    )
    rp.add_argument("--comment", default="")
    rp.add_argument("--json", action="store_true")
    nt = sub.add_parser(
        "notices", help="notices from the platform (report outcomes, actions on your account)"
    )
    nt.add_argument("--json", action="store_true")

    po = sub.add_parser(
        "policy", help="the privacy policy, verified against the transparency log, with changes"
    )
    po.add_argument("--accept", action="store_true", help="record that you have read this version")
    po.add_argument("--json", action="store_true")
    au = sub.add_parser("audit", help="audit the server's transparency log as any outsider can")
    au.add_argument("--server", required=True)
    au.add_argument(
        "--state",
        type=Path,
        help="where the last seen head is kept (default: PROFILE/audit-HOST.json)",
    )
    au.add_argument("--json", action="store_true")

    k = sub.add_parser("keys", help="key transparency").add_subparsers(
        dest="keys_command", required=True
    )
    kc = k.add_parser("check", help="check your account in the key directory")
    kc.add_argument("--ack", action="store_true", help="acknowledge the devices now published")
    kc.add_argument("--json", action="store_true")
    k.add_parser("head", help="a short code of the log's signed head, to compare with others")

    h = sub.add_parser("history", help="local history of a chat")
    h.add_argument("chat", metavar="PHONE|GROUP")
    h.add_argument("--json", action="store_true")
    e = sub.add_parser("export", help="write your own data (no keys) as JSON")
    e.add_argument("file", type=Path)
    sub.add_parser("delete-account", help="delete the account on the server and wipe this profile")
    return p


def _passphrase(creating: bool) -> str:
    env = os.environ.get("PARLEY_PASSPHRASE")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise ParleyError("set PARLEY_PASSPHRASE or run in a terminal to enter the passphrase")
    first = getpass.getpass("Passphrase: ")
    if creating and getpass.getpass("Repeat passphrase: ") != first:
        raise ParleyError("the passphrases differ")
    return first


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def _progress(verb: str = "uploaded") -> tuple[Progress, Callable[[str, int], None]]:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err, transient=True
    )

    def done(name: str, size: int) -> None:
        progress.add_task(f"{verb} {name}", total=size, completed=size)

    return progress, done


async def _run(args: argparse.Namespace) -> int:  # noqa: PLR0912, PLR0915 - one dispatch table
    if args.command == "audit":
        from parley.client.audit import audit

        state = (
            args.state
            or args.profile
            / f"audit-{args.server.split('//')[-1].replace(':', '_').replace('/', '_')}.json"
        )
        result = await audit(args.server, state)
        if args.json:
            _print_json(result)
        else:
            since = (
                f", consistent with the {result['previous_size']} entries seen before"
                if result["previous_size"] is not None
                else " (first audit: head pinned)"
            )
            out.print(
                f"transparency log OK: {result['size']} entries{since}; head {result['head_code']}"
            )
        return 0
    creating = args.command in ("register", "link")
    app = App(Profile(args.profile, _passphrase(creating)))
    if args.command not in ("register", "verify", "link", "keys"):
        with contextlib.suppress(ParleyError):
            await app.keys_check()  # self-monitoring at every start
        for warning in app.warnings():
            err.print(warning, style="yellow")

    match args.command:
        case "register":
            await app.register(args.phone, args.server)
            out.print(f"A code was sent to {args.phone}. Finish with: parley verify CODE")
        case "verify":
            me = await app.verify(args.code, args.name)
            out.print(f"Registered {me['phone']} (device {me['device_id']}).")
        case "whoami":
            me = await app.whoami()
            if args.json:
                _print_json(me)
            else:
                out.print(
                    f"{me['phone']}  account {me['account_id']}  device {me['device_id']}  on {me['server']}"
                )
        case "send":
            files = []
            for path in args.attach:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise ParleyError(f"cannot read {path}: {exc.strerror}") from exc
                files.append(
                    (
                        path.name,
                        data,
                        mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                    )
                )
            if files:
                progress, done = _progress()
                with progress:
                    message_id = await app.send(args.phone, args.text, files, done)
            else:
                message_id = await app.send(args.phone, args.text, [], lambda _n, _s: None)
            _print_json({"id": message_id}) if args.json else out.print(message_id)
        case "receive":
            save_dir: Path | None = args.save_attachments

            def show(entry: dict[str, Any]) -> None:
                public = {k: entry[k] for k in ("id", "chat", "group", "sender", "text", "sent_at")}
                public["attachments"] = [
                    {k: a[k] for k in ("id", "name", "size", "content_type")}
                    for a in entry["attachments"]
                ]
                if args.json:
                    _print_json(public)
                else:
                    where = f"[{entry['group']}] " if entry["group"] else ""
                    names = "".join(f" [attachment: {a['name']}]" for a in entry["attachments"])
                    out.print(f"{where}{entry['sender']}: {entry['text']}{names}")
                if save_dir is not None:
                    for a in entry["attachments"]:
                        pending.append(a)

            pending: list[dict[str, Any]] = []
            for notice in await app.notices():
                err.print(_notice_text(notice), markup=False)
            policy_notice = app.policy_warning(await _served_policy_version(app))
            if policy_notice:
                err.print(policy_notice, markup=False)
            await app.receive(args.follow, args.timeout, show)
            if save_dir is not None and pending:
                save_dir.mkdir(parents=True, exist_ok=True)
                progress, done = _progress("downloaded")
                with progress:
                    for a in pending:
                        data = await app.fetch_attachment(a)
                        (save_dir / Path(a["name"]).name).write_bytes(data)
                        done(a["name"], len(data))
        case "group":
            await _group(app, args)
        case "safety-number":
            out.print(await app.safety_number(args.phone))
        case "trust":
            await app.trust(args.phone, args.digits)
            out.print(f"{args.phone} is verified.")
        case "devices":
            if args.devices_command == "list":
                devices = await app.devices()
                if args.json:
                    _print_json({"devices": devices})
                else:
                    table = Table("device", "role")
                    for d in devices:
                        table.add_row(str(d), "primary" if d == 1 else "linked")
                    out.print(table)
            elif args.devices_command == "link":
                code = await app.link_code()
                out.print(
                    "On the new device run: parley link CODE --server URL (the code works once, for 10 minutes)"
                )
                out.print(code)
            else:
                await app.unlink(args.device_id)
                out.print(f"Device {args.device_id} unlinked.")
        case "link":
            me = await app.link(args.code, args.server)
            out.print(f"Linked to {me['phone']} as device {me['device_id']}.")
        case "report":
            report_id = await app.report(args.message_id, args.reason, args.context, args.comment)
            _print_json({"id": report_id}) if args.json else out.print(f"Reported ({report_id}).")
        case "notices":
            for notice in await app.notices():
                _print_json(notice) if args.json else out.print(_notice_text(notice))
        case "policy":
            policy = await app.policy(args.accept)
            if args.json:
                _print_json(policy)
            else:
                if policy["accepted"] is None:
                    out.print(policy["text"], markup=False)
                elif policy["changed"]:
                    out.print(policy["diff"], markup=False)
                else:
                    out.print(f"The privacy policy (version {policy['version']}) has not changed.")
                out.print(
                    f"Version {policy['version']}, verified against the transparency log."
                    + ("" if args.accept else " Accept it with 'parley policy --accept'.")
                )
        case "keys":
            if args.keys_command == "head":
                out.print(await app.keys_head())
            else:
                result = await app.keys_check(ack=args.ack)
                if args.json:
                    _print_json(result)
                elif result["ok"]:
                    out.print(
                        f"Your keys are as you left them (devices {result['devices']}, directory epoch {result['epoch']})."
                    )
                for alarm in result["alarms"]:
                    err.print(f"ALARM: {alarm}", markup=False)
                if not result["ok"]:
                    return 1
        case "history":
            entries = app.history(args.chat)
            if args.json:
                for entry in entries:
                    _print_json(
                        {
                            k: entry[k]
                            for k in (
                                "id",
                                "chat",
                                "group",
                                "sender",
                                "text",
                                "sent_at",
                                "outgoing",
                            )
                        }
                    )
            else:
                table = Table("sent", "from", "text")
                for entry in entries:
                    table.add_row(str(entry["sent_at"]), entry["sender"], entry["text"])
                out.print(table)
        case "export":
            data = app.export()
            fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
            out.print(f"Wrote {args.file}")
        case "delete-account":
            await app.delete_account()
            out.print("Account deleted and profile wiped.")
    return 0


async def _served_policy_version(app: App) -> int | None:
    """The server's current policy version (None if it has none or is unreachable)."""
    from parley.client.app import verified_policy

    async def act(session: Any) -> int | None:
        try:
            return int((await verified_policy(session.api))["version"])
        except ParleyError:
            return None

    result = await app.run(act)
    return None if result is None else int(result)


def _notice_text(notice: dict[str, Any]) -> str:
    if notice.get("kind") == "report_outcome":
        return f"notice: your report {notice.get('report')} ({notice.get('category')}): {notice.get('outcome')}"
    if notice.get("kind") == "lawful_request":
        return f"notice: under a court order, {notice.get('authority')} ({notice.get('jurisdiction')}) obtained your {', '.join(notice.get('data', []))}"
    if notice.get("kind") == "moderation":
        return f"notice: moderators applied '{notice.get('action')}' to your account ({notice.get('category', '')})"
    return f"notice: {json.dumps(notice)}"


async def _group(app: App, args: argparse.Namespace) -> None:
    match args.group_command:
        case "create":
            gid = await app.group_create(args.name, args.member)
            _print_json({"id": gid}) if args.json else out.print(gid)
        case "add" | "remove":
            await app.group_change(args.group, args.phone, add=args.group_command == "add")
            out.print("Done.")
        case "send":
            message_id = await app.group_send(args.group, args.text)
            _print_json({"id": message_id}) if args.json else out.print(message_id)
        case "list":
            groups = await app.group_list()
            if args.json:
                _print_json(groups)
            else:
                table = Table("group", "name", "members")
                for g in groups:
                    table.add_row(g["id"], g["name"], ", ".join(g["members"]))
                out.print(table)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except Unreachable as exc:
        err.print(f"parley: server unreachable: {exc.message}", markup=False)
    except ServerError as exc:
        err.print(f"parley: the server refused: {exc.message} ({exc.code})", markup=False)
    except ParleyError as exc:
        err.print(f"parley: {exc.message}", markup=False)
    except KeyboardInterrupt:
        err.print("parley: interrupted", markup=False)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
