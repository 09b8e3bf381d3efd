"""Connection slots shared by every MTA process: a domain's connection cap, held globally.

Each process keeps its own pool per destination domain, but before opening a connection it
takes one of the domain's `max_connections` slot rows in Postgres, and gives it back when the
connection closes. Two processes on one database therefore never have more connections open
to a domain than its rule allows between them. Slots are touched once per connection, not per
message (connections carry up to `messages_per_connection` messages).
"""

from __future__ import annotations

import asyncio

import asyncpg

from mta.queue import SQL

_RETRY_MIN, _RETRY_MAX = 0.05, 1.0


class ConnectionSlots:
    def __init__(self, pool: asyncpg.Pool, owner: str, ttl: float) -> None:
        self._pool = pool
        self._owner = owner
        self._ttl = ttl
        self._ensured: dict[str, int] = {}

    async def acquire(self, domain: str, cap: int, wait: float) -> int | None:
        """Take a free slot of `domain`, waiting up to `wait` seconds; None if none freed.

        Giving up matters: a process that waited forever would sit on the messages it had
        claimed while another process, holding every slot, could have sent them.
        """
        if self._ensured.get(domain, 0) < cap:
            await self._pool.execute(SQL["ensure_connection_slots"], domain, cap)
            self._ensured[domain] = cap
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        delay = _RETRY_MIN
        while True:
            slot: int | None = await self._pool.fetchval(
                SQL["acquire_connection_slot"], domain, cap, self._owner, self._ttl
            )
            if slot is not None:
                return slot
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
            delay = min(delay * 2, _RETRY_MAX)

    async def release(self, domain: str, slot: int) -> None:
        await self._pool.execute(SQL["release_connection_slot"], domain, slot, self._owner)

    async def extend(self) -> None:
        await self._pool.execute(SQL["extend_connection_slots"], self._owner, self._ttl)

    async def seen(self, alive_within: float) -> int:
        """Record this process as alive; returns how many processes are alive (at least 1)."""
        await self._pool.execute(SQL["process_seen"], self._owner)
        live: int = await self._pool.fetchval(SQL["live_processes"], alive_within)
        return max(live, 1)

    async def forget(self) -> None:
        await self._pool.execute(SQL["forget_process"], self._owner)

    async def release_all(self) -> None:
        await self._pool.execute(SQL["release_all_connection_slots"], self._owner)
