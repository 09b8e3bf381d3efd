"""OAuth 2.0 for third-party apps: client registration, the consent page, and the token,
revocation (RFC 7009) and introspection (RFC 7662) endpoints.

The grant logic is Authlib's (authorization code with PKCE, RFC 7636; refresh tokens), not
ours: this module gives it storage and HTTP. Authlib's hooks are synchronous, so each OAuth
request runs Authlib in a worker thread and its hooks run their queries back on the event
loop (`_db`); the pool and loop reach the thread through a context variable.

- A client is registered by a tenant (`/api/v1/oauth/clients`); a public client (no secret)
  must use PKCE with S256. Redirect URIs match exactly, byte for byte.
- The consent page (`GET /oauth/authorize`) is served by the API itself and logs the user
  in with their PenguinMails email and password (the login's throttle applies); what they
  grant acts in their tenant and mode only.
- Scopes: `read` may make every GET a secret key may; `write` may do what a secret key does,
  except manage keys, users, OAuth clients and billing (`api.auth.scope_refusal`).
- Codes live ten minutes and are spent at their first exchange; a code presented again
  revokes what it granted. Refresh tokens rotate; a spent one presented again revokes the
  grant. Codes, tokens and secrets are stored as SHA-256 digests.
- Each consent is a grant row in the key list (type `oauth`, with its client and scope);
  revoking it there, revoking the client, or deleting the user ends its tokens at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import html
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import asyncpg
import orjson
from aiohttp import web
from authlib.oauth2 import AuthorizationServer, OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Payload, OAuth2Request, grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from pydantic import Field, field_validator

from api.auth import (
    ALPHABET,
    OAUTH_ACCESS_PREFIX,
    OAUTH_REFRESH_PREFIX,
    HashBusy,
    hash_key,
    verify_password,
)
from api.errors import not_found
from api.models import ListQuery, Owned, Page, Request
from api.ratelimit import source_network
from api.routing import API, STATE, Call, decode_cursor, keyset_page
from penguinmails.queries import load

log = logging.getLogger(__name__)
SQL = load("api", "oauth.sql")
API_SQL = load("api")

SCOPES = ("read", "write")
CODE_TTL = 600
ACCESS_TTL = 3600
REFRESH_TTL = 60 * 86400
TOKEN_LENGTH = 43  # alphanumeric: 256 bits


# ---------------------------------------------------------------------------------------------
# Registration: /api/v1/oauth/clients


class OAuthClientCreate(Request):
    name: str = Field(min_length=1, max_length=200, description="Shown on the consent page.")
    redirect_uris: list[str] = Field(
        min_length=1,
        max_length=10,
        description="Exact callback URLs (https, or http on loopback); matched byte for byte.",
    )
    public: bool = Field(
        default=False,
        description="A public client (browser or mobile app) gets no secret and must use "
        "PKCE (S256).",
    )

    @field_validator("redirect_uris")
    @classmethod
    def _callbacks(cls, uris: list[str]) -> list[str]:
        for uri in uris:
            parts = urlsplit(uri)
            loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
            if parts.fragment or not parts.hostname or len(uri) > 2000:
                raise ValueError(f"{uri!r} is not an absolute URL without a fragment")
            if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
                raise ValueError(f"{uri!r} must be https (http only on loopback)")
        return uris


class OAuthClient(Owned):
    id: str = Field(description="The client_id.")
    name: str
    redirect_uris: list[str]
    public: bool
    created_at: datetime
    revoked_at: datetime | None


class OAuthClientCreated(OAuthClient):
    client_secret: str | None = Field(
        description="Shown this once; null for a public client (it uses PKCE instead)."
    )


@API.route(
    "POST",
    "/oauth/clients",
    summary="Register an OAuth client (a third-party app); its secret is shown once",
    tag="OAuth",
    body=OAuthClientCreate,
    response=OAuthClientCreated,
    status=201,
)
async def create_oauth_client(call: Call[OAuthClientCreate, None]) -> OAuthClientCreated:
    body = call.body
    secret = None if body.public else "pmcs_" + _random(TOKEN_LENGTH)
    row = await call.pool.fetchrow(
        SQL["insert_client"],
        call.principal.tenant_id,
        body.name,
        body.redirect_uris,
        None if secret is None else hash_key(secret),
    )
    assert row is not None
    log.info(
        "oauth client registered",
        extra={"action": "oauth_client_create", "tenant": call.principal.tenant_id},
    )
    return OAuthClientCreated(**dict(row), client_secret=secret)


@API.route(
    "GET",
    "/oauth/clients",
    summary="List this tenant's OAuth clients, newest first",
    tag="OAuth",
    query=ListQuery,
    response=Page[OAuthClient],
)
async def list_oauth_clients(call: Call[None, ListQuery]) -> Page[OAuthClient]:
    query = call.query
    after = decode_cursor(query.cursor, numeric=False)
    rows = await call.pool.fetch(
        SQL["list_clients"], call.principal.tenant_id, after, query.limit + 1
    )
    return keyset_page(Page[OAuthClient], rows, query.limit, lambda r: OAuthClient(**dict(r)))


@API.route(
    "DELETE",
    "/oauth/clients/{id}",
    summary="Revoke an OAuth client: no new consent, and every token it holds stops",
    tag="OAuth",
    response=OAuthClient,
    errors=(404,),
)
async def revoke_oauth_client(call: Call[None, None]) -> OAuthClient:
    client_id = call.path_id("client", "OAuth client")
    row = await call.pool.fetchrow(SQL["revoke_client"], call.principal.tenant_id, client_id)
    if row is None:
        raise not_found("OAuth client")
    return OAuthClient(**dict(row))


# ---------------------------------------------------------------------------------------------
# Authlib's storage, run in a worker thread


_BRIDGE: contextvars.ContextVar[tuple[asyncio.AbstractEventLoop, asyncpg.Pool]] = (
    contextvars.ContextVar("oauth_bridge")
)
T = TypeVar("T")


def _db(make: Any, *args: Any) -> Any:
    """From Authlib's thread: run `make(pool, *args)` on the event loop and wait for it."""
    loop, pool = _BRIDGE.get()
    coro: Coroutine[Any, Any, Any] = make(pool, *args)
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _fetchrow(query: str) -> Any:
    async def run(pool: asyncpg.Pool, *args: Any) -> asyncpg.Record | None:
        return await pool.fetchrow(SQL[query], *args)

    return run


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _digest(value: str) -> bytes:
    return hash_key(value)


@dataclass
class Client(ClientMixin):
    pk: int
    client_id: str
    name: str
    tenant_name: str
    redirect_uris: list[str]
    secret_hash: bytes | None

    @property
    def public(self) -> bool:
        return self.secret_hash is None

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # redirect_uri is always required, and must match exactly

    def get_allowed_scope(self, scope: str | None) -> str:
        asked = (scope or "read").split()
        return " ".join(s for s in SCOPES if s in asked)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return hmac.compare_digest(_digest(client_secret), self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class Consenter:
    """The user who approved, or whose grant a refresh continues."""

    id: int
    tenant_id: int
    mode: Literal["live", "test"]

    def get_user_id(self) -> int:
        return self.id


@dataclass
class Code:
    code_hash: bytes
    user_id: int
    redirect_uri: str
    scope: str
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class Refresh:
    grant_id: int
    scope: str
    user_id: int
    client_id: str

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope


@dataclass
class StoredToken:
    row: dict[str, Any]

    def check_client(self, client: Client) -> bool:
        return bool(self.row["client_id"] == client.client_id)

    def get_scope(self) -> str:
        return str(self.row["scope"])

    def is_expired(self) -> bool:
        ends = self.row["refresh_expires_at" if self.row["is_refresh"] else "access_expires_at"]
        return ends is None or ends <= datetime.now(ends.tzinfo)

    def is_revoked(self) -> bool:
        return bool(self.row["revoked"])


def _user(user_id: int) -> Consenter | None:
    row = _db(_fetchrow("consent_user"), user_id)
    return None if row is None else Consenter(row["id"], row["tenant_id"], row["mode"])


class S256Only(CodeChallenge):
    # plain PKCE protects nothing against an attacker who sees the authorize URL
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def generate_authorization_code(self) -> str:
        # Prefixed, so the log masker (penguinmails.logs) knows it for a secret.
        return "pmac_" + _random(TOKEN_LENGTH)

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        _db(
            _fetchrow("insert_code"),
            _digest(code),
            request.client.pk,
            request.user.id,
            request.payload.redirect_uri,
            request.scope,
            data.get("code_challenge"),
            data.get("code_challenge_method") or ("S256" if data.get("code_challenge") else None),
            CODE_TTL,
        )

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        digest = _digest(code)
        row = _db(_fetchrow("claim_code"), digest, client.pk)
        if row is None:
            _db(_fetchrow("revoke_reused_code_grant"), digest)
            log.warning(
                "oauth code refused (unknown, expired or reused)",
                extra={"action": "oauth_code_refused", "client": client.client_id},
            )
            return None
        return Code(digest, **dict(row))

    def delete_authorization_code(self, authorization_code: Code) -> None:
        pass  # spent when it was claimed, so a second exchange finds it used

    def authenticate_user(self, authorization_code: Code) -> Consenter | None:
        return _user(authorization_code.user_id)


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token: str) -> Refresh | None:
        digest = _digest(refresh_token)
        client = self.request.client
        row = _db(_fetchrow("claim_refresh_token"), digest, client.client_id)
        if row is None:
            _db(_fetchrow("revoke_grant_of_refresh"), digest)
            return None
        return Refresh(row["grant_id"], row["scope"], row["user_id"], client.client_id)

    def authenticate_user(self, refresh_token: Refresh) -> Consenter | None:
        return _user(refresh_token.user_id)

    def revoke_old_credential(self, refresh_token: Refresh) -> None:
        pass  # spent when it was claimed


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> StoredToken | None:
        row = _db(_fetchrow("find_token"), _digest(token_string))
        return None if row is None else StoredToken(dict(row))

    def revoke_token(self, token: StoredToken, request: OAuth2Request) -> None:
        # A refresh token revoked ends the grant; an access token, its own pair (RFC 7009 2.1)
        if token.row["is_refresh"]:
            _db(_fetchrow("revoke_grant"), token.row["grant_id"])
        else:
            _db(_fetchrow("revoke_token"), token.row["id"])


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> StoredToken | None:
        row = _db(_fetchrow("find_token"), _digest(token_string))
        return None if row is None else StoredToken(dict(row))

    def check_permission(self, token: StoredToken, client: Client, request: Any) -> bool:
        return token.check_client(client)  # a client may look at its own tokens only

    def introspect_token(self, token: StoredToken) -> dict[str, Any]:
        row = token.row
        ends = row["refresh_expires_at" if row["is_refresh"] else "access_expires_at"]
        return {
            "active": True,
            "scope": row["scope"],
            "client_id": row["client_id"],
            "token_type": "refresh_token" if row["is_refresh"] else "access_token",
            "sub": row["user_id"],
            "livemode": row["mode"] == "live",
            "exp": int(ends.timestamp()),
            "iat": int(row["issued_at"].timestamp()),
        }


class Payload(OAuth2Payload):
    def __init__(self, values: Any) -> None:
        self._values = values

    @property
    def data(self) -> dict[str, str]:
        return {k: self._values[k] for k in self._values}

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {k: list(self._values.getall(k)) for k in self._values}


class AioRequest(OAuth2Request):
    """An aiohttp request whose query and form were read beforehand (Authlib is synchronous)."""

    def __init__(self, request: web.Request, args: Any, form: Any) -> None:
        url = request.url
        if request.headers.get("X-Forwarded-Proto") == "https":  # TLS ended at a proxy
            url = url.with_scheme("https")
        super().__init__(request.method, str(url), headers=request.headers)
        self._args = args
        self._form = form
        self.payload = Payload(form if request.method == "POST" else args)

    @property
    def args(self) -> Any:
        return self._args

    @property
    def form(self) -> Any:
        return self._form


class Server(AuthorizationServer):
    def __init__(self) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.register_grant(CodeGrant, [S256Only(required=True)])
        self.register_grant(RefreshGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=self._access,
                refresh_token_generator=self._refresh,
                expires_generator=lambda client, grant_type: ACCESS_TTL,
            ),
        )

    @staticmethod
    def _access(client: Client, grant_type: str, user: Consenter, scope: str) -> str:
        return f"{OAUTH_ACCESS_PREFIX}{user.mode}_{_random(TOKEN_LENGTH)}"

    @staticmethod
    def _refresh(client: Client, grant_type: str, user: Consenter, scope: str) -> str:
        return f"{OAUTH_REFRESH_PREFIX}{user.mode}_{_random(TOKEN_LENGTH)}"

    def query_client(self, client_id: str) -> Client | None:
        if not isinstance(client_id, str) or len(client_id) > 64:
            return None
        row = _db(_fetchrow("find_client"), client_id)
        if row is None:
            return None
        secret = row["secret_hash"]
        return Client(
            row["id"],
            row["public_id"],
            row["name"],
            row["tenant_name"],
            list(row["redirect_uris"]),
            None if secret is None else bytes(secret),
        )

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        user: Consenter = request.user
        if request.refresh_token is not None:
            grant_id = request.refresh_token.grant_id
        else:
            code: Code = request.authorization_code
            row = _db(
                _fetchrow("insert_grant"),
                user.id,
                request.client.pk,
                "oauth_" + _random(14),
                token["scope"],
            )
            grant_id = row["id"]
            _db(_fetchrow("link_code_grant"), code.code_hash, grant_id)
        refresh = token.get("refresh_token")
        _db(
            _fetchrow("insert_token"),
            grant_id,
            _digest(token["access_token"]),
            None if refresh is None else _digest(refresh),
            token["scope"],
            ACCESS_TTL,
            REFRESH_TTL,
        )
        log.info(
            "oauth token issued",
            extra={"action": "oauth_token", "client": request.client.client_id, "user": user.id},
        )

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return request  # always an AioRequest built by the handler

    def handle_response(self, status: int, body: Any, headers: Any) -> web.Response:
        response = web.Response(
            status=status,
            body=orjson.dumps(body) if isinstance(body, dict) else body or b"",
        )
        for name, value in headers:
            response.headers[name] = value
        response.headers["Cache-Control"] = "no-store"
        return response

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


SERVER = web.AppKey("oauth_server", Server)


async def _in_thread(request: web.Request, work: Any, *args: Any) -> Any:
    _BRIDGE.set((asyncio.get_running_loop(), request.app[STATE].pool))
    return await asyncio.to_thread(work, *args)


# ---------------------------------------------------------------------------------------------
# The consent page


_PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    # Never framed, so no page can overlay the Approve button (clickjacking); no script at all.
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
_PASSED_ON = (
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
)
_SCOPE_TEXT = {
    "read": "read your campaigns, contacts, messages and analytics",
    "write": "create and change campaigns, contacts and templates, and send email",
}


def _page(status: int, title: str, body: str) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em}"
        "label{display:block;margin:.6em 0}input{width:100%;padding:.3em}"
        "button{margin:.8em .5em 0 0;padding:.4em 1.2em}.error{color:#a00}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(status=status, text=text, headers=_PAGE_HEADERS)


def _consent_page(client: Client, params: Any, scope: str, error: str = "") -> web.Response:
    hidden = "".join(
        f'<input type=hidden name="{k}" value="{html.escape(params[k])}">'
        for k in _PASSED_ON
        if k in params
    )
    scopes = "".join(f"<li>{html.escape(_SCOPE_TEXT[s])}</li>" for s in scope.split())
    problem = f"<p class=error role=alert>{html.escape(error)}</p>" if error else ""
    body = (
        f"<p><strong>{html.escape(client.name)}</strong> (registered by "
        f"{html.escape(client.tenant_name)}) asks to:</p><ul>{scopes}</ul>"
        f"<p>It will be sent back to <code>{html.escape(params['redirect_uri'])}</code>.</p>"
        f"{problem}<form method=post action=/oauth/authorize>{hidden}"
        "<label>Email <input name=email type=email autocomplete=username required></label>"
        "<label>Password <input name=password type=password autocomplete=current-password "
        "required></label>"
        "<label>Account (only if this address has several) <input name=tenant></label>"
        "<button name=decision value=approve>Approve</button>"
        "<button name=decision value=deny formnovalidate>Deny</button></form>"
    )
    return _page(401 if error else 200, "Authorize access to PenguinMails", body)


def _refusal(server: Server, request: AioRequest, error: OAuth2Error) -> web.Response:
    """An error the client can be told (it has a verified redirect URI) goes back to it;
    any other (unknown client, unregistered redirect URI) is shown here and never redirected,
    so the endpoint is no open redirector."""
    if getattr(error, "redirect_uri", None):
        response: web.Response = server.handle_error_response(request, error)
        return response
    return _page(
        400,
        "This authorization request is not valid",
        html.escape(error.get_error_description() or error.error),
    )


def _pkce_refusal(grant: Any) -> OAuth2Error | None:
    data = grant.request.payload.data
    challenge, method = data.get("code_challenge"), data.get("code_challenge_method")
    if challenge and method != "S256":
        return InvalidRequestError(
            "code_challenge_method must be S256",
            redirect_uri=grant.redirect_uri,
            state=data.get("state"),
        )
    if grant.client.public and not challenge:
        return InvalidRequestError(
            "A public client must use PKCE (code_challenge with S256)",
            redirect_uri=grant.redirect_uri,
            state=data.get("state"),
        )
    return None


async def authorize_page(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    oauth_request = AioRequest(request, request.query, {})
    try:
        grant = await _in_thread(request, server.get_consent_grant, oauth_request)
    except OAuth2Error as error:
        return _refusal(server, oauth_request, error)
    refused = _pkce_refusal(grant)
    if refused is not None:
        return _refusal(server, oauth_request, refused)
    return _consent_page(grant.client, request.query, grant.request.scope)


async def authorize_decision(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    state = request.app[STATE]
    form = await request.post()
    oauth_request = AioRequest(request, request.query, form)
    try:
        grant = await _in_thread(request, server.get_consent_grant, oauth_request)
    except OAuth2Error as error:
        return _refusal(server, oauth_request, error)
    refused = _pkce_refusal(grant)
    if refused is not None:
        return _refusal(server, oauth_request, refused)
    user = None
    if form.get("decision") == "approve":
        email, password = str(form.get("email", "")), str(form.get("password", ""))
        tenant = str(form.get("tenant", "")) or None
        throttle = state.limiter.logins
        network = source_network(request.remote)
        await throttle.check(email, network)
        rows = await state.pool.fetch(API_SQL["login_candidates"], email, tenant, None)
        try:
            if not rows:
                await verify_password(None, password)
            matches = [r for r in rows if await verify_password(r["password_hash"], password)]
        except HashBusy:
            return _page(503, "Busy", "Too many logins are being checked; retry in a second.")
        if not matches:
            await throttle.failed(email, network)
            log.warning(
                "oauth consent login failed",
                extra={"action": "login_failed", "account": email.lower(), "network": network},
            )
            return _consent_page(
                grant.client, form, grant.request.scope, "Invalid email or password"
            )
        if len(matches) > 1:
            return _consent_page(
                grant.client,
                form,
                grant.request.scope,
                "This address opens several accounts: name the account",
            )
        await throttle.succeeded(email)
        row = matches[0]
        user = Consenter(row["id"], row["tenant_id"], row["mode"])
    response: web.Response = await _in_thread(
        request, server.create_authorization_response, oauth_request, user, grant
    )
    return response


async def _endpoint(request: web.Request, run: Any) -> web.StreamResponse:
    server = request.app[SERVER]
    form = await request.post()
    oauth_request = AioRequest(request, request.query, form)
    response: web.Response = await _in_thread(request, run, server, oauth_request)
    return response


async def token(request: web.Request) -> web.StreamResponse:
    return await _endpoint(request, Server.create_token_response)


async def revoke(request: web.Request) -> web.StreamResponse:
    return await _endpoint(
        request, lambda s, r: s.create_endpoint_response(Revocation.ENDPOINT_NAME, r)
    )


async def introspect(request: web.Request) -> web.StreamResponse:
    return await _endpoint(
        request, lambda s, r: s.create_endpoint_response(Introspection.ENDPOINT_NAME, r)
    )


async def metadata(request: web.Request) -> web.StreamResponse:
    """RFC 8414: where a client library finds the endpoints and what they support."""
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme)
    base = f"{scheme}://{request.host}"
    methods = ["client_secret_basic", "client_secret_post", "none"]
    return web.json_response(
        {
            "issuer": base,
            "authorization_endpoint": f"{base}/oauth/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "introspection_endpoint": f"{base}/oauth/introspect",
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": methods,
            "revocation_endpoint_auth_methods_supported": methods,
            "introspection_endpoint_auth_methods_supported": methods,
        },
        headers={"Access-Control-Allow-Origin": "*"},
    )


def add_routes(app: web.Application) -> None:
    """Outside /api/v1: the documentation's authorize URL is /oauth/authorize, a browser's."""
    app[SERVER] = Server()
    app.router.add_get("/oauth/authorize", authorize_page)
    app.router.add_post("/oauth/authorize", authorize_decision)
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/oauth/revoke", revoke)
    app.router.add_post("/oauth/introspect", introspect)
    app.router.add_get("/.well-known/oauth-authorization-server", metadata)
