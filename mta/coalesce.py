"""Concurrent calls for one key coalesced into one: the MX lookup of a domain, its MTA-STS
policy, shared shaping's read of the suspensions. Deliveries in flight all ask at once; one
of them asks the network or the database, the others wait for its answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalesced(Generic[K, V]):
    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, call: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """`call()`'s result, or its failure, shared with every caller for `key` until it
        returns. It runs as a task of its own, so a caller cancelled meanwhile (a worker
        shutting down, a message's deadline) neither cancels it for the others nor loses the
        answer."""
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(call())
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        return await asyncio.shield(pending)

    def cancel(self) -> None:
        """Cancel every call under way (on close)."""
        for pending in self._pending.values():
            pending.cancel()

    def _settled(self, key: K, done: asyncio.Future[V]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if not done.cancelled():
            done.exception()  # retrieved, so nobody left waiting means no "never retrieved"
