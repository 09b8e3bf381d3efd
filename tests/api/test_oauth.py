"""OAuth 2.0 as a third-party app and its user go through it: the documentation's authorize
URL, the consent page, the code exchanged with PKCE, scoped tokens, and the refusals."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest

from api.server import ApiServer
from penguinmails.logs import JsonFormatter, TextFormatter
from tests.helpers import Client, assert_error, campaign_body

PASSWORD = "correct horse battery staple"
EMAIL = "ann@acme.test"
CALLBACK = "http://127.0.0.1:9/callback"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.decode().rstrip("=")


@pytest.fixture
async def user(client: Client) -> Client:
    made = await client.post("/users", json={"email": EMAIL, "password": PASSWORD})
    assert made.status == 201, made.body
    return client


async def register(client: Client, *, public: bool = True, uris: list[str] | None = None) -> Any:
    reply = await client.post(
        "/oauth/clients",
        json={"name": "Zap Helper", "redirect_uris": uris or [CALLBACK], "public": public},
    )
    assert reply.status == 201, reply.body
    return reply.data


class Browser:
    """The user's browser: it follows nothing by itself, so each redirect can be looked at."""

    def __init__(self, http: aiohttp.ClientSession, api: ApiServer) -> None:
        self.http = http
        self.base = api.url

    async def get(self, params: dict[str, str]) -> tuple[int, str, str]:
        async with self.http.get(
            self.base + "/oauth/authorize", params=params, allow_redirects=False
        ) as r:
            return r.status, r.headers.get("Location", ""), await r.text()

    async def consent(
        self, params: dict[str, str], decision: str = "approve", password: str = PASSWORD
    ) -> tuple[int, str, str]:
        form = {**params, "email": EMAIL, "password": password, "decision": decision}
        async with self.http.post(
            self.base + "/oauth/authorize", data=form, allow_redirects=False
        ) as r:
            return r.status, r.headers.get("Location", ""), await r.text()


async def form_post(
    http: aiohttp.ClientSession, url: str, form: dict[str, str], auth: Any = None
) -> tuple[int, dict[str, Any]]:
    headers = {}
    if auth is not None:  # client_secret_basic
        basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    async with http.post(url, data=form, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def authorize(
    browser: Browser, client_id: str, scope: str, challenge: str | None, state: str = "xyz"
) -> str:
    params = {
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": scope,
        "state": state,
    }
    if challenge:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    status, _, page = await browser.get(params)
    assert status == 200, page
    assert "Zap Helper" in page and "<form method=post" in page
    status, location, page = await browser.consent(params)
    assert status == 302, page
    assert location.startswith(CALLBACK + "?")
    got = query(location)
    assert got["state"] == state  # round-tripped
    return got["code"]


async def exchange(
    http: aiohttp.ClientSession,
    api: ApiServer,
    client_id: str,
    code: str,
    verifier: str,
    redirect_uri: str = CALLBACK,
) -> tuple[int, dict[str, Any]]:
    return await form_post(
        http,
        api.url + "/oauth/token",
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
        },
    )


async def test_documented_flow_write_creates_read_only_reads(
    api: ApiServer, http: aiohttp.ClientSession, user: Client, pool: asyncpg.Pool
) -> None:
    app = await register(user)
    assert app["public"] is True and app["client_secret"] is None
    browser = Browser(http, api)
    verifier, challenge = pkce()
    code = await authorize(browser, app["id"], "read write", challenge)
    status, token = await exchange(http, api, app["id"], code, verifier)
    assert status == 200, token
    assert token["token_type"] == "Bearer" and token["scope"] == "read write"
    assert token["access_token"].startswith("pmat_test_")
    assert token["refresh_token"].startswith("pmrt_test_")
    # Hashed at rest: neither half appears in the database.
    stored = await pool.fetch("SELECT access_hash, refresh_hash FROM oauth_tokens")
    assert token["access_token"].encode() not in [bytes(r["access_hash"]) for r in stored]

    writer = user.with_key(token["access_token"])
    made = await writer.post("/campaigns", json=campaign_body())
    assert made.status == 201, made.body
    assert made.data["livemode"] is False  # the user's mode: test
    # Even write cannot mint keys that would outlive the grant.
    assert_error(await writer.post("/api-keys", json={}), 403, "INSUFFICIENT_SCOPE")

    verifier, challenge = pkce()
    code = await authorize(browser, app["id"], "read", challenge)
    status, token = await exchange(http, api, app["id"], code, verifier)
    assert status == 200 and token["scope"] == "read"
    reader = user.with_key(token["access_token"])
    listed = await reader.get("/campaigns")
    assert listed.status == 200 and [c["id"] for c in listed.data["items"]] == [made.data["id"]]
    assert_error(await reader.post("/campaigns", json=campaign_body()), 403, "INSUFFICIENT_SCOPE")
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == 1

    # Both grants show in the key list with their client and scope.
    keys = (await user.get("/api-keys")).data["items"]
    grants = [k for k in keys if k["type"] == "oauth"]
    assert sorted(g["scope"] for g in grants) == ["read", "read write"]
    assert {g["client"] for g in grants} == {app["id"]}
    # Revoking a grant there ends its token at once.
    read_grant = next(g for g in grants if g["scope"] == "read")
    assert (await user.delete(f"/api-keys/{read_grant['id']}")).status == 200
    assert_error(await reader.get("/campaigns"), 401, "UNAUTHORIZED")


async def test_the_documented_authorize_url_works_as_written(
    api: ApiServer, http: aiohttp.ClientSession, user: Client
) -> None:
    """A confidential client: the URL of the documentation, with no PKCE parameters."""
    async with http.get(api.url + "/.well-known/oauth-authorization-server") as r:
        found = await r.json()
    assert found["authorization_endpoint"] == api.url + "/oauth/authorize"
    assert found["code_challenge_methods_supported"] == ["S256"]
    app = await register(user, public=False)
    secret = app["client_secret"]
    assert secret.startswith("pmcs_")
    url = (
        f"{api.url}/oauth/authorize?client_id={app['id']}&redirect_uri={CALLBACK}"
        "&response_type=code&scope=read write"
    )
    async with http.get(url, allow_redirects=False) as r:
        assert r.status == 200
        page = await r.text()
        assert r.headers["X-Frame-Options"] == "DENY"
    assert "Approve" in page
    params = {
        "client_id": app["id"],
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": "read write",
    }
    status, location, _ = await Browser(http, api).consent(params)
    assert status == 302
    code = query(location)["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    status, body = await form_post(http, api.url + "/oauth/token", form)
    assert status == 401 and body["error"] == "invalid_client"  # no secret: refused
    status, body = await form_post(
        http, api.url + "/oauth/token", form, (app["id"], secret)
    )  # the refusal came before the code was looked at: it is still good
    assert status == 200, body
    made = await user.with_key(body["access_token"]).post("/campaigns", json=campaign_body())
    assert made.status == 201


async def test_reused_code_wrong_verifier_and_other_redirect_are_refused(
    api: ApiServer, http: aiohttp.ClientSession, user: Client
) -> None:
    app = await register(user)
    browser = Browser(http, api)

    verifier, challenge = pkce()
    code = await authorize(browser, app["id"], "read write", challenge)
    status, token = await exchange(http, api, app["id"], code, verifier)
    assert status == 200
    status, again = await exchange(http, api, app["id"], code, verifier)
    assert status == 400 and again["error"] == "invalid_grant"
    # The reuse revoked what the first exchange granted (RFC 6749 4.1.2).
    assert_error(await user.with_key(token["access_token"]).get("/campaigns"), 401, "UNAUTHORIZED")

    verifier, challenge = pkce()
    code = await authorize(browser, app["id"], "read", challenge)
    status, body = await exchange(http, api, app["id"], code, pkce()[0])
    assert status == 400 and body["error"] == "invalid_grant"

    verifier, challenge = pkce()
    code = await authorize(browser, app["id"], "read", challenge)
    status, body = await exchange(http, api, app["id"], code, verifier, CALLBACK + "/")
    assert status == 400 and body["error"] == "invalid_grant"

    # At the authorize step a redirect URI not registered byte for byte is never redirected to.
    for other in (CALLBACK + "/", CALLBACK.upper(), "http://evil.test/callback", CALLBACK + "?x=1"):
        status, location, page = await browser.get(
            {
                "client_id": app["id"],
                "redirect_uri": other,
                "response_type": "code",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        assert status == 400 and location == "" and "not valid" in page
    # A public client without PKCE is sent back with invalid_request.
    status, location, _ = await browser.get(
        {"client_id": app["id"], "redirect_uri": CALLBACK, "response_type": "code", "state": "s1"}
    )
    assert status == 302 and query(location)["error"] == "invalid_request"
    assert query(location)["state"] == "s1"
    # plain PKCE is refused too.
    status, location, _ = await browser.get(
        {
            "client_id": app["id"],
            "redirect_uri": CALLBACK,
            "response_type": "code",
            "code_challenge": challenge,
            "code_challenge_method": "plain",
        }
    )
    assert status == 302 and query(location)["error"] == "invalid_request"
    # An unknown client: a page, no redirect.
    status, location, _ = await browser.get(
        {"client_id": "client_" + "0" * 32, "redirect_uri": CALLBACK, "response_type": "code"}
    )
    assert status == 400 and location == ""


async def test_deny_and_a_wrong_password(
    api: ApiServer, http: aiohttp.ClientSession, user: Client, pool: asyncpg.Pool
) -> None:
    app = await register(user)
    _, challenge = pkce()
    params = {
        "client_id": app["id"],
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": "read",
        "state": "st",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    browser = Browser(http, api)
    status, location, page = await browser.consent(params, password="wrong password!")
    assert status == 401 and location == "" and "Invalid email or password" in page
    status, location, _ = await browser.consent(params, decision="deny")
    assert status == 302 and query(location)["error"] == "access_denied"
    assert query(location)["state"] == "st"
    assert await pool.fetchval("SELECT count(*) FROM oauth_codes") == 0


async def test_refresh_rotates_revocation_and_introspection(
    api: ApiServer, http: aiohttp.ClientSession, user: Client
) -> None:
    app = await register(user)
    verifier, challenge = pkce()
    code = await authorize(Browser(http, api), app["id"], "read write", challenge)
    _, first = await exchange(http, api, app["id"], code, verifier)
    refresh = {"grant_type": "refresh_token", "client_id": app["id"]}
    status, second = await form_post(
        http, api.url + "/oauth/token", {**refresh, "refresh_token": first["refresh_token"]}
    )
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == "read write"
    assert_error(await user.with_key(first["access_token"]).get("/campaigns"), 401, "UNAUTHORIZED")
    assert (await user.with_key(second["access_token"]).get("/campaigns")).status == 200

    introspect = api.url + "/oauth/introspect"
    status, info = await form_post(
        http, introspect, {"token": second["access_token"], "client_id": app["id"]}
    )
    assert status == 200 and info["active"] is True and info["scope"] == "read write"
    assert info["client_id"] == app["id"] and info["livemode"] is False
    status, info = await form_post(
        http, introspect, {"token": first["access_token"], "client_id": app["id"]}
    )
    assert info == {"active": False}

    # The spent refresh token presented again: someone has a copy, so the grant ends.
    status, body = await form_post(
        http, api.url + "/oauth/token", {**refresh, "refresh_token": first["refresh_token"]}
    )
    assert status == 400 and body["error"] == "invalid_grant"
    assert_error(await user.with_key(second["access_token"]).get("/campaigns"), 401, "UNAUTHORIZED")

    # RFC 7009: revoking an access token ends it.
    verifier, challenge = pkce()
    code = await authorize(Browser(http, api), app["id"], "read", challenge)
    _, third = await exchange(http, api, app["id"], code, verifier)
    reader = user.with_key(third["access_token"])
    assert (await reader.get("/campaigns")).status == 200
    status, _ = await form_post(
        http, api.url + "/oauth/revoke", {"token": third["access_token"], "client_id": app["id"]}
    )
    assert status == 200
    assert_error(await reader.get("/campaigns"), 401, "UNAUTHORIZED")
    # A revoked client: every token it holds stops.
    status, fourth = await exchange(
        http,
        api,
        app["id"],
        await authorize(Browser(http, api), app["id"], "read", (v := pkce())[1]),
        v[0],
    )
    assert status == 200
    assert (await user.delete(f"/oauth/clients/{app['id']}")).status == 200
    assert_error(await user.with_key(fourth["access_token"]).get("/campaigns"), 401, "UNAUTHORIZED")


async def test_registration_is_validated_and_per_tenant(user: Client, make_key: Any) -> None:
    reply = await user.post(
        "/oauth/clients", json={"name": "x", "redirect_uris": ["http://evil.test/cb"]}
    )
    assert_error(reply, 422, "VALIDATION_ERROR")
    app = await register(user)
    other = user.with_key(await make_key("globex", tier="enterprise", test=True))
    assert (await other.get("/oauth/clients")).data["items"] == []
    assert_error(await other.delete(f"/oauth/clients/{app['id']}"), 404, "NOT_FOUND")
    assert [c["id"] for c in (await user.get("/oauth/clients")).data["items"]] == [app["id"]]


async def test_no_code_token_or_secret_in_any_log(
    api: ApiServer, http: aiohttp.ClientSession, user: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Even at DEBUG, where Authlib logs the tokens it issues: the formatter masks them."""
    caplog.set_level(logging.DEBUG)
    app = await register(user, public=False)
    params = {
        "client_id": app["id"],
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "scope": "read",
    }
    _, location, _ = await Browser(http, api).consent(params)
    code = query(location)["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    _, token = await form_post(
        http, api.url + "/oauth/token", form, (app["id"], app["client_secret"])
    )
    await user.with_key(token["access_token"]).get("/campaigns")
    await user.with_key(token["access_token"] + "x").get("/campaigns")
    secrets_ = (code, token["access_token"], token["refresh_token"], app["client_secret"], PASSWORD)
    assert caplog.records
    for formatter in (JsonFormatter(), TextFormatter()):
        for record in caplog.records:
            written = formatter.format(record)
            for secret in secrets_:
                assert secret not in written, written
