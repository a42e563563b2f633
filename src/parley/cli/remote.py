"""The ``parley`` commands, run by the profile's daemon when one answers.

``Remote`` stands in for ``App`` in the command dispatcher: the same methods with
the same results, each one JSON-RPC call (``parley.client.rpc``), so a command
prints exactly what it prints alone, without the passphrase's Argon2id and
without loading the cryptography. Notes the daemon makes while it works on a
call (``note`` notifications) are printed as the command's own notes; its typed
errors come back as the same ``ParleyError`` kinds, so the one-line errors and
exit codes are the same too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from parley.client import rpc
from parley.client.records import ChatSummary
from parley.client.state import ProfileState
from parley.errors import ParleyError

# Commands a daemon does not run: they make, replace or wipe the profile it holds,
# or need no profile. While a daemon answers, the first four are refused.
NOT_WHILE_DAEMON = frozenset({"register", "verify", "link", "delete-account"})
STANDALONE = NOT_WHILE_DAEMON | {"daemon", "audit", "tui"}


def connect(
    profile: Path, command: str, notify: Callable[[str], None], attach: list[Path]
) -> Remote | None:
    """A ``Remote`` when the profile's daemon answers and runs ``command``; None to run
    the command alone."""
    if command in STANDALONE and command not in NOT_WHILE_DAEMON:
        return None
    path = rpc.socket_path(profile)
    conn = rpc.Connection.open(path)
    if conn is None:
        return None
    if command in NOT_WHILE_DAEMON:
        conn.close()
        raise ParleyError(
            f"a daemon is running for this profile ({path}): stop it first to {command.replace('-', ' ')}"
        )
    return Remote(conn, notify, attach)


class Remote:
    def __init__(
        self, conn: rpc.Connection, notify: Callable[[str], None], attach: list[Path]
    ) -> None:
        self._conn = conn
        self.notify = notify
        self._attach = [p.absolute() for p in attach]
        self.on_refusal: Callable[[str, str], None] = lambda _who, _why: None
        self.on_alarm: Callable[[str], None] = lambda _alarm: None

    # -- the connection ------------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        rid = self._conn.send(method, params)
        while True:
            message = self._conn.read()
            assert message is not None
            if message.get("id") == rid and "method" not in message:
                error = message.get("error")
                if isinstance(error, dict):
                    raise rpc.error_from(error)
                return message.get("result")
            self._notification(message, lambda _entry: None)

    def _notification(
        self, message: dict[str, Any], show: Callable[[dict[str, Any]], None]
    ) -> bool:
        """Handle one notification; True if it was a message."""
        params = message.get("params")
        if not isinstance(params, dict):
            return False
        match message.get("method"):
            case "receive":
                entry = params.get("message")
                if isinstance(entry, dict):
                    show(entry)
                    return True
            case "note":
                self.notify(str(params.get("text", "")))
            case "alarm":
                text = str(params.get("text", ""))
                # an alarm the app noted ("ALARM: ...") is a line; one raised while
                # receiving is also an event for `receive --json`
                self.notify(text) if text.startswith("ALARM") else self.on_alarm(text)
            case "refusal":
                self.on_refusal(str(params.get("sender", "")), str(params.get("reason", "")))
        return False

    async def close(self) -> None:
        self._conn.close()

    # -- what the dispatcher calls, as App names it ------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        return dict(self.call("whoami"))

    def warnings(self) -> list[str]:
        return list(self.call("alarms"))

    async def keys_check(
        self, ack: bool = False, retries: int = 5, quick: bool = False
    ) -> dict[str, Any]:
        return dict(self.call("keysCheck", {"ack": ack, "quick": quick or retries == 0}))

    async def maintain_keys(self, retries: int = 5, quick: bool = False) -> dict[str, Any]:
        return dict(self.call("maintainKeys", {"quick": quick or retries == 0}))

    async def send(
        self,
        phone: str,
        text: str,
        files: list[tuple[str, bytes, str]],
        progress: Callable[[str, int], None],
    ) -> str:
        params: dict[str, Any] = {"recipient": phone, "message": text}
        if files:
            params["attachments"] = [str(p) for p in self._attach]
        message_id = str(self.call("send", params)["id"])
        for name, data, _kind in files:
            progress(name, len(data))
        return message_id

    async def receive(
        self, follow: bool, timeout: float | None, on_message: Callable[[dict[str, Any]], None]
    ) -> int:
        """What the daemon received since the last ``receive`` (and, with ``follow``,
        what it receives next, until ``timeout`` seconds pass without a message)."""
        count = 0

        def show(entry: dict[str, Any]) -> None:
            nonlocal count
            count += 1
            on_message(entry)

        for event in self.call("receive", {"follow": follow})["events"]:
            self._notification(event, show)
        while follow:
            message = self._conn.read(timeout)
            if message is None:
                break
            self._notification(message, show)
        return count

    async def notices(self) -> list[dict[str, Any]]:
        return list(self.call("notices"))

    async def served_policy_version(self) -> int | None:
        version = self.call("policyVersion")
        return None if version is None else int(version)

    def policy_warning(self, served_version: int | None) -> str | None:
        warning = self.call("policyWarning", {"version": served_version})
        return None if warning is None else str(warning)

    async def save_attachments(
        self, message_id: str, directory: Path, progress: Callable[[str, int], None]
    ) -> list[Path]:
        saved = self.call("saveAttachments", {"id": message_id, "dir": str(directory.absolute())})
        for item in saved:
            progress(str(item["name"]), int(item["size"]))
        return [Path(item["path"]) for item in saved]

    def group_names(self) -> dict[str, str]:
        return dict(self.call("groupNames"))

    async def group_create(self, name: str, phones: list[str]) -> str:
        return str(self.call("createGroup", {"name": name, "members": phones})["id"])

    async def group_change(self, ref: str, phone: str, add: bool) -> None:
        self.call("updateGroup", {"groupId": ref, "addMember" if add else "removeMember": phone})

    async def group_send(self, ref: str, text: str) -> str:
        return str(self.call("send", {"groupId": ref, "message": text})["id"])

    async def group_list(self) -> list[dict[str, Any]]:
        return list(self.call("listGroups"))

    async def safety_number(self, phone: str) -> str:
        return str(self.call("safetyNumber", {"recipient": phone})["safetyNumber"])

    async def trust(self, phone: str, digits: str) -> None:
        self.call("trust", {"recipient": phone, "safetyNumber": digits})

    async def devices(self) -> list[int]:
        return [int(d) for d in self.call("listDevices")]

    async def link_code(self) -> str:
        return str(self.call("linkCode")["code"])

    async def unlink(self, device_id: int) -> None:
        self.call("removeDevice", {"deviceId": device_id})

    async def report(
        self, message_id: str, reason: str, context: int, comment: str
    ) -> dict[str, Any]:
        return dict(
            self.call(
                "report",
                {"id": message_id, "reason": reason, "context": context, "comment": comment},
            )
        )

    async def policy(self, accept: bool) -> dict[str, Any]:
        return dict(self.call("policy", {"accept": accept}))

    async def keys_head(self) -> str:
        return str(self.call("keysHead")["head"])

    def history(self, chat: str, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self.call("history", {"chat": chat, "limit": limit}))

    def export(self) -> dict[str, Any]:
        return dict(self.call("export"))

    def chats(self) -> list[ChatSummary]:
        out = []
        for d in self.call("listChats"):
            chat = ChatSummary.from_dict(d, unread=int(d.get("unread", 0)), last_seq=0)
            chat.title = str(d.get("title", ""))
            out.append(chat)
        return out

    def search(self, text: str, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.call("search", {"text": text, "limit": limit}))

    async def settings(self, read_receipts: bool | None = None) -> dict[str, Any]:
        current = self.call("settings", {"readReceipts": read_receipts})
        return {"read_receipts": bool(current["readReceipts"])}

    async def mark_read(self, chat: str) -> int:
        return int(self.call("markRead", {"chat": chat})["unread"])

    def local_state(self) -> ProfileState:
        return ProfileState()  # the daemon resolves names itself (group_id)

    def group_id(self, _state: ProfileState, ref: str) -> str:
        return str(self.call("chatId", {"chat": ref}))
