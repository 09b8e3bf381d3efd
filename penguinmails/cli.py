"""The `penguinmails` command: one entry point for every role and operator task.

Role modules are imported inside their commands, so `penguinmails migrate` does not load
the MTA, and mta/, tracker/ and api/ stay independent of each other.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from penguinmails import logs
from penguinmails.config import ConfigError, Settings, load_settings
from penguinmails.lifecycle import PendingMigrations

log = logging.getLogger("penguinmails")


class CommandError(Exception):
    """A failure to report as one line on stderr, with exit status 1."""


def _run(coro: Coroutine[Any, Any, int | None]) -> int | None:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)


async def _connect(settings: Settings) -> Any:
    from penguinmails.database import connect, database_url

    return await connect(await asyncio.to_thread(database_url, settings))


async def _connect_migrated(settings: Settings) -> Any:
    from penguinmails.migrations import pending

    conn = await _connect(settings)
    waiting = await pending(conn)
    if waiting:
        await conn.close()
        raise CommandError(
            f"the database has {len(waiting)} pending migration(s): "
            "run `penguinmails migrate` (or `penguinmails up`) first"
        )
    return conn


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from penguinmails.migrations import migrate

    conn = await _connect(settings)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print("\n".join(f"applied {name}" for name in applied) or "database is up to date")
    return 0


async def cmd_mta(settings: Settings, args: argparse.Namespace) -> int:
    from mta.daemon import serve

    await serve(settings)
    return 0


async def cmd_inbound(settings: Settings, args: argparse.Namespace) -> int:
    from mta.inbound import serve

    await serve(settings)
    return 0


async def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Everything in one process on the embedded database, delivering to the capture sink."""
    from penguinmails.up import run

    await run(settings)
    return 0


async def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from api.server import serve

    await serve(settings)
    return 0


async def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Prints the new key alone on the last line of stdout: it is shown this once only."""
    from api.keys import create_key

    conn = await _connect_migrated(settings)
    try:
        key = await create_key(conn, tenant=args.tenant, tier=args.tier, test=args.test)
    finally:
        await conn.close()
    mode = "test (sandbox)" if args.test else "live"
    print(f"created a {mode} API key for tenant {args.tenant!r}; it is shown only once:")
    print(key)
    return 0


async def cmd_tracker(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.server import serve

    await serve(settings)
    return 0


async def cmd_domains(settings: Settings, args: argparse.Namespace) -> int:
    """`domains add` generates and stores DKIM keys; both print the TXT records to publish."""
    from mta.domains import DomainError, add_domain, show_domain

    conn = await _connect(settings)
    try:
        if args.action == "add":
            records = await add_domain(
                conn,
                settings,
                args.domain,
                tenant=args.tenant,
                selector=args.selector,
                algorithm=args.algorithm,
            )
        else:
            records = await show_domain(conn, args.domain)
    except DomainError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        await conn.close()
    print("\n".join(records))
    return 0


async def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    from penguinmails.messages import Draft, InvalidMessage, enqueue, ensure_tenant

    draft = Draft(
        from_email=args.from_email,
        from_name=args.from_name,
        subject=args.subject,
        recipients=args.to,
        text=args.text,
        html=args.html,
    )
    try:
        draft.validate()  # before touching the database: bad input changes nothing
    except InvalidMessage as exc:
        raise CommandError(f"invalid message: {exc}") from exc
    conn = await _connect_migrated(settings)
    try:
        async with conn.transaction():
            tenant_id = await ensure_tenant(conn, args.tenant)
            ids = await enqueue(conn, tenant_id, draft)
    except InvalidMessage as exc:
        raise CommandError(f"invalid message: {exc}") from exc
    finally:
        await conn.close()
    for message_id in ids:
        print(message_id)
    return 0


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from penguinmails.queries import load

    sql = load("penguinmails", "sql/queries.sql")
    conn = await _connect_migrated(settings)
    try:
        totals = await conn.fetch(sql["status_totals"])
        depth = await conn.fetch(sql["queue_depth"], 20)
        oldest = await conn.fetchrow(sql["oldest_deferred"])
        reasons = await conn.fetch(sql["deferral_reasons"], 10)
        webhooks = await conn.fetchrow(sql["webhook_backlog_summary"])
    finally:
        await conn.close()
    print(_table(["status", "messages"], [[r["status"], r["messages"]] for r in totals]))
    if depth:
        print("\nqueue by destination domain")
        print(
            _table(
                ["status", "domain", "messages", "oldest due"],
                [
                    [
                        r["status"],
                        r["recipient_domain"],
                        r["messages"],
                        f"{r['oldest_due']:%Y-%m-%d %H:%M:%S}",
                    ]
                    for r in depth
                ],
            )
        )
    if oldest is not None:
        print(
            f"\noldest deferred: message {oldest['id']} to {oldest['recipient_domain']}, "
            f"queued {oldest['created_at']:%Y-%m-%d %H:%M:%S}, {oldest['attempts']} attempts, "
            f"next {oldest['next_attempt_at']:%H:%M:%S}: {oldest['last_reply']}"
        )
    if reasons:
        print("\ntop deferral reasons")
        print(
            _table(
                ["code", "reason", "messages"],
                [[r["code"], r["reason"], r["messages"]] for r in reasons],
            )
        )
    oldest_hook = webhooks["oldest"]
    since = f", oldest since {oldest_hook:%Y-%m-%d %H:%M:%S}" if oldest_hook else ""
    print(f"\nwebhook backlog: {webhooks['pending']} deliveries{since}")
    return 0


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


async def cmd_queue(settings: Settings, args: argparse.Namespace) -> int:
    """Operator actions on unfinished messages; purge asks first unless --yes."""
    from penguinmails.queries import load

    sql = load("penguinmails", "sql/queries.sql")
    statuses = [args.status] if args.status else ["queued", "deferred"]
    filters = (statuses, args.domain, args.campaign)
    conn = await _connect_migrated(settings)
    try:
        count = await conn.fetchval(sql["queue_select"], *filters)
        scope = _describe_filters(args)
        if args.action == "retry":
            result = await conn.execute(sql["queue_retry"], *filters)
            print(f"{result.split()[-1]} message(s) {scope} are due now")
            return 0
        if count == 0:
            print(f"no unfinished messages {scope}")
            return 0
        if not args.yes:
            if not sys.stdin.isatty():
                raise CommandError(
                    f"purge would cancel {count} message(s) {scope}; re-run with --yes to confirm"
                )
            prompt = f"cancel {count} message(s) {scope}? type 'yes' to confirm: "
            answer = await asyncio.to_thread(input, prompt)
            if answer.strip().lower() != "yes":
                print("nothing changed")
                return 1
        async with conn.transaction():
            result = await conn.execute(sql["queue_purge"], *filters)
        print(f"cancelled {result.split()[-1]} message(s) {scope}")
        return 0
    finally:
        await conn.close()


def _describe_filters(args: argparse.Namespace) -> str:
    parts = [f"with status {args.status}" if args.status else "queued or deferred"]
    if args.domain:
        parts.append(f"to {args.domain}")
    if args.campaign:
        parts.append(f"in campaign {args.campaign}")
    return " ".join(parts)


async def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    """Run benchmarks/NAME.py (the same as `python -m benchmarks NAME ...`).

    In a thread: each benchmark runs its own event loop, and this command is already in one.
    """
    from benchmarks.__main__ import main as bench_main

    return await asyncio.to_thread(bench_main, [args.name, *args.rest])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="penguinmails", description=__doc__)
    parser.add_argument("--config", help="TOML config file (env: PENGUINMAILS_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="run everything locally, delivering to a capture sink").set_defaults(
        func=cmd_up
    )
    sub.add_parser("mta", help="run the delivery daemon").set_defaults(func=cmd_mta)
    sub.add_parser("inbound", help="receive bounces, complaints and replies").set_defaults(
        func=cmd_inbound
    )
    sub.add_parser("api", help="run the control API (/api/v1)").set_defaults(func=cmd_api)
    keys = sub.add_parser("keys", help="API keys")
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_actions.add_parser("create", help="create a key (and the tenant if new)")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--tier", choices=["free", "starter", "professional", "enterprise"], default=None
    )
    create.add_argument("--test", action="store_true", help="a sandbox key: never real MX hosts")
    create.set_defaults(func=cmd_keys)
    sub.add_parser(
        "tracker", help="run the open/click/unsubscribe server and webhook dispatcher"
    ).set_defaults(func=cmd_tracker)
    domains = sub.add_parser("domains", help="sending domains and their DKIM keys")
    domain_actions = domains.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = domain_actions.add_parser("add", help="generate DKIM keys; print the DNS records")
    add.add_argument("domain")
    add.add_argument("--tenant", required=True)
    add.add_argument("--selector", default=None)
    add.add_argument("--algorithm", choices=["rsa", "ed25519", "both"], default="rsa")
    add.set_defaults(func=cmd_domains)
    show = domain_actions.add_parser("show", help="print the DNS records to publish again")
    show.add_argument("domain")
    show.set_defaults(func=cmd_domains)
    sub.add_parser("migrate", help="apply pending database migrations").set_defaults(
        func=cmd_migrate
    )
    sub.add_parser("status", help="queue depth by status and domain").set_defaults(func=cmd_status)
    queue = sub.add_parser("queue", help="retry or purge unfinished messages")
    queue.add_argument("action", choices=["retry", "purge"])
    queue.add_argument("--domain", help="only messages to this destination domain")
    queue.add_argument("--campaign", type=int, help="only messages of this campaign id")
    queue.add_argument("--status", choices=["queued", "deferred"], help="default: both")
    queue.add_argument("--yes", action="store_true", help="purge without asking")
    queue.set_defaults(func=cmd_queue)
    send = sub.add_parser("send", help="queue a message (prints its queue id)")
    send.add_argument("--from", dest="from_email", required=True)
    send.add_argument("--from-name", default="")
    send.add_argument("--to", action="append", required=True)
    send.add_argument("--subject", required=True)
    send.add_argument("--text")
    send.add_argument("--html")
    send.add_argument("--tenant", default="default")
    send.set_defaults(func=cmd_send)
    bench = sub.add_parser("bench", help="run a benchmark (mta, compose, tracker, api, scale)")
    bench.add_argument("name", metavar="NAME", help="mta, compose, tracker, api or scale")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="its options, e.g. --quick")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config or os.environ.get("PENGUINMAILS_CONFIG"))
    except ConfigError as exc:
        print(f"penguinmails: {exc}", file=sys.stderr)
        return 2
    # `up` is for a person at a terminal: readable lines, not JSON.
    fmt = "text" if args.command == "up" else settings.logging.format
    logs.configure(settings.logging.level, fmt)
    try:
        return _run(args.func(settings, args)) or 0
    except (CommandError, PendingMigrations) as exc:
        print(f"penguinmails: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
