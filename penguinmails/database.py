"""Connecting to Postgres: the configured URL, or an embedded server under the data dir.

The embedded server (pgserver) is what makes `penguinmails up` and the test suite work on a
machine with nothing but Python. It is started on first use and stopped when the last
process that asked for it exits; several processes may share one data directory.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from penguinmails.config import Settings

log = logging.getLogger(__name__)

# What a database that is down, restarting, unreachable or refusing work can raise. Long-lived
# loops catch exactly these and retry; anything else is a bug and should surface.
# (asyncpg's InternalClientError shows up when a connection dies mid-operation, e.g. while
# being reset on release during a server restart.)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

_embedded: dict[Path, Any] = {}


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded Postgres under `data_dir/postgres` and return its URL."""
    pgdata = (data_dir / "postgres").resolve()
    if pgdata not in _embedded:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs complains about XDG_RUNTIME_DIR
            import pgserver

            _embedded[pgdata] = pgserver.get_server(pgdata, cleanup_mode="stop")
    return str(_embedded[pgdata].get_uri())


def database_url(settings: Settings) -> str:
    return settings.database.url or embedded_url(settings.paths.data_dir)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


def transaction_pooled(settings: Settings) -> bool:
    """The URL is a pooler in transaction mode (PgBouncer): a server session lasts one
    transaction, so nothing may rely on session state (LISTEN, session advisory locks,
    named prepared statements)."""
    return settings.database.pooler == "transaction"


def _statement_cache(pooled: bool) -> int:
    # asyncpg names and caches its prepared statements per connection; behind a transaction
    # pooler the next statement may run on another server session that never saw them.
    # Without the cache asyncpg sends its unnamed statement's Parse with every Bind, in the
    # same round trip, which any server session can run.
    return 0 if pooled else 100


async def connect(url: str, *, pooled: bool = False) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        url, statement_cache_size=_statement_cache(pooled)
    )
    await _init_connection(conn)
    return conn


async def create_pool(
    url: str,
    min_size: int = 2,
    max_size: int = 10,
    command_timeout: float | None = None,
    *,
    pooled: bool = False,
) -> asyncpg.Pool:
    """`command_timeout` bounds every statement: a connection wedged by a server restart
    raises (and is retried by its caller) instead of stalling a daemon for good. `pooled`:
    the URL is a transaction pooler (see `transaction_pooled`)."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=command_timeout,
        statement_cache_size=_statement_cache(pooled),
    )
    assert pool is not None
    return pool


async def replica_pool(settings: Settings) -> asyncpg.Pool | None:
    """A pool on `[database] replica_url` for read-only searches and analytics, or None
    when none is configured. Its answers lag the primary by the replication delay, so
    nothing that decides what to send, or reads what it just wrote, may use it."""
    if not settings.database.replica_url:
        return None
    return await create_pool(
        settings.database.replica_url,
        1,
        settings.database.pool_max,
        settings.database.command_timeout,
        pooled=transaction_pooled(settings),
    )


async def configured_pool(settings: Settings) -> tuple[asyncpg.Pool, str]:
    """The pool every role runs on, sized and bounded by [database], and its URL (for
    connections of their own, such as a LISTEN). Starts the embedded Postgres when no URL
    is configured; the caller closes the pool.
    """
    url = await asyncio.to_thread(database_url, settings)
    pooled = transaction_pooled(settings)
    if pooled:
        log.info(
            "behind a transaction pooler: no prepared statement cache, no LISTEN (polling "
            "instead), transaction-scoped advisory locks only",
            extra={"action": "pooler", "pooler": settings.database.pooler},
        )
    pool = await create_pool(
        url,
        settings.database.pool_min,
        settings.database.pool_max,
        settings.database.command_timeout,
        pooled=pooled,
    )
    return pool, url
