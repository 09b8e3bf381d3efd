"""Login as an attacker would try it: guessing, flooding, reusing tokens, probing addresses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest

from api.auth import JWT_MAX_TTL_SECONDS, HashBusy, PasswordHashing
from api.routing import STATE
from api.server import ApiServer
from tests.helpers import Client, assert_error

PASSWORD = "correct horse battery staple"
LOGIN = {"email": "ann@acme.test", "password": PASSWORD}


async def _login(client: Client, **body: Any) -> Any:
    return await client.post("/auth/login", json={**LOGIN, **body}, key=None)


@pytest.fixture
async def user(client: Client) -> Client:
    made = await client.post("/users", json=LOGIN)
    assert made.status == 201, made.body
    return client


async def test_guessing_locks_the_account_with_retry_after(
    user: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api.keys")
    replies = [await _login(user, password=f"guess number {i}") for i in range(12)]
    assert [r.status for r in replies[:10]] == [401] * 10
    assert [r.status for r in replies[10:]] == [429, 429]
    assert 1 <= int(replies[10].headers["Retry-After"]) <= 900
    # Locked: the right password is refused too, until the window ends.
    assert_error(await _login(user), 429, "RATE_LIMITED")
    failures = [r for r in caplog.records if getattr(r, "action", "") == "login_failed"]
    assert len(failures) == 10
    assert failures[0].account == "ann@acme.test"  # type: ignore[attr-defined]
    assert failures[0].network == "127.0.0.0/24"  # type: ignore[attr-defined]
    for record in caplog.records:
        assert "guess number" not in record.getMessage() + str(vars(record))


async def test_one_network_cannot_spray_many_accounts(api: ApiServer, user: Client) -> None:
    api.app[STATE].limiter.logins.network_limit = 5
    statuses = [
        (await _login(user, email=f"user{i}@acme.test", password="wrong!")).status for i in range(7)
    ]
    assert statuses == [401] * 5 + [429, 429]
    assert_error(await _login(user), 429, "RATE_LIMITED")  # a real account, same network


async def test_a_good_login_forgives_the_accounts_failures(user: Client) -> None:
    for _ in range(9):
        assert (await _login(user, password="nope nope")).status == 401
    assert (await _login(user)).status == 200
    for _ in range(9):
        assert (await _login(user, password="nope nope")).status == 401
    assert (await _login(user)).status == 200


async def test_concurrent_hashes_are_capped() -> None:
    hashing = PasswordHashing(concurrent=1, waiting=1)
    gate = asyncio.Event()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow() -> str:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(10)
        return "done"

    first = asyncio.create_task(hashing.run(slow))
    await started.wait()
    second = asyncio.create_task(hashing.run(lambda: "queued"))
    await asyncio.sleep(0)
    with pytest.raises(HashBusy):
        await hashing.run(lambda: "refused")
    gate.set()
    assert await first == "done" and await second == "queued"
    assert await hashing.run(lambda: "again") == "again"  # slots are given back


async def test_a_login_flood_gets_503_not_a_queue_of_hashes(user: Client) -> None:
    replies = await asyncio.gather(
        *(_login(user, email=f"x{i}@acme.test", password="wrong!") for i in range(30))
    )
    statuses = [r.status for r in replies]
    assert set(statuses) <= {401, 503} and statuses.count(503) >= 1, statuses
    busy = next(r for r in replies if r.status == 503)
    assert busy.headers["Retry-After"] == "1"


async def test_token_lifetime_is_capped_whatever_the_request_asks(user: Client) -> None:
    reply = await _login(user, expires_in=10 * 365 * 86400)
    assert reply.data["expires_in"] == JWT_MAX_TTL_SECONDS
    claims = jwt.decode(reply.data["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == JWT_MAX_TTL_SECONDS
    short = await _login(user, expires_in=120)
    assert short.data["expires_in"] == 120


async def test_logout_everywhere_ends_every_token(user: Client) -> None:
    first = user.with_key((await _login(user)).data["access_token"])
    second = user.with_key((await _login(user)).data["access_token"])
    assert (await first.get("/campaigns")).status == 200
    assert (await first.post("/auth/logout")).data == {"logged_out": True}
    for token in (first, second):
        error = assert_error(await token.get("/campaigns"), 401, "UNAUTHORIZED")
        assert "revoked" in error["message"]
    assert (
        await user.with_key((await _login(user)).data["access_token"]).get("/users")
    ).status == 200
    # An API key has no session to end.
    assert_error(await user.post("/auth/logout"), 403, "FORBIDDEN")


async def test_a_password_change_ends_other_tokens(user: Client) -> None:
    old = user.with_key((await _login(user)).data["access_token"])
    wrong = await old.post(
        "/auth/password", json={"current_password": "not it", "new_password": "a" * 12}
    )
    assert assert_error(wrong, 422, "VALIDATION_ERROR")["details"][0]["field"] == (
        "current_password"
    )
    changed = await old.post(
        "/auth/password", json={"current_password": PASSWORD, "new_password": "a brand new one"}
    )
    fresh = user.with_key(changed.data["access_token"])
    assert (await fresh.get("/campaigns")).status == 200
    assert_error(await old.get("/campaigns"), 401, "UNAUTHORIZED")
    assert_error(await _login(user), 401, "UNAUTHORIZED")
    assert (await _login(user, password="a brand new one")).status == 200


async def test_deleting_a_user_ends_their_tokens(user: Client) -> None:
    token = user.with_key((await _login(user)).data["access_token"])
    [listed] = (await user.get("/users")).data["items"]
    assert (await user.delete(f"/users/{listed['id']}")).data["email"] == "ann@acme.test"
    assert_error(await token.get("/campaigns"), 401, "UNAUTHORIZED")
    assert_error(await user.delete(f"/users/{listed['id']}"), 404, "NOT_FOUND")


async def test_an_address_is_unique_per_tenant_not_across_tenants(
    user: Client, make_key: Callable[..., Awaitable[str]]
) -> None:
    other = user.with_key(await make_key("globex", test=True))
    # No 409: it must not learn that acme has this user, nor be kept from the address.
    made = await other.post("/users", json=LOGIN)
    assert made.status == 201
    # Same password in both: the login must say which tenant.
    both = await _login(user)
    assert {d["field"] for d in assert_error(both, 409, "CONFLICT")["details"]} >= {"tenant"}
    token = (await _login(user, tenant="globex")).data["access_token"]
    mine = user.with_key(token)
    assert [u["email"] for u in (await mine.get("/users")).data["items"]] == ["ann@acme.test"]
    assert (await mine.get("/users")).data["items"][0]["id"] == made.data["id"]
