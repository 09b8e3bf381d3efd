"""Sending identities' own relays: the submission server a message sent through such an
identity goes to (with the identity's credentials), instead of the recipient's MX.

The API seals each relay password with the server key, bound to the identity's public id
(penguinmails.secrets.identity_relay_aad); it is opened here, per identity, when one of its
messages is sent, and kept in memory for `TTL` seconds so a change through the API applies
within that time. A relay is only ever talked to over TLS with its certificate verified
(STARTTLS on 587, implicit TLS on 465): the connection carries the mailbox's password.
"""

from __future__ import annotations

import time

import asyncpg

from mta.queue import SQL
from mta.routing import Route
from mta.smtp import Shape
from penguinmails.config import Settings
from penguinmails.secrets import SealError, identity_relay_aad, server_keys, unseal

TTL = 30.0
# A mailbox provider's submission server counts connections per account: two at most.
MAX_CONNECTIONS = 2
MESSAGES_PER_CONNECTION = 50


class RelayUnavailable(Exception):
    """The identity's relay password cannot be opened (a server key was removed)."""


class Relays:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._cache: dict[int, tuple[float, Route | None]] = {}

    async def route(self, identity_id: int) -> Route | None:
        """The identity's relay, or None when our MTA sends its mail itself."""
        cached = self._cache.get(identity_id)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await self._pool.fetchrow(SQL["identity_relay"], identity_id)
        route = None
        if row is not None and row["relay_host"] is not None:
            password = ""
            if row["relay_password"] is not None:
                try:
                    password = unseal(
                        server_keys(self._settings),
                        row["relay_password"],
                        identity_relay_aad(row["public_id"]),
                    ).decode()
                except SealError as exc:
                    raise RelayUnavailable(str(exc)) from exc
            route = Route(
                key=f"identity:{row['public_id']}",
                hosts=((row["relay_host"], row["relay_port"]),),
                username=row["relay_username"] or "",
                password=password,
                require_starttls=True,
            )
        self._cache[identity_id] = (now + TTL, route)
        return route

    @staticmethod
    def shape(route: Route) -> Shape:
        """The relay's own pool: few connections, TLS required and verified."""
        return Shape(
            key=route.key,
            max_connections=MAX_CONNECTIONS,
            messages_per_connection=MESSAGES_PER_CONNECTION,
            slots=((route.key, MAX_CONNECTIONS),),
            tls_required=True,
            verify=True,
        )
