"""Sending domains' DNS checks over the API: `GET /api/v1/domains/{domain}`.

The same checks as `penguinmails domains verify` (penguinmails/deliverability.py), run when
asked and stored, so the answer is what DNS says now and the door that refuses live sends
from a failing domain (api.senders) reads the same result. A domain is the account's, shared
by both modes; another account's domain, or one that is not a sending domain, is not found.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from api.errors import not_found
from api.models import Response
from api.routing import API, Call
from penguinmails.deliverability import stored_keys, verify_and_store
from penguinmails.queries import load

SQL = load("api", "domains.sql")


class DomainCheck(Response):
    name: str = Field(
        description='What was checked: "dkim:<selector>", "spf", "dmarc", '
        '"return_path", "ptr:<source>", "tracking", "tracking_tls", '
        '"unsubscribe", "complaints".'
    )
    subject: str = Field(description="The DNS name (or address) looked at.")
    status: Literal["pass", "fail", "warn"]
    found: str = Field(description="The record found.")
    expected: str = Field(description="The record expected.")
    fix: str = Field(description="How to fix it; empty when it passes.")


class DomainVerification(Response):
    domain: str
    status: Literal["pass", "fail", "warn"] = Field(description="The worst of the checks.")
    sending_allowed: bool = Field(
        description="DKIM and DMARC pass: live sends from the domain are accepted (when the "
        "operator requires verified domains)."
    )
    return_path_domain: str
    tracking_domain: str
    checked_at: datetime
    checks: list[DomainCheck]


@API.route(
    "GET",
    "/domains/{domain}",
    summary="Check a sending domain's DNS now: DKIM, SPF, DMARC, return path, PTR, tracking",
    tag="Domains",
    response=DomainVerification,
    errors=(404,),
)
async def get_domain(call: Call[None, None]) -> DomainVerification:
    name = call.request.match_info["domain"].strip().rstrip(".").lower()
    owner = await call.pool.fetchval(SQL["domain_owner"], name)
    if owner != call.principal.account_id or not await stored_keys(call.pool, name):
        raise not_found("Domain")
    report = await verify_and_store(call.pool, call.state.settings, name)
    checked_at = await call.pool.fetchval(SQL["domain_checked_at"], name)
    return DomainVerification(
        domain=name,
        status=report.status,
        sending_allowed=report.sending_allowed,
        return_path_domain=report.return_path,
        tracking_domain=report.tracking,
        checked_at=checked_at,
        checks=[DomainCheck.model_validate(c) for c in report.as_json()],
    )
