"""Who is calling: API keys, login tokens (JWT) and passwords.

API keys are `<sk|pk>_<live|test>_` + 12 characters of public id + 32 of secret, all
alphanumeric (so the log masker, which stops at the first other character, hides the whole
key). The first 20 characters are the stored prefix: listed, and used to find the row; the
SHA-256 of the whole key is compared in constant time. `sk_` keys may do anything; `pk_` keys
are for browsers and may only make the reads a widget needs (routes declared `publishable`).

Modes: a key belongs to one tenant row, and a tenant row is one mode of an account (the live
row, or its test twin). The principal's mode is the mode of that row, so a test key, or a
token of a user created in test mode, only ever sees and changes test objects, and its mail
only ever reaches the capture sink.

Login tokens are HS256 JWTs under a key derived from the server keys ("jwt"): exactly that
one algorithm is accepted, and `exp`, `iat`, `iss`, `aud`, `sub`, `mode` and `ver` are
required, so `alg: none`, an RS256 token made with some public key (key confusion), a token
without an expiry or for another audience all fail alike with 401. A token acts as a secret
key in its user's mode; `ver` must equal the user's token version, which logout-everywhere,
a password change and deleting the user bump or remove, so each of them ends every token
issued before.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any, Literal

import argon2
import asyncpg
import jwt
from aiohttp import web

from api.errors import unauthorized
from penguinmails.config import Settings
from penguinmails.queries import load
from penguinmails.secrets import derive, server_keys

SQL = load("api")

ALPHABET = string.ascii_letters + string.digits
PUBLIC_ID_LENGTH = 12
SECRET_LENGTH = 32
PREFIX_LENGTH = len("sk_live_") + PUBLIC_ID_LENGTH

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "penguinmails"
JWT_AUDIENCE = "penguinmails-api"
JWT_TTL_SECONDS = 900
LAST_USE_RESOLUTION = 60.0  # seconds: a key's last use is written at most this often
# Whatever a login asks for, a token lives at most this long: a stolen token is short-lived.
JWT_MAX_TTL_SECONDS = 3600

_hasher = argon2.PasswordHasher()  # argon2id, RFC 9106 low-memory profile
# Verified against when the user does not exist, so a login's timing does not say whether
# an address has an account.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

Kind = Literal["sk", "pk"]
Mode = Literal["live", "test"]


@dataclass(frozen=True)
class Principal:
    tenant_id: int  # the tenant row of this mode: every tenant-owned row is scoped by it
    account_id: int  # the account's live row: its plan tier and sending domains
    tier: str
    kind: Kind
    mode: Mode
    key_id: int | None = None
    user_id: int | None = None
    # An OAuth access token's scopes (api.oauth); None for keys and login tokens.
    scopes: frozenset[str] | None = None

    @property
    def publishable(self) -> bool:
        return self.kind == "pk"

    @property
    def sandbox(self) -> bool:
        return self.mode == "test"

    @property
    def livemode(self) -> bool:
        return self.mode == "live"

    @property
    def rate_bucket(self) -> str:
        """Publishable keys count apart, so a public browser key cannot spend the budget of
        the secret keys; each mode's tenant row counts apart already."""
        return "publishable" if self.kind == "pk" else "secret"


# ---------------------------------------------------------------------------------------------
# API keys


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def new_key(kind: Kind, mode: Mode) -> tuple[str, str, bytes]:
    """(full key, stored prefix, stored hash)."""
    key = f"{kind}_{mode}_{_random(PUBLIC_ID_LENGTH)}{_random(SECRET_LENGTH)}"
    return key, key[:PREFIX_LENGTH], hash_key(key)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii", "replace")).digest()


# OAuth tokens (api.oauth): `pmat_<mode>_` access and `pmrt_<mode>_` refresh, + 43 characters.
OAUTH_ACCESS_PREFIX = "pmat_"
OAUTH_REFRESH_PREFIX = "pmrt_"
OAUTH_SQL = load("api", "oauth.sql")
# What no OAuth token may touch whatever its scope: minting keys, users or clients would
# outlive the grant, and billing is the account owner's.
OAUTH_EXCLUDED_TAGS = frozenset({"Keys", "Auth", "OAuth", "Billing"})


def scope_refusal(principal: Principal, method: str, tag: str) -> str | None:
    """Why an OAuth token may not make this call, or None: `read` makes GETs, `write` the
    rest of what a secret key may."""
    if principal.scopes is None:
        return None
    if tag in OAUTH_EXCLUDED_TAGS:
        return "OAuth tokens cannot manage keys, users, OAuth clients or billing"
    if method in ("GET", "HEAD"):
        return None if principal.scopes & {"read", "write"} else "needs the read scope"
    return None if "write" in principal.scopes else "needs the write scope"


async def principal_for_oauth(pool: asyncpg.Pool, token: str) -> Principal:
    row = await pool.fetchrow(OAUTH_SQL["find_access_token"], hash_key(token))
    if row is None:
        raise unauthorized("Invalid access token")
    if not row["live"]:
        raise unauthorized("This access token has been revoked")
    if not row["fresh"]:
        raise unauthorized("This access token has expired; refresh it")
    return Principal(
        tenant_id=row["tenant_id"],
        account_id=row["account_id"],
        tier=row["tier"],
        kind="sk",
        mode=row["mode"],
        key_id=row["grant_id"],
        user_id=row["user_id"],
        scopes=frozenset(row["scope"].split()),
    )


def looks_like_key(token: str) -> bool:
    return token[:3] in ("sk_", "pk_")


def parse_key(token: str) -> tuple[Kind, Mode, str] | None:
    """(kind, mode, prefix) for a well-formed key, else None."""
    kind, _, rest = token.partition("_")
    mode, _, body = rest.partition("_")
    if kind not in ("sk", "pk") or mode not in ("live", "test"):
        return None
    if len(body) != PUBLIC_ID_LENGTH + SECRET_LENGTH or not body.isascii() or not body.isalnum():
        return None
    return kind, mode, token[:PREFIX_LENGTH]  # type: ignore[return-value]


async def principal_for_key(pool: asyncpg.Pool, token: str) -> Principal:
    parsed = parse_key(token)
    if parsed is None:
        raise unauthorized("Malformed API key")
    kind, mode, prefix = parsed
    row = await pool.fetchrow(SQL["find_api_key"], prefix)
    presented = hash_key(token)
    stored = row["secret_hash"] if row is not None else b"\0" * 32
    # compare_digest in every case, so a wrong secret and an unknown prefix take alike long.
    if not hmac.compare_digest(presented, bytes(stored)) or row is None:
        raise unauthorized("Invalid API key")
    if row["revoked_at"] is not None:
        raise unauthorized("This API key has been revoked")
    if row["mode"] != mode or row["kind"] != kind:  # a stored row at odds with its own key
        raise unauthorized("Invalid API key")
    last = row["last_used_at"]
    if last is None or time.time() - last.timestamp() >= LAST_USE_RESOLUTION:
        await pool.execute(SQL["touch_api_key"], row["id"])
    return Principal(
        tenant_id=row["tenant_id"],
        account_id=row["account_id"],
        tier=row["tier"],
        kind=kind,
        mode=mode,
        key_id=row["id"],
    )


# ---------------------------------------------------------------------------------------------
# Passwords

# Each hash is 64 MiB of memory-hard work in a thread. At most this many run at once per
# process, and at most MAX_WAITING_HASHES more wait; past that a login is refused with 503 at
# once, so a flood of logins cannot turn the API into a CPU and memory amplifier.
MAX_CONCURRENT_HASHES = 2
MAX_WAITING_HASHES = 8


class HashBusy(Exception):
    """Too many password hashes running and waiting in this process."""


class PasswordHashing:
    def __init__(
        self, concurrent: int = MAX_CONCURRENT_HASHES, waiting: int = MAX_WAITING_HASHES
    ) -> None:
        self._slots = asyncio.Semaphore(concurrent)
        self._bound = concurrent + waiting
        self._admitted = 0

    async def run(self, work: Any, *args: Any) -> Any:
        if self._admitted >= self._bound:
            raise HashBusy
        self._admitted += 1
        try:
            async with self._slots:
                return await asyncio.to_thread(work, *args)
        finally:
            self._admitted -= 1


_HASHING = PasswordHashing()


def _check(encoded: str | None, password: str) -> bool:
    try:
        return _hasher.verify(encoded or _DUMMY_HASH, password) and encoded is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


async def hash_password(password: str, hashing: PasswordHashing = _HASHING) -> str:
    encoded: str = await hashing.run(_hasher.hash, password)
    return encoded


async def verify_password(
    encoded: str | None, password: str, hashing: PasswordHashing = _HASHING
) -> bool:
    """argon2 verify off the event loop, within the process's hashing cap."""
    ok: bool = await hashing.run(_check, encoded, password)
    return ok


# ---------------------------------------------------------------------------------------------
# Login tokens


class LoginTokens:
    """Issues and verifies login tokens: HS256 JWTs under keys derived for "jwt"."""

    def __init__(self, settings: Settings, ttl: int = JWT_TTL_SECONDS) -> None:
        # The first server key signs; every key verifies, so a server key can be rotated
        # without logging everyone out.
        self.keys = [derive(k, "jwt") for k in server_keys(settings)]
        self.ttl = ttl

    def lifetime(self, requested: int | None) -> int:
        """What a login gets: the default, or what it asked for, never past the server cap."""
        return min(requested or self.ttl, JWT_MAX_TTL_SECONDS)

    def issue(
        self, user_id: int, tenant_id: int, mode: Mode, version: int, ttl: int | None = None
    ) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "tid": tenant_id,
            "mode": mode,
            "ver": version,
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "iat": now,
            "exp": now + self.lifetime(ttl),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self.keys[0], algorithm=JWT_ALGORITHM)

    def verify(self, token: str) -> dict[str, Any]:
        for key in self.keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[JWT_ALGORITHM],
                    audience=JWT_AUDIENCE,
                    issuer=JWT_ISSUER,
                    options={"require": ["exp", "iat", "iss", "aud", "sub", "mode", "ver"]},
                    leeway=5,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise unauthorized(f"Invalid token: {_jwt_reason(exc)}") from None
            return claims
        raise unauthorized("Invalid token: signature verification failed")


def _jwt_reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing the {exc.claim} claim"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    return "malformed"


async def principal_for_token(pool: asyncpg.Pool, signer: LoginTokens, token: str) -> Principal:
    claims = signer.verify(token)
    try:
        user_id = int(claims["sub"])
    except (TypeError, ValueError):
        raise unauthorized("Invalid token: bad subject") from None
    row = await pool.fetchrow(SQL["find_user"], user_id)
    if row is None:  # the user was deleted since the token was issued
        raise unauthorized("Invalid token: unknown user")
    if claims["ver"] != row["token_version"]:
        raise unauthorized("Invalid token: revoked (logged out, or the password changed)")
    if claims["mode"] != row["mode"]:
        raise unauthorized("Invalid token: wrong mode")
    return Principal(
        tenant_id=row["tenant_id"],
        account_id=row["account_id"],
        tier=row["tier"],
        kind="sk",
        mode=row["mode"],
        user_id=user_id,
    )


async def authenticate(request: web.Request, pool: asyncpg.Pool, signer: LoginTokens) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("Authorization: Bearer <API key or token> is required")
    if looks_like_key(token):
        return await principal_for_key(pool, token)
    if token.startswith(OAUTH_ACCESS_PREFIX):
        return await principal_for_oauth(pool, token)
    return await principal_for_token(pool, signer, token)
