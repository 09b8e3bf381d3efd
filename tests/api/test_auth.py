"""API keys, login tokens and passwords: every way in, and every way to be refused."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import JWT_AUDIENCE, JWT_ISSUER, PREFIX_LENGTH, LoginTokens, parse_key
from api.server import ApiServer
from penguinmails.config import Settings
from tests.helpers import Client, assert_error, campaign_keys

PASSWORD = "correct horse battery staple"


async def test_cli_key_format(make_key: Callable[..., Awaitable[str]]) -> None:
    live = await make_key("acme")
    test = await make_key("acme", test=True)
    assert live.startswith("sk_live_") and test.startswith("sk_test_")
    assert len(live) == PREFIX_LENGTH + 32 and live[8:].isalnum()
    assert parse_key(live) == ("sk", "live", live[:PREFIX_LENGTH])


async def test_key_stored_only_as_hash(pool: asyncpg.Pool, key: str) -> None:
    rows = await pool.fetch("SELECT * FROM api_keys")
    assert len(rows) == 1
    assert key not in str(dict(rows[0]))
    assert rows[0]["prefix"] == key[:PREFIX_LENGTH]


async def test_keys_create_keeps_or_sets_tier(
    pool: asyncpg.Pool, make_key: Callable[..., Awaitable[str]]
) -> None:
    async def tiers(name: str) -> list[str]:
        # The live row and its test twin: test mode's budget follows the account's tier.
        rows = await pool.fetch("SELECT tier FROM tenants WHERE name = $1 ORDER BY mode", name)
        return [r["tier"] for r in rows]

    await make_key("bigco", tier="enterprise")
    await make_key("bigco")
    assert await tiers("bigco") == ["enterprise", "enterprise"]
    await make_key("bigco", tier="starter", test=True)
    assert await tiers("bigco") == ["starter", "starter"]
    await make_key("newco")
    assert await tiers("newco") == ["free", "free"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer sk_live_short",
        "Bearer sk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Bearer xk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Bearer not.a.jwt",
    ],
)
async def test_refused_credentials(client: Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    reply = await client.get("/campaigns", key=None, headers=headers)
    assert_error(reply, 401, "UNAUTHORIZED")
    assert "X-RateLimit-Limit" not in reply.headers
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_wrong_secret_with_a_real_prefix(client: Client, key: str) -> None:
    forged = key[:PREFIX_LENGTH] + ("A" if key[-1] != "A" else "B") * 32
    assert_error(await client.get("/campaigns", key=forged), 401, "UNAUTHORIZED")


async def test_a_key_s_last_use_is_kept_to_the_minute_and_only_once_it_verifies(
    client: Client, key: str, pool: asyncpg.Pool
) -> None:
    created = (await client.post("/api-keys", json={"name": "ci"})).data
    assert created["last_used_at"] is None

    async def last_used() -> Any:
        listed = (await client.get("/api-keys")).data["items"]
        return next(k for k in listed if k["id"] == created["id"])["last_used_at"]

    assert await last_used() is None
    # A wrong secret with its real prefix is no use of it.
    forged = created["key"][:PREFIX_LENGTH] + "A" * 32
    assert_error(await client.get("/campaigns", key=forged), 401, "UNAUTHORIZED")
    assert await last_used() is None
    other = client.with_key(created["key"])
    assert (await other.get("/campaigns")).status == 200
    first = await last_used()
    assert first is not None
    # Within the minute, more requests write nothing; past it, the next one does.
    assert (await other.get("/campaigns")).status == 200
    assert await last_used() == first
    await pool.execute(
        "UPDATE api_keys SET last_used_at = last_used_at - interval '2 minutes'"
        " WHERE public_id = $1",
        created["id"],
    )
    aged = await last_used()
    assert aged < first
    assert (await other.get("/campaigns")).status == 200
    assert await last_used() > aged


async def test_revoked_key_fails_at_once(client: Client) -> None:
    created = (await client.post("/api-keys", json={"name": "temp"})).data
    assert created["key"].startswith("sk_test_")
    other = client.with_key(created["key"])
    assert (await other.get("/campaigns")).status == 200
    listed = (await client.get("/api-keys")).data["items"]
    assert {k["prefix"] for k in listed} >= {created["prefix"]}
    assert all("key" not in k for k in listed)
    revoked = (await client.delete(f"/api-keys/{created['id']}")).data
    assert revoked["revoked_at"] is not None
    error = assert_error(await other.get("/campaigns"), 401, "UNAUTHORIZED")
    assert "revoked" in error["message"]
    assert_error(await client.delete("/api-keys/999999"), 404, "NOT_FOUND")


async def test_publishable_keys_have_a_browser_widgets_scope(
    client: Client, pool: asyncpg.Pool
) -> None:
    """pk_ keys are public by design: campaign and analytics reads, nothing else."""
    campaign = await client.post(
        "/campaigns",
        json={"name": "N", "subject": "S", "content": {"text": "t"}},
    )
    cid = campaign.data["id"]
    _, public_id = await campaign_keys(pool, cid)
    created = (await client.post("/api-keys", json={"type": "publishable"})).data
    assert created["key"].startswith("pk_test_") and created["type"] == "publishable"
    public = client.with_key(created["key"])
    for path in ("/campaigns", f"/campaigns/{cid}", f"/analytics/campaigns/{public_id}"):
        reply = await public.get(path)
        assert reply.status == 200, (path, reply.body)
        assert "X-RateLimit-Remaining" in reply.headers
    # Personal data, raw mail (with signed unsubscribe tokens), message ids, key prefixes,
    # webhooks and every write: refused, and refused before anything is counted.
    refused = [
        ("GET", "/contacts"),
        ("GET", "/suppressions"),
        ("GET", "/sandbox/messages"),
        ("GET", "/sandbox/messages/1"),
        ("GET", "/messages/1"),
        ("GET", "/api-keys"),
        ("GET", "/users"),
        ("GET", "/webhooks"),
        ("POST", "/contacts"),
        ("POST", f"/campaigns/{cid}/send"),
        ("DELETE", "/suppressions/a@b.test"),
    ]
    for method, path in refused:
        reply = await public.request(method, path, json={"email": "a@b.test"})
        error = assert_error(reply, 403, "FORBIDDEN")
        assert "campaigns and analytics" in error["message"], path
        assert "X-RateLimit-Remaining" not in reply.headers, path


async def test_test_keys_cannot_mint_live_keys(client: Client) -> None:
    assert_error(await client.post("/api-keys", json={"mode": "live"}), 403, "FORBIDDEN")


async def test_rate_limit_headers_on_every_authenticated_response(client: Client) -> None:
    for reply in (
        await client.get("/campaigns"),
        await client.get("/campaigns/12345"),
        await client.post("/contacts", json={"email": "nope"}),
        await client.get("/nothing"),  # unknown routes are not authenticated
    ):
        if reply.status == 404 and reply.error["message"] == "No such resource":
            assert "X-RateLimit-Limit" not in reply.headers
            continue
        # A test key: ten times the enterprise tier's 1,000,000, counted apart from live.
        assert reply.headers["X-RateLimit-Limit"] == "10000000"
        assert int(reply.headers["X-RateLimit-Remaining"]) < 10000000
        assert int(reply.headers["X-RateLimit-Reset"]) > time.time()


# ---------------------------------------------------------------------------------------------
# Login


async def _user(client: Client) -> None:
    reply = await client.post("/users", json={"email": "Ann@Acme.test", "password": PASSWORD})
    assert reply.status == 201, reply.body
    assert reply.data["email"] == "ann@acme.test"


async def test_login_returns_a_working_token(client: Client) -> None:
    await _user(client)
    reply = await client.post(
        "/auth/login", json={"email": "ann@acme.test", "password": PASSWORD}, key=None
    )
    token = reply.data["access_token"]
    assert reply.data["token_type"] == "Bearer" and 0 < reply.data["expires_in"] <= 3600
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert {"exp", "iat", "iss", "aud", "sub", "mode", "ver"} <= set(claims)
    assert claims["mode"] == "test"  # the user was made with a test key
    mine = await client.with_key(token).get("/campaigns")
    assert mine.status == 200 and "X-RateLimit-Limit" in mine.headers


async def test_login_refusals(client: Client) -> None:
    await _user(client)
    for body in (
        {"email": "ann@acme.test", "password": "wrong password!"},
        {"email": "nobody@acme.test", "password": PASSWORD},
    ):
        error = assert_error(
            await client.post("/auth/login", json=body, key=None), 401, "UNAUTHORIZED"
        )
        assert error["message"] == "Invalid email or password"
    assert_error(
        await client.post("/auth/login", json={"email": "x"}, key=None), 422, "VALIDATION_ERROR"
    )
    dup = await client.post("/users", json={"email": "ann@acme.test", "password": PASSWORD})
    assert_error(dup, 409, "CONFLICT")
    short = await client.post("/users", json={"email": "bo@acme.test", "password": "short"})
    assert assert_error(short, 422, "VALIDATION_ERROR")["details"][0]["field"] == "password"


async def test_passwords_are_argon2(client: Client, pool: asyncpg.Pool) -> None:
    await _user(client)
    encoded = await pool.fetchval("SELECT password_hash FROM users")
    assert encoded.startswith("$argon2id$") and PASSWORD not in encoded


def _claims(user_id: int, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "mode": "test",
        "ver": 0,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture
async def user_id(client: Client, pool: asyncpg.Pool) -> int:
    await _user(client)
    value: int = await pool.fetchval("SELECT id FROM users")
    return value


async def test_forged_tokens_are_refused(client: Client, settings: Settings, user_id: int) -> None:
    key = LoginTokens(settings).keys[0]
    good = jwt.encode(_claims(user_id), key, algorithm="HS256")
    assert (await client.with_key(good).get("/campaigns")).status == 200

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    unsigned = jwt.encode(_claims(user_id), None, algorithm="none")
    forged = {
        "alg=none": unsigned,
        "alg=none, signature kept": unsigned + good.rsplit(".", 1)[1],
        "HS256 with a wrong key": jwt.encode(_claims(user_id), b"k" * 32, algorithm="HS256"),
        "missing exp": jwt.encode(_claims(user_id, exp=None), key, algorithm="HS256"),
        "missing aud": jwt.encode(_claims(user_id, aud=None), key, algorithm="HS256"),
        "wrong aud": jwt.encode(_claims(user_id, aud="someone-else"), key, algorithm="HS256"),
        "wrong iss": jwt.encode(_claims(user_id, iss="evil"), key, algorithm="HS256"),
        "expired": jwt.encode(_claims(user_id, exp=int(time.time()) - 60), key, algorithm="HS256"),
        "HS512 with the right key": _quietly(jwt.encode, _claims(user_id), key, "HS512"),
        "RS256": jwt.encode(_claims(user_id), rsa_key, algorithm="RS256"),
        "unknown user": jwt.encode(_claims(user_id + 100), key, algorithm="HS256"),
        "missing mode": jwt.encode(_claims(user_id, mode=None), key, algorithm="HS256"),
        "missing ver": jwt.encode(_claims(user_id, ver=None), key, algorithm="HS256"),
        "live mode for a test user": jwt.encode(
            _claims(user_id, mode="live"), key, algorithm="HS256"
        ),
        "an older token version": jwt.encode(_claims(user_id, ver=-1), key, algorithm="HS256"),
    }
    # Key confusion: an HS256 token whose HMAC key is a public key the server might hold.
    forged["HS256 keyed with a public key"] = _hs256_raw(_claims(user_id), public_pem)
    for name, token in forged.items():
        reply = await client.with_key(token).get("/campaigns")
        assert reply.status == 401, name
        assert reply.error["code"] == "UNAUTHORIZED", name


def _quietly(fn: Callable[..., str], *args: Any) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyjwt warns that 32 bytes is short for HS512
        return fn(*args)


def _hs256_raw(claims: dict[str, Any], secret: bytes) -> str:
    """pyjwt refuses to HMAC with a PEM key (good); build such a token by hand."""
    import base64
    import hashlib
    import hmac

    import orjson

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"})) + "." + b64(orjson.dumps(claims))
    return signing + "." + b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())


async def test_no_key_in_any_log(
    caplog: pytest.LogCaptureFixture,
    start_api: Callable[..., Awaitable[ApiServer]],
    http: Any,
    make_key: Callable[..., Awaitable[str]],
) -> None:
    caplog.set_level(logging.DEBUG)
    key = await make_key("acme")
    server = await start_api()
    client = Client(http, server.url + "/api/v1", key)
    created = (await client.post("/api-keys", json={"name": "second"})).data["key"]
    await client.with_key(created).get("/campaigns")
    await client.delete("/api-keys/2")
    await client.with_key(created).get("/campaigns")  # revoked: 401
    await client.with_key(key[:-1] + "x").get("/campaigns")  # wrong secret: 401
    await client.post("/users", json={"email": "ann@acme.test", "password": PASSWORD})
    await client.post(
        "/auth/login", json={"email": "ann@acme.test", "password": PASSWORD}, key=None
    )
    assert caplog.records, "expected some logging to inspect"
    for record in caplog.records:
        text = record.getMessage() + " " + str(vars(record))
        for secret in (key, created, key[PREFIX_LENGTH:], created[PREFIX_LENGTH:], PASSWORD):
            assert secret not in text, record


async def _every_page(client: Client, path: str, limit: int) -> list[list[dict[str, Any]]]:
    """Follow next_cursor from the first page to the last."""
    pages: list[list[dict[str, Any]]] = []
    params = {"limit": str(limit)}
    while True:
        reply = await client.get(path, params=params)
        assert reply.status == 200, reply.body
        pages.append(reply.data["items"])
        if not reply.data["has_more"]:
            assert reply.data["next_cursor"] is None
            return pages
        params = {"limit": str(limit), "cursor": reply.data["next_cursor"]}


async def test_keys_and_users_are_listed_a_page_at_a_time(
    client: Client, make_key: Callable[..., Awaitable[str]]
) -> None:
    made = [(await client.post("/api-keys", json={"name": f"k{i}"})).data for i in range(4)]
    await make_key("rival", tier="professional", test=True)  # another tenant's: never listed
    pages = await _every_page(client, "/api-keys", 2)
    assert [len(p) for p in pages] == [2, 2, 1]  # the four and the fixture's own key
    listed = [k["id"] for page in pages for k in page]
    assert listed == sorted(listed, reverse=True)  # newest first, nothing twice
    assert sorted(listed[:4]) == sorted(k["id"] for k in made)  # the fixture's key is oldest
    assert [k["name"] for page in pages for k in page][-1] == "cli"

    for email in ("ann@acme.test", "bo@acme.test", "cy@acme.test"):
        reply = await client.post("/users", json={"email": email, "password": PASSWORD})
        assert reply.status == 201, reply.body
    users = await _every_page(client, "/users", 2)
    assert [[u["email"] for u in page] for page in users] == [
        ["cy@acme.test", "bo@acme.test"],
        ["ann@acme.test"],
    ]
    everyone = (await client.get("/users")).data
    assert len(everyone["items"]) == 3 and everyone["has_more"] is False


async def test_list_paging_refuses_bad_input(client: Client) -> None:
    for path in ("/api-keys", "/users"):
        for params, field in (
            ({"limit": "0"}, "limit"),
            ({"limit": "101"}, "limit"),
            ({"cursor": "not a cursor!"}, "cursor"),
        ):
            error = assert_error(await client.get(path, params=params), 422, "VALIDATION_ERROR")
            assert error["details"][0]["field"] == field, (path, params, error)
