"""``parley``: the command-line client.

Every command takes ``--profile DIR`` (default ``~/.parley``), before or after
the command's name; the profile is encrypted with a key derived from a
passphrase, read from ``PARLEY_PASSPHRASE`` or asked on the terminal. Errors
are one line on stderr and exit status 1 (2 for usage errors, 130 for Ctrl-C).

Everything another person or the server chose (texts, names, file names,
group names, notices, error messages) is printed through ``parley.display``:
never as rich markup, with control characters shown as escapes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from parley.display import join, literal, local_time, visible, with_iso
from parley.errors import ParleyError, ServerError, Unreachable

if TYPE_CHECKING:  # loaded when a command runs alone: a command the daemon runs never needs them
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table
    from rich.text import Text

    from parley.client.app import App
    from parley.client.store import Profile

# httpcore loads trio whenever it is installed (selenium, a test dependency, brings
# it). The command line runs on asyncio alone, and trio's import and teardown cost
# about 0.3 s of every command, so it is kept out of this process.
sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
# httpx loads its own command-line client (click, pygments, rich's syntax module: about
# 50 ms) whenever click is installed (uvicorn brings it); ``parley`` never runs it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

REASONS = ["csam", "terrorism", "violence", "fraud", "spam", "other"]
# Commands that work on the profile alone: they never touch the network.
LOCAL = {"whoami", "history", "export", "chats", "search"}
EXIT_INTERRUPTED = 130
# What httpx imports only when its first client is made (httpcore) and anyio when the
# first connection opens (its asyncio backend): loaded beside the Argon2id too.
NETWORK_MODULES = ("httpcore", "anyio._backends._asyncio")


def ClientError(message: str) -> ParleyError:  # noqa: N802 - raised as the class it stands for
    """``parley.client.app.ClientError``, loaded only when one is raised (that module
    loads the cryptography, which a command the daemon runs never needs)."""
    from parley.client.app import ClientError as Error

    return Error(message)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("parley")
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """``--version``, looked up only when asked for (importlib.metadata is slow to load)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        sys.stdout.write(f"parley {_version()}\n")  # on stdout, as argparse's own
        parser.exit()


def _parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - the whole command table
    # --profile is accepted before the command and after it (on every subcommand).
    profile = argparse.ArgumentParser(add_help=False)
    profile.add_argument(
        "--profile",
        type=Path,
        default=argparse.SUPPRESS,
        help="profile directory (default ~/.parley)",
    )
    p = argparse.ArgumentParser(
        prog="parley",
        description="Parley: end-to-end encrypted messaging. "
        "The passphrase comes from PARLEY_PASSPHRASE or is asked on the terminal.",
    )
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    p.add_argument(
        "--profile",
        type=Path,
        default=Path.home() / ".parley",
        help="profile directory (default ~/.parley)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, text: str, json_output: bool = False
    ) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = parent.add_parser(
            name, help=text, description=text, parents=[profile]
        )
        if json_output:
            c.add_argument("--json", action="store_true", help="print JSON, one object per line")
        return c

    def text_source(c: argparse.ArgumentParser) -> None:
        c.add_argument("text", nargs="?", help="the message; '-' reads it from standard input")
        c.add_argument("--file", type=Path, metavar="FILE", help="read the message from FILE")

    r = command(sub, "register", "ask the server for a registration code by SMS")
    r.add_argument("phone", help="your number in international format, e.g. +14155550123")
    r.add_argument(
        "--server", required=True, metavar="URL", help="the server, e.g. http://127.0.0.1:8470"
    )
    r.add_argument(
        "--force",
        action="store_true",
        help="replace a registered profile: the old one is renamed (DIR.replaced-TIME), never deleted",
    )
    v = command(sub, "verify", "finish registration with the code from the SMS")
    v.add_argument("code", help="the 6 digits from the SMS")
    v.add_argument("--name", help="the display name your contacts see (sent encrypted)")
    command(sub, "whoami", "show this profile's number, name, account and device", True)

    s = command(sub, "send", "send a 1:1 message (a note to yourself with your own number)", True)
    s.add_argument("phone", help="the contact's number")
    text_source(s)
    s.add_argument(
        "--attach",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="attach FILE (repeatable)",
    )

    rc = command(sub, "receive", "print the messages waiting for you", True)
    rc.add_argument(
        "--follow", action="store_true", help="keep listening until interrupted (Ctrl-C)"
    )
    rc.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop after SECONDS without a message (default 10; with --follow, never; 0 = never)",
    )
    rc.add_argument(
        "--save-attachments",
        type=Path,
        metavar="DIR",
        help="download and decrypt attachments into DIR",
    )

    g = command(sub, "group", "group chats").add_subparsers(
        dest="group_command", required=True, metavar="ACTION"
    )
    gc = command(g, "create", "create a group and tell its members", True)
    gc.add_argument("name", help="the group's name (sent encrypted to its members)")
    gc.add_argument(
        "--member",
        action="append",
        default=[],
        required=True,
        metavar="PHONE",
        help="a member (repeatable)",
    )
    for name, what in (
        ("add", "add a member"),
        ("remove", "remove a member (keys are rotated; they are told)"),
    ):
        ga = command(g, name, what)
        ga.add_argument("group", help="the group's name (if unique) or id")
        ga.add_argument("phone", help="the member's number")
    gs = command(g, "send", "send a message to a group", True)
    gs.add_argument("group", help="the group's name (if unique) or id")
    text_source(gs)
    command(g, "list", "list your groups and their members", True)

    sn = command(sub, "safety-number", "the 60-digit number to compare with a contact")
    sn.add_argument("phone", help="the contact's number")
    t = command(sub, "trust", "mark a contact verified after comparing safety numbers")
    t.add_argument("phone", help="the contact's number")
    t.add_argument(
        "--safety-number",
        required=True,
        dest="digits",
        metavar="DIGITS",
        help="the 60 digits you compared",
    )

    d = command(sub, "devices", "your linked devices").add_subparsers(
        dest="devices_command", required=True, metavar="ACTION"
    )
    command(d, "list", "list this account's devices", True)
    command(d, "link", "print a one-time code for a new device (valid 10 minutes)")
    du = command(d, "unlink", "unlink a device (from the primary)")
    du.add_argument("device_id", type=int, help="the device number from 'devices list'")
    lk = command(sub, "link", "join an account as a linked device, with a code from 'devices link'")
    lk.add_argument("code", help="the code the primary device printed")
    lk.add_argument("--server", required=True, metavar="URL", help="the account's server")
    lk.add_argument(
        "--force",
        action="store_true",
        help="set an existing profile aside (renamed, never deleted)",
    )

    rp = command(sub, "report", "report a received message to the platform's moderators", True)
    rp.add_argument("message_id", help="the id shown by 'receive --json' or 'history --json'")
    rp.add_argument("--reason", required=True, choices=REASONS, help="the category")
    rp.add_argument(
        "--context",
        type=int,
        default=0,
        metavar="N",
        help="also reveal the N (0..5) messages before it in the chat",
    )
    rp.add_argument(
        "--comment", default="", help="a note for the moderators (up to 1000 characters)"
    )
    command(
        sub, "notices", "notices from the platform (report outcomes, actions on your account)", True
    )

    po = command(
        sub,
        "policy",
        "the privacy policy, verified against the transparency log, with changes",
        True,
    )
    po.add_argument("--accept", action="store_true", help="record that you have read this version")
    au = command(sub, "audit", "audit the server's transparency log as any outsider can", True)
    au.add_argument("--server", required=True, metavar="URL", help="the server to audit")
    au.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="where the last seen head is kept (default: PROFILE/audit-HOST.json)",
    )

    k = command(
        sub, "keys", "key transparency: your own entry in the key directory"
    ).add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = command(k, "check", "check your account in the key directory", True)
    kc.add_argument("--ack", action="store_true", help="acknowledge the devices now published")
    command(k, "head", "a short code of the log's signed head, to compare with others")

    h = command(sub, "history", "the local history of a chat (no network)", True)
    h.add_argument("chat", metavar="PHONE|GROUP", help="a number, or a group's name or id")
    h.add_argument("--limit", type=int, metavar="N", help="only the last N messages")
    command(sub, "chats", "your conversations, most recent first, with unread counts", True)
    rd = command(sub, "read", "mark a chat read (its senders get read receipts, if on)")
    rd.add_argument("chat", metavar="PHONE|GROUP", help="a number, or a group's name or id")
    se = command(sub, "search", "find messages holding every word given (no network)", True)
    se.add_argument("text", help="the words to find")
    st = command(sub, "settings", "show or change this profile's settings", True)
    st.add_argument(
        "--read-receipts",
        choices=["on", "off"],
        help="tell senders when you have read their messages (default on)",
    )
    at = command(sub, "attachment", "attachments of a message").add_subparsers(
        dest="attachment_command", required=True, metavar="ACTION"
    )
    ats = command(at, "save", "download and decrypt a message's attachments")
    ats.add_argument("message_id", help="the message's id")
    ats.add_argument(
        "--out", type=Path, default=Path(), metavar="DIR", help="where to save (default: here)"
    )
    command(sub, "tui", "the terminal app: chats, groups, safety numbers, devices, the policy")
    e = command(sub, "export", "write your own data (no keys) as JSON")
    e.add_argument("file", type=Path, help="the file to write (0600)")
    dm = command(
        sub,
        "daemon",
        "hold the profile open, receive in real time, serve JSON-RPC on a Unix socket",
    )
    dm.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        help="where to listen (default PROFILE/daemon.sock, created 0600)",
    )
    da = command(sub, "delete-account", "delete the account on the server and wipe this profile")
    da.add_argument("--yes", action="store_true", help="do not ask for confirmation (for scripts)")
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


@functools.cache
def _console(stderr: bool) -> Console:
    """The rich console for stdout or stderr, made (and rich loaded, about 0.1 s) on first use."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False, markup=False)


def out() -> Console:
    return _console(False)


def err() -> Console:
    return _console(True)


def _plain(parts: tuple[object, ...]) -> str | None:
    """The line ``parts`` make when printing it through rich would write exactly its
    characters (plain strings and numbers, nothing ``visible`` would escape, so no
    styled escapes); None otherwise. A command that prints one id (``send``) then
    never loads rich."""
    if not all(type(p) in (str, int) for p in parts):
        return None
    line = "".join(str(p) for p in parts)
    return line if visible(line) == line else None


def say(*parts: object) -> None:
    line = _plain(parts)
    if line is None:
        out().print(join(*parts))
    else:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def note(*parts: object, style: str = "") -> None:
    plain = None if style else _plain(parts)
    if plain is not None:
        sys.stderr.write(plain + "\n")
        sys.stderr.flush()
        return
    line = join(*parts)
    if style:
        line.stylize(style)
    err().print(line)


def _progress(verb: str = "uploaded") -> tuple[Progress, Callable[[str, int], None]]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        console=err(),
        transient=True,
    )

    def done(name: str, size: int) -> None:
        progress.add_task(f"{verb} {visible(name)}", total=size, completed=size)

    return progress, done


def _new_table(*columns: str) -> Table:
    from rich.table import Table

    return Table(*columns)


def _content_type(name: str) -> str:
    import mimetypes  # only for a send with attachments

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _size(n: object) -> str:
    if not isinstance(n, int):
        return "size unknown"
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _who(entry: dict[str, Any]) -> Text:
    """The sender: "Name (+phone)" when they gave a name, else the number (or account)."""
    name = entry.get("sender_name") or ""
    if name:
        return join(literal(name), " (", literal(entry["sender"]), ")")
    return literal(entry["sender"])


def _attachments(entry: dict[str, Any]) -> Text:
    out_text = join()
    for a in entry.get("attachments", []):
        name = a.get("name", "") if isinstance(a, dict) else a
        size = a.get("size") if isinstance(a, dict) else None
        out_text.append_text(join(" [attachment: ", literal(name), f", {_size(size)}]"))
    return out_text


def _message_line(entry: dict[str, Any], groups: dict[str, str]) -> Text:
    where = (
        join("[", literal(groups.get(entry["group"], entry["group"])), "] ")
        if entry.get("group")
        else join()
    )
    if entry.get("description"):  # a change to the group ("Alice added Dave")
        return join(where, _who(entry), " ", literal(entry["description"]))
    if entry.get("event") == "removed":
        return join(where, _who(entry), " removed you from the group")
    return join(where, _who(entry), ": ", literal(entry["text"]), _attachments(entry))


def _public(entry: dict[str, Any], *extra: str) -> dict[str, Any]:
    keys = (
        "id",
        "chat",
        "group",
        "sender",
        "sender_name",
        "text",
        "sent_at",
        "event",
        "member",
        "group_name",
        *extra,
    )
    public = {k: entry.get(k) for k in keys}
    public["attachments"] = [
        {k: a.get(k) for k in ("id", "name", "size", "content_type")}
        for a in entry.get("attachments", [])
        if isinstance(a, dict)
    ]
    return with_iso(public, "sent_at")


def _read_text(args: argparse.Namespace, allow_empty: bool) -> str:
    if args.file is not None and args.text is not None:
        raise ClientError("give the text or --file, not both")
    if args.file is not None:
        try:
            return str(args.file.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ClientError(
                f"cannot read {args.file}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}"
            ) from exc
    if args.text == "-":
        return sys.stdin.read()
    if args.text is None:
        if allow_empty:
            return ""
        raise ClientError("give the text, '-' to read it from standard input, or --file FILE")
    return str(args.text)


def _open_profile(directory: Path, creating: bool, *modules: str) -> Profile:
    """Ask the passphrase and open the profile (unless the command makes one) while
    ``modules`` are imported beside it.

    Argon2id (about 0.2 s on one core, in C with the GIL released) and importing the
    client (0.1 to 0.2 s of Python, the GIL held) used to run one after the other; on two
    cores they now overlap, and on one they cost what they did. The profile stays on
    this thread (its SQLite connection belongs to it); the other thread only imports.
    This thread imports nothing new until it has joined the other, so neither can wait
    on a module the other holds half-imported. An import that fails there is left to
    fail again here, where the command imports the module for real and reports it."""
    import importlib
    import threading

    from parley.client.store import Profile

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # raised again by the command's own import
                return

    loader = threading.Thread(target=load, name="parley-import", daemon=True)
    loader.start()
    try:
        profile = Profile(directory, _passphrase(creating))
        if not creating:  # register and link decide themselves what an existing one means
            profile.open()
        return profile
    finally:
        loader.join()


async def _run(args: argparse.Namespace) -> int:
    args.shown_warnings = set()  # the warnings a command printed before it ran
    if args.command == "audit":
        return await _audit(args)
    if args.command == "tui":
        return await _tui(args)

    def notify(line: str) -> None:
        note("parley: ", line, style="yellow")

    from parley.cli.remote import connect

    remote = connect(args.profile, args.command, notify, getattr(args, "attach", []))
    if remote is not None:  # the profile's daemon runs the command: same output, no Argon2id
        try:
            return await _dispatch(cast("App", remote), args)
        finally:
            await remote.close()
    if args.command == "daemon":
        return await _daemon(args)
    creating = args.command in ("register", "link")
    profile = _open_profile(args.profile, creating, "parley.client.app", *NETWORK_MODULES)
    from parley.client.app import App

    app = App(profile, notify=notify)
    try:
        return await _dispatch(app, args)
    except ParleyError as exc:
        if exc.code == "key_transparency" and args.command not in ("register", "verify", "link"):
            # an alarm the command itself raised (a forged log, a stale epoch...): said now,
            # not only on the next command
            for warning in app.warnings():
                if warning.startswith("ALARM") and warning not in args.shown_warnings:
                    note(warning, style="yellow")
        raise
    finally:
        await app.close()


async def _daemon(args: argparse.Namespace) -> int:
    profile = _open_profile(
        args.profile, False, "parley.client.core", "parley.client.daemon", *NETWORK_MODULES
    )
    from parley.client.core import Client
    from parley.client.daemon import run
    from parley.client.rpc import SOCKET_NAME

    client = Client(profile)
    await run(client, args.profile, args.socket or args.profile / SOCKET_NAME)
    return 0


async def _dispatch(app: App, args: argparse.Namespace) -> int:  # noqa: PLR0912, PLR0915 - one dispatch table
    if args.command not in ("register", "verify", "link", "keys", *LOCAL):
        # Self-monitoring at the start of every network command: one quick try; if the
        # server is down, the command itself says so.
        with contextlib.suppress(ParleyError):
            await app.keys_check(retries=0, quick=True)
            await app.maintain_keys(
                retries=0, quick=True
            )  # rotate prekeys when due, refill when low
    if args.command not in ("register", "verify", "link"):
        for warning in app.warnings():
            note(warning, style="yellow")
            args.shown_warnings.add(warning)

    match args.command:
        case "register":
            phone = await app.register(args.phone, args.server, force=args.force)
            say(f"A code was sent to {phone}. Finish with: parley verify CODE")
        case "verify":
            me = await app.verify(args.code, args.name)
            say(f"Registered {me['phone']} (device {me['device_id']}).")
        case "whoami":
            me = app.whoami()
            if args.json:
                _print_json(me)
            else:
                name = join(" (", literal(me["name"]), ")") if me["name"] else ""
                say(
                    me["phone"],
                    name,
                    f"  account {me['account_id']}  device {me['device_id']}  on ",
                    me["server"],
                )
        case "send":
            text = _read_text(args, allow_empty=bool(args.attach))
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
                        _content_type(path.name),
                    )
                )
            if files:
                progress, done = _progress()
                with progress:
                    message_id = await app.send(args.phone, text, files, done)
            else:
                message_id = await app.send(args.phone, text, [], lambda _n, _s: None)
            _print_json({"id": message_id}) if args.json else say(message_id)
        case "receive":
            await _receive(app, args)
        case "group":
            await _group(app, args)
        case "safety-number":
            say(await app.safety_number(args.phone))
        case "trust":
            await app.trust(args.phone, args.digits)
            say(f"{args.phone} is verified.")
        case "devices":
            if args.devices_command == "list":
                devices = await app.devices()
                if args.json:
                    _print_json({"devices": devices})
                else:
                    table = _new_table("device", "role")
                    for d in devices:
                        table.add_row(str(d), "primary" if d == 1 else "linked")
                    out().print(table)
            elif args.devices_command == "link":
                code = await app.link_code()
                say(
                    "On the new device run: parley link CODE --server URL (the code works once, for 10 minutes)"
                )
                say(code)
            else:
                await app.unlink(args.device_id)
                say(f"Device {args.device_id} unlinked.")
        case "link":
            me = await app.link(args.code, args.server, force=args.force)
            say("Linked to ", me["phone"], f" as device {me['device_id']}.")
        case "report":
            result = await app.report(args.message_id, args.reason, args.context, args.comment)
            if args.json:
                _print_json(result)
            else:
                say(
                    f"Reported ({result['id']})."
                    if not result.get("existing")
                    else f"You had already reported this message ({result['id']})."
                )
                for a in result.get("attachments", []):
                    if not a.get("available", True):
                        note(
                            "parley: attachment ",
                            a.get("id", ""),
                            " could not be included: ",
                            a.get("reason", "it did not open"),
                        )
        case "notices":
            for notice in await app.notices():
                _print_json(with_iso(notice, "created_ms")) if args.json else say(
                    _notice_text(notice)
                )
        case "policy":
            policy = await app.policy(args.accept)
            if args.json:
                _print_json(policy)
            else:
                if policy["accepted"] is None:
                    out().print(literal(policy["text"], multiline=True))
                elif policy["changed"]:
                    out().print(literal(policy["diff"], multiline=True))
                else:
                    say(f"The privacy policy (version {policy['version']}) has not changed.")
                say(
                    f"Version {policy['version']}, verified against the transparency log."
                    + ("" if args.accept else " Accept it with 'parley policy --accept'.")
                )
        case "keys":
            if args.keys_command == "head":
                say(await app.keys_head())
            else:
                result = await app.keys_check(ack=args.ack)
                if args.json:
                    _print_json(result)
                elif result["ok"]:
                    say(
                        f"Your keys are as you left them (devices {result['devices']}, directory epoch {result['epoch']})."
                    )
                for alarm in result["alarms"]:
                    note("ALARM: ", alarm)
                if not result["ok"]:
                    return 1
        case "chats":
            _chats(app, args)
        case "read":
            n = await app.mark_read(_chat_ref(app, args.chat))
            say(f"Marked {n} message(s) read.")
        case "search":
            found = app.search(args.text)
            if args.json:
                for entry in found:
                    _print_json(_public(entry, "outgoing", "status"))
            else:
                _table(app, found)
        case "settings":
            wanted = None if args.read_receipts is None else args.read_receipts == "on"
            current = await app.settings(read_receipts=wanted)
            if args.json:
                _print_json(current)
            else:
                say("read receipts: ", "on" if current["read_receipts"] else "off")
        case "history":
            _history(app, args)
        case "attachment":
            progress, done = _progress("downloaded")
            with progress:
                saved = await app.save_attachments(args.message_id, args.out, done)
            for path in saved:
                say("saved ", str(path))
        case "export":
            data = app.export()
            fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
            say(f"Wrote {args.file}")
        case "delete-account":
            if not args.yes:
                _confirm_delete(app)
            await app.delete_account()
            say("Account deleted and profile wiped.")
    return 0


def _confirm_delete(app: App) -> None:
    me = app.whoami()
    if not sys.stdin.isatty():
        raise ClientError("delete-account deletes the account for good: add --yes to confirm")
    err().print(
        join("This deletes the account ", me["phone"], " on the server and wipes this profile.")
    )
    if input(f"Type the number ({me['phone']}) to confirm: ").strip() != me["phone"]:
        raise ClientError("not confirmed: nothing was deleted")


async def _tui(args: argparse.Namespace) -> int:
    """The terminal app (Textual, imported only here: other commands do not pay for it).
    The passphrase is asked and checked before the screen is taken over."""
    profile = _open_profile(
        args.profile, False, "parley.client.core", "parley.client.tui.app", *NETWORK_MODULES
    )
    from parley.client.core import Client
    from parley.client.tui.app import ParleyApp

    client = Client(profile)
    client.whoami()  # no profile, an unfinished registration, a wrong passphrase: one line
    await ParleyApp(client).run_async()
    return 0


async def _audit(args: argparse.Namespace) -> int:
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
        say(f"transparency log OK: {result['size']} entries{since}; head ", result["head_code"])
    return 0


async def _receive(app: App, args: argparse.Namespace) -> None:
    save_dir: Path | None = args.save_attachments
    timeout = args.timeout if args.timeout is not None else (None if args.follow else 10.0)
    if timeout is not None and timeout <= 0:
        timeout = None
    groups = app.group_names()
    pending: list[str] = []
    if args.json:  # a refusal is a line on stderr and, for programs, a JSON event
        app.on_refusal = lambda who, why: _print_json(
            {"event": "refused", "sender": who, "reason": why}
        )
        app.on_alarm = lambda alarm: _print_json({"event": "alarm", "alarm": alarm})

    def show(entry: dict[str, Any]) -> None:
        if entry.get("group") and entry["group"] not in groups:
            groups.update(app.group_names())
        if args.json:
            _print_json(_public(entry))
        else:
            out().print(_message_line(entry, groups))
        if save_dir is not None and entry.get("attachments"):
            pending.append(entry["id"])

    for notice in await app.notices():
        note(_notice_text(notice))
    policy_notice = app.policy_warning(await _served_policy_version(app))
    if policy_notice:
        note(policy_notice)
    await app.receive(args.follow, timeout, show)
    if save_dir is not None and pending:
        progress, done = _progress("downloaded")
        with progress:
            for message_id in pending:
                await app.save_attachments(message_id, save_dir, done)


def _history(app: App, args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise ClientError("--limit is a positive number")
    entries = app.history(args.chat, args.limit)
    if args.json:
        for entry in entries:
            _print_json(_public(entry, "outgoing", "status"))
        return
    groups = app.group_names()
    if entries and entries[0].get("group"):
        say("Group ", groups.get(entries[0]["group"], entries[0]["group"]))
    _table(app, entries)


def _table(app: App, entries: list[dict[str, Any]]) -> None:
    table = _new_table("sent", "from", "text")
    for entry in entries:
        if entry.get("description"):
            body = literal(entry["description"])
        elif entry.get("event") == "removed":
            body = join("removed you from the group")
        else:
            body = join(literal(entry["text"], multiline=True), _attachments(entry))
        when = literal(local_time(entry.get("sent_at")))
        if entry.get("status"):  # your message: sent, delivered or read
            when.append(f" {entry['status']}", style="dim")
        table.add_row(when, _who(entry), body)
    out().print(table)


def _chat_ref(app: App, ref: str) -> str:
    from parley.client.app import normalize_phone

    return normalize_phone(ref) if ref.startswith("+") else app.group_id(app.local_state(), ref)


def _chats(app: App, args: argparse.Namespace) -> None:
    chats = app.chats()
    if args.json:
        for c in chats:
            _print_json(c.to_dict())
        return
    table = _new_table("chat", "unread", "last", "when")
    for c in chats:
        last = join(literal(c.sender_name or c.sender), ": ", literal(c.last)) if c.last else join()
        table.add_row(
            literal(c.title),
            join(str(c.unread) if c.unread else ""),
            last,
            literal(local_time(c.sent_at)),
        )
    out().print(table)


async def _served_policy_version(app: App) -> int | None:
    """The server's current policy version (None if it has none or is unreachable)."""
    from parley.cli.remote import Remote

    if isinstance(app, Remote):
        return await app.served_policy_version()
    from parley.client.app import verified_policy

    async def act(session: Any) -> int | None:
        try:
            return int((await verified_policy(session.api))["version"])
        except ParleyError:
            return None

    result = await app.run(act, retries=0)
    return None if result is None else int(result)


def _notice_text(notice: dict[str, Any]) -> Text:
    """A platform notice; every field is the server's word, shown literally."""
    when = local_time(notice.get("created_ms")) if isinstance(notice.get("created_ms"), int) else ""
    prefix = join("notice", f" ({when})" if when else "", ": ")
    if notice.get("kind") == "report_outcome":
        return join(
            prefix,
            "your report ",
            str(notice.get("report")),
            " (",
            str(notice.get("category")),
            "): ",
            str(notice.get("outcome")),
        )
    if notice.get("kind") == "lawful_request":
        data = notice.get("data")
        kinds = ", ".join(str(x) for x in data) if isinstance(data, list) else str(data)
        return join(
            prefix,
            "under a court order, ",
            str(notice.get("authority")),
            " (",
            str(notice.get("jurisdiction")),
            ") obtained your ",
            kinds,
        )
    if notice.get("kind") == "moderation":
        return join(
            prefix,
            "moderators applied '",
            str(notice.get("action")),
            "' to your account (",
            str(notice.get("category", "")),
            ")",
        )
    return join(prefix, json.dumps(notice))


async def _group(app: App, args: argparse.Namespace) -> None:
    match args.group_command:
        case "create":
            gid = await app.group_create(args.name, args.member)
            _print_json({"id": gid}) if args.json else say(gid)
        case "add" | "remove":
            await app.group_change(args.group, args.phone, add=args.group_command == "add")
            say("Done.")
        case "send":
            text = _read_text(args, allow_empty=False)
            message_id = await app.group_send(args.group, text)
            _print_json({"id": message_id}) if args.json else say(message_id)
        case "list":
            groups = await app.group_list()
            if args.json:
                _print_json(groups)
            else:
                table = _new_table("group", "name", "members")
                for g in groups:
                    table.add_row(
                        literal(g["id"]), literal(g["name"]), literal(", ".join(g["members"]))
                    )
                out().print(table)


def _one_line_error(exc: ParleyError) -> Text:
    """The error a person reads: plain words, never a library's name or a pattern."""
    if isinstance(exc, Unreachable):
        return join("parley: ", exc.message, " (is the server running?)")
    if isinstance(exc, ServerError):
        return join("parley: ", _server_error(exc))
    return join("parley: ", exc.message)


_SERVER_ERRORS = {
    "invalid_code": "the code is wrong: check the 6 digits from the SMS",
    "too_many_attempts": "too many wrong codes: ask for a new one with 'parley register PHONE --server URL'",
    "no_code": "no code is waiting for this number (expired, used, or too many wrong tries): ask for a new one with 'parley register PHONE --server URL'",
    "invalid_phone": "not a phone number the server accepts: use + and the country code, e.g. +14155550123",
    "unauthorized": "the server does not accept this device's credential (unlinked or deleted?)",
    "payload_too_large": "too large for the server",
}


def _server_error(exc: ServerError) -> str:
    if exc.code in _SERVER_ERRORS:
        return _SERVER_ERRORS[exc.code]
    if exc.code == "rate_limited":
        after = exc.details.get("retry_after")
        return (
            f"too many requests: try again in {after} s"
            if after
            else "too many requests: try again later"
        )
    return f"the server refused: {exc.message} ({exc.code})"


def main(argv: list[str] | None = None) -> int:
    """The ``parley`` command. Run as the program (``argv`` from the command line), the
    process ends as soon as the command is over (``_exit_now``); a caller passing
    ``argv`` gets the exit status back."""
    code = _main(argv)
    if argv is None:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, which frees every module and
    object one by one (40 to 70 ms of each command). Called only once the command is
    over: ``asyncio.run`` has returned, so ``_run`` has closed the network client and
    the profile's database, and every change was committed before that in its own
    transaction (WAL, synchronous FULL: not even a crash here could lose or corrupt
    any of it). The exit handlers still run (logging's; a coverage tool's) and the
    output is flushed; while another thread runs, or when the output cannot be
    flushed, the normal exit is left to do its work."""
    import atexit
    import threading

    if threading.active_count() > 1:
        return
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the normal exit reports it
        return
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        note("parley: interrupted")
        return EXIT_INTERRUPTED
    except ParleyError as exc:
        err().print(_one_line_error(exc))
        if exc.code == "key_transparency" and "--json" in (argv or sys.argv[1:]):
            _print_json({"error": {"code": exc.code, "message": exc.message}, "refused": True})
    except OSError as exc:
        err().print(
            join(
                "parley: ",
                exc.strerror or type(exc).__name__,
                f" ({exc.filename})" if exc.filename else "",
            )
        )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
