"""Group membership. The creator is the admin; admins add and remove, anyone may leave.

The server keeps membership only (no name, no avatar: those travel encrypted
in the members' own messages) to fan out one ciphertext and refuse
non-members. What members believe is the group's signed state, which the
server only stores: each change sealed under a key it never sees, kept in
version order (a change for any version but the next is refused with 409, as
Signal's storage service does), and served to members catching up.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from parley.errors import BadRequest, Conflict, Forbidden, NotFound, VersionConflict
from parley.server.handlers.accounts import AccountsHandler, Principal
from parley.server.handlers.ratelimit import Limiter
from parley.server.storage.groups import GroupStore

MAX_MEMBERS = 1000
MAX_SEALED_CHANGE = 300_000  # group_state.MAX_CHANGE sealed (nonce and tag)
MAX_CHANGES_PAGE = 100


class GroupsHandler:
    def __init__(
        self,
        accounts: AccountsHandler,
        groups: GroupStore,
        limiter: Limiter,
        clock_ms: Callable[[], int],
    ) -> None:
        self._accounts = accounts
        self._groups = groups
        self._limiter = limiter
        self._now = clock_ms
        self.check_grow: Callable[[str], None] = lambda _a: None  # moderation (Standing)

    async def create(self, who: Principal, members: list[str]) -> str:
        self.check_grow(who.account_id)
        await self._limiter.check("group-create", who.account_id, 20, 1 / 60)
        if len(set(members)) + 1 > MAX_MEMBERS:
            raise BadRequest(f"a group has at most {MAX_MEMBERS} members")
        for member in members:
            await self._accounts.account(member)
        group_id = secrets.token_hex(16)
        await self._groups.create(group_id, who.account_id, members, self._now())
        return group_id

    async def members(self, who: Principal, group_id: str) -> dict[str, bool]:
        members = await self._groups.members(group_id)
        if who.account_id not in members:
            raise NotFound("no such group")  # non-members cannot probe which groups exist
        return members

    async def add(self, who: Principal, group_id: str, account_id: str) -> None:
        members = await self.members(who, group_id)
        if not members[who.account_id]:
            raise Forbidden("only a group admin can add members")
        self.check_grow(who.account_id)
        if account_id in members:
            raise Conflict("already a member")
        if len(members) >= MAX_MEMBERS:
            raise BadRequest(f"a group has at most {MAX_MEMBERS} members")
        await self._accounts.account(account_id)
        await self._groups.add(group_id, account_id, self._now())

    async def remove(self, who: Principal, group_id: str, account_id: str) -> None:
        members = await self.members(who, group_id)
        if account_id != who.account_id and not members[who.account_id]:
            raise Forbidden("only a group admin can remove other members")
        if account_id not in members:
            raise NotFound("not a member")
        await self._groups.remove(group_id, account_id, self._now())

    async def append_change(
        self, who: Principal, group_id: str, version: int, sealed: bytes
    ) -> None:
        """Keep a member's sealed change as the group's next (a member only)."""
        await self.members(who, group_id)
        if not sealed or len(sealed) > MAX_SEALED_CHANGE:
            raise BadRequest(f"a group change is 1 to {MAX_SEALED_CHANGE} bytes")
        await self._limiter.check("group-change", who.account_id, 120, 1)
        expected = await self._groups.append_change(group_id, version, sealed, self._now())
        if expected is not None:
            raise VersionConflict(expected)

    async def changes(
        self, who: Principal, group_id: str, since: int, limit: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        """A page of sealed changes from ``since``, and the next version (members only)."""
        await self.members(who, group_id)
        page = await self._groups.changes(group_id, since, min(limit, MAX_CHANGES_PAGE))
        return page, await self._groups.next_version(group_id)

    async def mine(self, who: Principal) -> list[tuple[str, dict[str, bool]]]:
        return [
            (g, await self._groups.members(g)) for g in await self._groups.groups_of(who.account_id)
        ]
