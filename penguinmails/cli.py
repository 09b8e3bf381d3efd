"""The `penguinmails` command: one entry point for every role and operator task.

Role modules are imported inside their commands, so `penguinmails migrate` does not load
the MTA, and mta/, tracker/ and api/ stay independent of each other.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import re
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from penguinmails import logs
from penguinmails.config import ConfigError, Settings, load_settings, parse_processes
from penguinmails.lifecycle import PendingMigrations
from penguinmails.up import SANDBOX_TENANT

log = logging.getLogger("penguinmails")


class CommandError(Exception):
    """A failure to report as one line on stderr, with exit status 1."""


def _run(coro: Coroutine[Any, Any, int | None]) -> int | None:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)


async def _connect(settings: Settings, *, create: bool = False) -> Any:
    from penguinmails.database import connect, database_url, transaction_pooled

    if not create:
        _check_data_dir(settings)
    url = await asyncio.to_thread(database_url, settings)
    return await connect(url, pooled=transaction_pooled(settings))


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
    from penguinmails.database import transaction_pooled
    from penguinmails.migrations import migrate

    conn = await _connect(settings, create=True)
    try:
        applied = await migrate(conn, session_lock=not transaction_pooled(settings))
    finally:
        await conn.close()
    print("\n".join(f"applied {name}" for name in applied) or "database is up to date")
    return 0


async def cmd_maintain(settings: Settings, args: argparse.Namespace) -> int:
    from penguinmails.retention import maintain

    conn = await _connect_migrated(settings)
    try:
        report = await maintain(conn, settings.retention)
    finally:
        await conn.close()
    if report.skipped:
        print("another maintenance run holds the lock; nothing done")
        return 0
    for name in report.created:
        print(f"created {name}")
    for name in report.dropped:
        print(f"dropped {name}")
    for name in report.kept:
        print(f"kept {name} (deliveries still pending, or busy)")
    if report.archived:
        print(f"archived {report.archived} finished messages")
    for name, rows in report.deleted.items():
        print(f"deleted {rows} rows past their tenant's retention from {name}")
    if report.default_rows:
        print(f"warning: {report.default_rows} webhook deliveries outside any day's partition")
    return 0


async def cmd_mta(settings: Settings, args: argparse.Namespace) -> int:
    if args.processes is not None:
        mta = settings.mta.model_copy(update={"processes": args.processes})
        settings = settings.model_copy(update={"mta": mta})
    count = settings.mta.worker_count()
    if count > 1 and args.supervisor is None:
        from mta.supervisor import supervise

        return await supervise(settings, count, args.config)
    from mta.daemon import serve

    await serve(settings, supervisor=args.supervisor)
    return 0


def _processes(value: str) -> int | str:
    try:
        return parse_processes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def cmd_inbound(settings: Settings, args: argparse.Namespace) -> int:
    from inbound.server import serve

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


async def cmd_operators(settings: Settings, args: argparse.Namespace) -> int:
    """Grant or revoke a dashboard user's view of the whole installation's queue."""
    from penguinmails.queries import load

    sql = load("penguinmails", "sql/queries.sql")
    mode = "test" if args.test else "live"
    conn = await _connect_migrated(settings)
    try:
        found = await conn.fetchval(
            sql["set_operator"], args.tenant, mode, args.email, args.action == "grant"
        )
    finally:
        await conn.close()
    if found is None:
        print(f"no {mode} user {args.email!r} in tenant {args.tenant!r}", file=sys.stderr)
        return 1
    done = "is now an operator" if args.action == "grant" else "is no longer an operator"
    print(f"{args.email} ({args.tenant}, {mode}) {done}")
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


async def cmd_domains_verify(settings: Settings, args: argparse.Namespace) -> int:
    """`domains verify`: every DNS check of the domain as a table, stored for the API's door;
    exit 1 when a check fails."""
    from mta.domains import DomainError, normalise_domain
    from penguinmails.deliverability import stored_keys, table, verify_and_store

    conn = await _connect_migrated(settings)
    try:
        name = normalise_domain(args.domain)
        if not await stored_keys(conn, name):
            raise DomainError(
                f"{name} is not a sending domain; add it with `penguinmails domains add`"
            )
        report = await verify_and_store(conn, settings, name)
    except DomainError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        await conn.close()
    print(table(report))
    return 1 if report.failed else 0


async def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    from penguinmails.messages import Draft, InvalidMessage, enqueue, find_tenant

    draft = Draft(
        from_email=args.from_email,
        from_name=args.from_name,
        subject=args.subject,
        recipients=args.to,
        text=args.text,
        html=args.html,
        sandbox=not args.live,
    )
    try:
        draft.validate()  # before touching the database: bad input changes nothing
    except InvalidMessage as exc:
        raise CommandError(f"invalid message: {exc}") from exc
    conn = await _connect_migrated(settings)
    try:
        async with conn.transaction():
            tenant_id = await find_tenant(conn, args.tenant, "live" if args.live else "test")
            if tenant_id is None:
                hint = (
                    "`penguinmails up` makes it"
                    if args.tenant == SANDBOX_TENANT
                    else f"`penguinmails keys create --tenant {args.tenant}` makes it"
                )
                raise CommandError(f"no tenant named {args.tenant!r} ({hint})")
            ids = await enqueue(conn, tenant_id, draft)
    except InvalidMessage as exc:
        raise CommandError(f"invalid message: {exc}") from exc
    finally:
        await conn.close()
    for queue_id in ids:
        print(queue_id)
    return 0


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from penguinmails.status import queue_status

    conn = await _connect_migrated(settings)
    try:
        # The same numbers as the dashboard's system page (penguinmails.status).
        status = await queue_status(conn)
    finally:
        await conn.close()
    sites, held = status.sites, status.held
    totals, depth, oldest = status.totals, status.depth, status.oldest
    reasons, webhooks, paused = status.reasons, status.webhooks, status.paused
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
    if sites:
        print("\nqueue by site (MX set) and provider")
        print(
            _table(
                ["site", "provider", "queued", "deferred", "sending"],
                [
                    [r["site"], r["provider"] or "-", r["queued"], r["deferred"], r["sending"]]
                    for r in sites
                ],
            )
        )
    if held:
        print("\nheld by shaping rules (penguinmails shaping lift KEY ends one early)")
        print(
            _table(
                ["scope", "action", "rule", "until", "reply"],
                [
                    [
                        r["key"],
                        r["action"],
                        r["rule"],
                        f"{r['until']:%Y-%m-%d %H:%M:%S}",
                        r["reply"][:60],
                    ]
                    for r in held
                ],
            )
        )
    if paused:
        print("\npaused (resume through the API: campaigns, identities, /sending/pauses)")
        print(
            _table(
                ["scope", "tenant", "what", "since", "waiting", "reason"],
                [
                    [
                        r["scope"],
                        f"{r['tenant']} ({r['mode']})",
                        r["name"],
                        f"{r['since']:%Y-%m-%d %H:%M:%S}" if r["since"] else "-",
                        r["waiting"],
                        r["reason"][:60],
                    ]
                    for r in paused
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


async def cmd_sequences(settings: Settings, args: argparse.Namespace) -> int:
    from penguinmails.queries import load

    conn = await _connect_migrated(settings)
    try:
        rows = await conn.fetch(
            load("penguinmails", "sql/sequences.sql")["sequences_status"], args.tenant
        )
    finally:
        await conn.close()
    if not rows:
        print("no active sequences" + (f" for tenant {args.tenant!r}" if args.tenant else ""))
        return 0
    print(
        _table(
            [
                "tenant",
                "mode",
                "sequence",
                "name",
                "active",
                "completed",
                "stopped",
                "sent",
                "waiting",
                "replies",
                "a/b",
            ],
            [
                [
                    r["tenant"],
                    r["mode"],
                    r["public_id"],
                    r["name"],
                    r["active"],
                    r["completed"],
                    r["stopped"],
                    r["sent"],
                    r["waiting"],
                    r["replies"],
                    r["ab"],
                ]
                for r in rows
            ],
        )
    )
    return 0


async def cmd_shaping(settings: Settings, args: argparse.Namespace) -> int:
    from penguinmails.queries import load

    conn = await _connect_migrated(settings)
    try:
        lifted = await conn.fetchval(load("mta", "shaping.sql")["lift_suspension"], args.key)
    finally:
        await conn.close()
    if lifted is None:
        raise CommandError(f"nothing holds {args.key!r} (see `penguinmails status`)")
    print(f"lifted {lifted}: every MTA process resumes it within a second")
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


DESCRIPTION = """\
PenguinMails: a self-hosted sending platform for cold and bulk email.

Start with `penguinmails up`: every role in one process, on an embedded database under
./var, delivering only to a local capture sink (nothing leaves the machine). In production
each role runs as its own systemd unit (mta, api, tracker, inbound) on a shared Postgres.
"""

EPILOG = (
    "Every command reads one TOML config (--config, or PENGUINMAILS_CONFIG); any key can be "
    "set in the environment as PENGUINMAILS_<SECTION>__<KEY>. `penguinmails COMMAND --help` "
    "shows a command's options."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="penguinmails",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE", help="the TOML config file (default: $PENGUINMAILS_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, func: Any) -> argparse.ArgumentParser:
        made = sub.add_parser(name, help=text, description=text)
        made.set_defaults(func=func)
        return made

    command("up", "try it locally: every role in one process, mail only to a capture sink", cmd_up)
    mta = command("mta", "run the delivery daemon (sends the queue)", cmd_mta)
    mta.add_argument(
        "--processes",
        type=_processes,
        metavar="N|auto",
        help="worker processes under one supervisor; auto: one per core "
        "(default: [mta] processes, 1)",
    )
    # Set by the supervisor on the workers it starts (its pid): not for people.
    mta.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    command("api", "run the control API (/api/v1)", cmd_api)
    command("tracker", "run the open/click/unsubscribe server and the webhook sender", cmd_tracker)
    command(
        "inbound", "receive bounces, complaints and replies (the bounce domain's SMTP)", cmd_inbound
    )
    command("migrate", "create or upgrade the database schema (safe to run again)", cmd_migrate)
    command(
        "maintain",
        "create the webhook outbox's days ahead and drop those past [retention] (run daily)",
        cmd_maintain,
    )
    command(
        "status", "show the queue: messages by status and domain, deferrals, webhooks", cmd_status
    )

    operators = sub.add_parser(
        "operators",
        help="let a dashboard user see the whole queue (or stop)",
        description="let a dashboard user see the whole installation's queue (or stop)",
    )
    operators.add_argument(
        "action", choices=["grant", "revoke"], help="grant the view, or revoke it"
    )
    operators.add_argument("email", help="the user's login address")
    operators.add_argument("--tenant", required=True, help="the user's tenant")
    operators.add_argument("--test", action="store_true", help="the tenant's test-mode user")
    operators.set_defaults(func=cmd_operators)

    keys = sub.add_parser("keys", help="make API keys", description="make API keys")
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_actions.add_parser(
        "create",
        help="make a secret API key (and the tenant if new); prints it once",
        description="make a secret API key (and the tenant if new); prints it once",
    )
    create.add_argument("--tenant", required=True, help="the tenant (customer account) name")
    create.add_argument(
        "--tier",
        choices=["free", "starter", "professional", "enterprise"],
        default=None,
        help="the tenant's plan tier (default: keep it; free for a new tenant)",
    )
    create.add_argument(
        "--test", action="store_true", help="a test-mode key: its mail only reaches the sink"
    )
    create.set_defaults(func=cmd_keys)

    domains = sub.add_parser(
        "domains", help="sending domains and their DKIM keys", description="sending domains"
    )
    domain_actions = domains.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = domain_actions.add_parser(
        "add",
        help="register a domain: make its DKIM keys, print the DNS records",
        description="register a domain: make its DKIM keys, print the DNS records to publish",
    )
    add.add_argument("domain", help="the domain mail is sent from, e.g. example.com")
    add.add_argument("--tenant", required=True, help="the tenant that sends from it")
    add.add_argument("--selector", default=None, help="the DKIM selector (default: pmYYYYMM)")
    add.add_argument(
        "--algorithm",
        choices=["rsa", "ed25519", "both"],
        default="rsa",
        help="the DKIM key type (default: rsa)",
    )
    add.set_defaults(func=cmd_domains)
    show = domain_actions.add_parser(
        "show",
        help="print a domain's DNS records again",
        description="print a domain's DNS records again",
    )
    show.add_argument("domain", help="a registered sending domain")
    show.set_defaults(func=cmd_domains)
    verify = domain_actions.add_parser(
        "verify",
        help="check the domain's DNS: DKIM, SPF, DMARC, return path, PTR, tracking",
        description="check the domain's DNS (DKIM, SPF, DMARC, return path, reverse DNS of "
        "each source, tracking domain) and print what to fix; exit 1 when a check fails",
    )
    verify.add_argument("domain", help="a registered sending domain")
    verify.set_defaults(func=cmd_domains_verify)

    queue = command("queue", "retry or cancel unfinished messages", cmd_queue)
    queue.add_argument(
        "action", choices=["retry", "purge"], help="retry: due now; purge: cancel them"
    )
    queue.add_argument("--domain", help="only messages to this destination domain")
    queue.add_argument("--campaign", help="only messages of this campaign (campaign_...)")
    queue.add_argument(
        "--status", choices=["queued", "deferred"], help="only these (default: both)"
    )
    queue.add_argument("--yes", action="store_true", help="purge without asking first")

    sequences = command(
        "sequences",
        "show active sequences: enrolments, steps sent and waiting, replies, A/B winners",
        cmd_sequences,
    )
    sequences.add_argument("--tenant", help="only this tenant's (default: every tenant's)")

    shaping = sub.add_parser(
        "shaping",
        help="end a suspension or throttle a shaping rule set",
        description="end a suspension or throttle a shaping rule set, before its time",
    )
    shaping_actions = shaping.add_subparsers(dest="action", required=True, metavar="ACTION")
    lift = shaping_actions.add_parser(
        "lift",
        help="end one now (its scope key, as `status` lists it)",
        description="end one now (its scope key, as `status` lists it)",
    )
    lift.add_argument("key", help="site:..., provider:NAME, tenant:ID or campaign:ID")
    lift.set_defaults(func=cmd_shaping)

    send = command("send", "queue one message and print its queue id", cmd_send)
    send.add_argument("--from", dest="from_email", required=True, help="the sender address")
    send.add_argument("--from-name", default="", help="the sender's display name")
    send.add_argument(
        "--to", action="append", required=True, help="a recipient (repeat for several)"
    )
    send.add_argument("--subject", required=True, help="the subject line")
    send.add_argument("--text", help="the plain-text body")
    send.add_argument("--html", help="the html body")
    send.add_argument(
        "--tenant",
        default=SANDBOX_TENANT,
        help=f"the tenant to send as (default: {SANDBOX_TENANT!r}, the one `up` makes)",
    )
    send.add_argument(
        "--live",
        action="store_true",
        help="send in live mode, to real receivers (default: test mode, to the capture sink)",
    )
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
        if args.command in ROLES:
            _check_data_dir(settings)
        return _run(args.func(settings, args)) or 0
    except ConfigError as exc:  # a file the configuration names (shaping rules) is unusable
        print(f"penguinmails: {exc}", file=sys.stderr)
        return 2
    except (CommandError, PendingMigrations) as exc:
        print(f"penguinmails: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        problem = _listen_problem(settings, exc)
        if problem is None:
            raise
        print(f"penguinmails: {problem}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        # A second stop signal: work in flight was abandoned (leased messages go back to the
        # queue when their lease expires); exit at once, without a traceback.
        print("penguinmails: stopped at once", file=sys.stderr)
        return 130


# Only `up` and `migrate` may start a new embedded database: a role or command run where
# there is none was run in the wrong folder, and would otherwise make a fresh, empty one.
# Commands check when they first connect (after checking their own input); roles at start.
ROLES = ("mta", "api", "tracker", "inbound")


def _check_data_dir(settings: Settings) -> None:
    if settings.database.url:
        return
    pgdata = (settings.paths.data_dir / "postgres").resolve()
    if not pgdata.exists():
        raise CommandError(
            f"no database at {pgdata} (paths.data_dir is {str(settings.paths.data_dir)!r}): "
            "run this in the folder where `penguinmails up` runs, or give --config or "
            "PENGUINMAILS_PATHS__DATA_DIR; `penguinmails migrate` makes a new database"
        )


_BIND_ADDRESS = re.compile(r"\('?([^',]+)'?, (\d+)")


def _listen_problem(settings: Settings, exc: OSError) -> str | None:
    """One line naming the address and the setting it comes from, for a listener that could
    not be opened (a busy port, a privileged one); None for any other OSError."""
    if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return None
    found = _BIND_ADDRESS.search(str(exc))
    port = found.group(2) if found else None
    listeners = {
        "api.listen": settings.api.listen,
        "api.metrics_listen": settings.api.metrics_listen,
        "tracker.listen": settings.tracker.listen,
        "tracker.metrics_listen": settings.tracker.metrics_listen,
        "mta.sandbox_sink": settings.mta.sandbox_sink,
        "mta.metrics_listen": settings.mta.metrics_listen,
        "inbound.listen": settings.inbound.listen,
        "inbound.metrics_listen": settings.inbound.metrics_listen,
    }
    for setting, address in listeners.items():
        if port is not None and address and address.rsplit(":", 1)[-1] == port:
            reason = exc.strerror or str(exc)
            return (
                f"cannot listen on {address} ({setting}): {reason.lower()}; "
                f"free the port or set another in the config "
                f"(PENGUINMAILS_{setting.replace('.', '__').upper()})"
            )
    return None


if __name__ == "__main__":
    sys.exit(main())
