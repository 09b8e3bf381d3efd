"""The `penguinmails` command: operator commands against a real database (status, queue
retry and purge, send), and the CLI as a new user meets it: help that explains, mistakes that
are named, no surprises (no tenant made by a typo, no database made in the wrong folder)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from penguinmails.cli import build_parser
from tests.helpers import queue_messages
from tests.helpers import run_cli as _cli


async def _defer(pool, ids, reply: str) -> None:
    await pool.execute(
        """UPDATE messages SET status = 'deferred', attempts = 2, last_reply_code = 451,
                  last_reply = $2, next_attempt_at = now() + interval '1 hour'
           WHERE id = ANY($1::bigint[])""",
        ids,
        reply,
    )


async def test_status_shows_depth_oldest_deferral_and_reasons(pool, database_url, tmp_path):
    ids = await queue_messages(pool, ["a@slow.test", "b@slow.test", "c@fast.test"])
    await _defer(pool, ids[:2], "4.7.0 greylisted, try again later")

    code, out, err = await _cli(database_url, tmp_path, "status")

    assert code == 0, err
    assert "deferred  slow.test" in out
    assert "queued    fast.test" in out
    assert f"oldest deferred: message {ids[0]} to slow.test" in out
    assert "451   4.7.0 greylisted, try again later  2" in out
    assert "webhook backlog: 0 deliveries" in out


async def test_status_shows_sites_providers_and_what_shaping_holds_which_lift_ends(
    pool, database_url, tmp_path
):
    await queue_messages(pool, ["a@acme.test", "b@globex.test", "c@plain.test"])
    google = "site:alt1.aspmx.l.google.com,aspmx.l.google.com"
    for domain in ("acme.test", "globex.test"):
        await pool.execute(
            "INSERT INTO domain_sites (domain, site, provider) VALUES ($1, $2, 'google')",
            domain,
            google,
        )
    await pool.execute(
        "INSERT INTO shaping_suspensions (key, action, until, rule, reply)"
        " VALUES ('provider:google', 'suspend', now() + interval '1 hour', 'google-blocked',"
        " '550 5.7.1 likely unsolicited mail')"
    )

    code, out, err = await _cli(database_url, tmp_path, "status")
    assert code == 0, err
    assert f"{google}  google    2" in out
    assert "domain:plain.test" in out
    assert "provider:google  suspend  google-blocked" in out

    code, out, err = await _cli(database_url, tmp_path, "shaping", "lift", "provider:google")
    assert code == 0 and "lifted provider:google" in out, err
    assert await pool.fetchval("SELECT count(*) FROM shaping_suspensions") == 0
    code, _, err = await _cli(database_url, tmp_path, "shaping", "lift", "provider:google")
    assert code == 1 and "nothing holds 'provider:google'" in err


async def test_status_shows_what_is_paused_and_why(pool, database_url, tmp_path):
    await queue_messages(pool, ["y@dest.test"])  # makes tenant acme
    tenant = await pool.fetchval("SELECT id FROM tenants WHERE name = 'acme' AND mode = 'live'")
    await pool.execute(
        "INSERT INTO identities (tenant_id, email, status, paused_reason, paused_at)"
        " VALUES ($1, 'ann@acme.test', 'paused', 'bounce rate 20.00% over 20 messages"
        " (limit 10.00%)', now())",
        tenant,
    )
    await pool.execute(
        "INSERT INTO sending_holds (tenant_id, scope, key, reason)"
        " VALUES ($1, 'domain', 'acme.test', 'complaint rate 0.500% over 1000 messages')",
        tenant,
    )
    await queue_messages(pool, ["x@dest.test"])

    code, out, err = await _cli(database_url, tmp_path, "status")

    assert code == 0, err
    assert "identity  acme (live)  ann@acme.test" in out
    assert "bounce rate 20.00% over 20 messages" in out
    # The hold covers the message queued from its domain: the trigger paused it.
    assert "domain    acme (live)  acme.test" in out
    assert (
        await pool.fetchval("SELECT held_reason FROM messages WHERE recipient = 'x@dest.test'")
        == "sending paused"
    )


async def test_queue_retry_makes_only_the_matching_messages_due(pool, database_url, tmp_path):
    ids = await queue_messages(pool, ["a@slow.test", "b@other.test"])
    await _defer(pool, ids, "4.4.1 timeout")

    code, out, _ = await _cli(database_url, tmp_path, "queue", "retry", "--domain", "slow.test")

    assert code == 0
    assert "1 message(s)" in out
    due = await pool.fetch("SELECT recipient FROM messages WHERE next_attempt_at <= now()")
    assert [r["recipient"] for r in due] == ["a@slow.test"]


async def test_purge_asks_for_confirmation_and_changes_nothing_without_it(
    pool, database_url, tmp_path
):
    await queue_messages(pool, ["a@slow.test", "b@slow.test"])

    code, _, err = await _cli(database_url, tmp_path, "queue", "purge", "--domain", "slow.test")

    assert code == 1
    assert "re-run with --yes" in err
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'queued'") == 2


async def test_purge_with_yes_cancels_with_an_event_each(pool, database_url, tmp_path):
    await queue_messages(pool, ["a@slow.test", "b@slow.test", "c@keep.test"])

    code, out, err = await _cli(
        database_url, tmp_path, "queue", "purge", "--domain", "slow.test", "--yes"
    )

    assert code == 0, err
    assert "cancelled 2 message(s)" in out
    rows = await pool.fetch("SELECT recipient, status FROM messages ORDER BY id")
    assert [(r["recipient"], r["status"]) for r in rows] == [
        ("a@slow.test", "cancelled"),
        ("b@slow.test", "cancelled"),
        ("c@keep.test", "queued"),
    ]
    events = await pool.fetchval("SELECT count(*) FROM events WHERE type = 'email.cancelled'")
    assert events == 2


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


def test_every_command_and_option_has_a_one_line_help() -> None:
    top = build_parser()
    assert "penguinmails up" in (top.description or "")
    for parser in _parsers(top):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{parser.prog} {choice.dest}: no help"
            else:
                assert action.help, f"{parser.prog} {action.option_strings or action.dest}"


def test_outside_the_project_folder_nothing_is_created(tmp_path: Path) -> None:
    # No database URL and no ./var here: run as a user would, in the wrong folder.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PENGUINMAILS_")}
    for args in (("status",), ("mta",), ("keys", "create", "--tenant", "acme")):
        result = subprocess.run(
            [sys.executable, "-m", "penguinmails.cli", *args],
            cwd=tmp_path,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1, result.stderr
        assert "no database at" in result.stderr and "paths.data_dir" in result.stderr
        assert str((tmp_path / "var" / "postgres").resolve()) in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()


async def test_send_names_an_unknown_tenant_and_creates_none(database_url, pool, tmp_path):
    message = ("send", "--from", "a@acme.test", "--to", "b@dest.test", "--subject", "S")
    code, _, err = await _cli(
        database_url, tmp_path, *message, "--text", "t", "--tenant", "nosuch", "--live"
    )
    assert code == 1
    assert "no tenant named 'nosuch'" in err and "keys create" in err
    code, _, err = await _cli(database_url, tmp_path, *message, "--text", "t")  # no `up` here
    assert code == 1 and "`penguinmails up` makes it" in err
    assert await pool.fetchval("SELECT count(*) FROM tenants") == 0
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_busy_port_is_one_line_naming_its_setting(database_url, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await _cli(
            database_url, tmp_path, "api", PENGUINMAILS_API__LISTEN=f"127.0.0.1:{port}"
        )
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"penguinmails: cannot listen on 127.0.0.1:{port} (api.listen)")
    assert "PENGUINMAILS_API__LISTEN" in line and "Traceback" not in err


async def test_mta_refuses_to_start_on_unusable_shaping_rules(database_url, tmp_path):
    rules = tmp_path / "shaping.toml"
    rules.write_text('[[automation]]\nname = "x"\nprovider = "nobody"\naction = "suspend"\n')
    for path, named in ((rules, "unknown providers"), (tmp_path / "missing.toml", "missing")):
        code, _, err = await _cli(
            database_url, tmp_path, "mta", PENGUINMAILS_MTA__SHAPING_FILE=str(path)
        )
        assert code == 2 and named in err and "Traceback" not in err, err
