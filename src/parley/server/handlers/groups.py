"""Group membership. The creator is the admin; admins add and remove, anyone may leave.

The server keeps membership only (no name, no avatar: those travel encrypted
in the members' own messages) to fan out one ciphertext and refuse
non-members.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from parley.errors import BadRequest, Conflict, Forbidden, NotFound
from parley.server.handlers.accounts import AccountsHandler, Principal
from parley.server.handlers.ratelimit import RateLimiter
from parley.server.storage.groups import GroupStore

MAX_MEMBERS = 1000


class GroupsHandler:
    def __init__(
        self,
        accounts: AccountsHandler,
        groups: GroupStore,
        limiter: RateLimiter,
        clock_ms: Callable[[], int],
    ) -> None:
        self._accounts = accounts
        self._groups = groups
        self._limiter = limiter
        self._now = clock_ms
        self.check_grow: Callable[[str], None] = lambda _a: None  # moderation (Standing)

    async def create(self, who: Principal, members: list[str]) -> str:
        self.check_grow(who.account_id)
        self._limiter.check("group-create", who.account_id, 20, 1 / 60)
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

    async def mine(self, who: Principal) -> list[tuple[str, dict[str, bool]]]:
        return [
            (g, await self._groups.members(g)) for g in await self._groups.groups_of(who.account_id)
        ]
