"""The web dashboard at `/dashboard`: server-rendered pages for a logged-in user of a tenant.

Why server-rendered: the pages are Jinja2 templates (autoescaped) rendered by the API process
itself, with one small script of progressive JavaScript and one vendored chart library
(uPlot, MIT, 51 KB, in `static/`); nothing is built at install or release time, so a fresh
clone runs the dashboard with `pip install` alone, and there is no second toolchain to keep.

What the pages show comes from the API's own operations, called in-process (`invoke`): the
same handlers, models, SQL, tier checks and rate limits a key would get, never a second copy
of a query. A page is an API client that happens to live in the same process.

Session: logging in runs the API's login operation (`POST /api/v1/auth/login`, its throttle
on the browser's own address) and keeps the login token in a `__Host-` cookie (Secure,
HttpOnly, SameSite=Strict, Path=/). Each request verifies it exactly as a Bearer token is
verified (`principal_for_token`), so logout-everywhere and a password change end dashboard
sessions too; the session lasts as long as the token (an hour at most).

CSRF: every form carries a token that is an HMAC, under a key derived from the server keys,
of a random `__Host-` cookie of the browser's own; a POST without the pair (or from another
Origin) is refused with 403 before anything runs. Every answer carries a strict
Content-Security-Policy: scripts and styles from this origin only, no inline script, no
framing.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast
from urllib.parse import urlsplit

import jinja2
import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from api import (
    ai,
    analytics,
    campaigns,
    contacts,
    domains,
    identities,
    keys,
    pauses,
    sandbox,
    sequences,
    templates,
    webhooks,
)
from api import (
    billing as billing_api,
)
from api.auth import Principal, principal_for_token
from api.envelope import pydantic_details
from api.errors import ApiError
from api.models import LIVEMODE, MAX_STEPS, WEEKDAYS, ContactCreate, LoginRequest, Token
from api.ratelimit import rate_limited
from api.routing import API, STATE, Call, Handler, Operation
from api.tiers import TIERS, at_least, tier_required
from penguinmails.queries import load
from penguinmails.secrets import derive, server_keys
from penguinmails.status import mta_presence, queue_status, role_health

SQL = load("api")
DASHBOARD_SQL = load("api", "dashboard.sql")
PREFIX = "/dashboard"
SESSION_COOKIE = "__Host-pm_session"
CSRF_COOKIE = "__Host-pm_csrf"
CSRF_FIELD = "csrf_token"
MAX_IMPORT_ROWS = 10_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# The sandbox message view shows the captured html in a sandboxed srcdoc frame, which
# inherits this page's policy: its pixel and images load from the tracker and other hosts,
# as they would in a mail client, and its own styles apply; still no script, anywhere.
MESSAGE_CSP = CSP.replace("img-src 'self' data:", "img-src 'self' data: http: https:").replace(
    "style-src 'self';", "style-src 'self' 'unsafe-inline';"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_STATIC = resources.files("api.dashboard") / "static"
_ASSETS = {
    "dash.css": "text/css",
    "dash.js": "text/javascript",
    "uplot.min.js": "text/javascript",
    "uplot.min.css": "text/css",
}
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("api.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_OPERATIONS: dict[Handler, Operation] = {}

PageHandler = Callable[[web.Request, "Session"], Awaitable[web.StreamResponse]]


@dataclass
class Session:
    principal: Principal
    csrf: str  # the form token for this browser
    operator: bool = False  # may see the installation's queue (migration 0035)


class DashboardError(Exception):
    """Shown on the page as it is (a refused form, a missing object)."""

    def __init__(self, status: int, message: str, fields: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields or []


# ---------------------------------------------------------------------------------------------
# Calling the API's operations in-process


def _operation(handler: Handler) -> Operation:
    if not _OPERATIONS:
        _OPERATIONS.update({op.handler: op for op in API.operations})
    return _OPERATIONS[handler]


async def invoke(
    request: web.Request,
    session: Session,
    handler: Handler,
    *,
    params: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | None = None,
    query: Mapping[str, Any] | None = None,
) -> Any:
    """Run one API operation as the session's user: the route's tier check, the tenant's rate
    limit, the route's models for the body and query, then the handler itself (whose path
    parameters are `params`). An ApiError comes back as a DashboardError to show."""
    op = _operation(handler)
    state = request.app[STATE]
    principal = session.principal
    try:
        if not at_least(principal.tier, op.tier):
            raise tier_required(op.tier, principal.tier, op.summary)
        usage = await state.limiter.hit(
            principal.tenant_id,
            principal.tier,
            bucket=principal.rate_bucket,
            test=principal.sandbox,
        )
        if usage.exceeded:
            raise rate_limited(usage)
        LIVEMODE.set(principal.livemode)
        try:
            body_model = op.body.model_validate(dict(body or {})) if op.body else None
            query_model = op.query.model_validate(dict(query or {})) if op.query else None
        except ValidationError as exc:
            details = pydantic_details(exc)
            raise DashboardError(422, "Please correct the fields below", details) from None
        call_request = cast(web.Request, _AsRouted(request, params or {}))
        return await handler(Call(call_request, state, principal, body_model, query_model))
    except ApiError as exc:
        raise DashboardError(exc.status, exc.message, exc.details) from None


class _AsRouted:
    """This page's request as the operation's handler sees it under its own route: the path
    parameters are the operation's; everything else (the caller's address, headers, app)
    is the page's request."""

    def __init__(self, request: web.Request, params: Mapping[str, str]) -> None:
        self._request = request
        self.match_info = dict(params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    def __getitem__(self, key: Any) -> Any:
        return self._request[key]


def dump(model: BaseModel | None) -> Any:
    """What a template reads: the API's JSON shape (aliases such as `from` included)."""
    return None if model is None else model.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------------------------------------
# Sessions, CSRF, headers


def _csrf_key(request: web.Request) -> bytes:
    return derive(server_keys(request.app[STATE].settings)[0], "dashboard-csrf")


def csrf_token(request: web.Request, nonce: str) -> str:
    return hmac.new(_csrf_key(request), nonce.encode(), hashlib.sha256).hexdigest()


def _nonce(request: web.Request) -> tuple[str, bool]:
    """This browser's CSRF nonce, and whether it is new (to be set as a cookie)."""
    nonce = request.cookies.get(CSRF_COOKIE, "")
    if len(nonce) == 43 and nonce.replace("-", "").replace("_", "").isalnum():
        return nonce, False
    return secrets.token_urlsafe(32), True


async def _check_csrf(request: web.Request, form: Mapping[str, Any]) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        if urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="Cross-origin form refused")
    nonce = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get(CSRF_FIELD, "")
    if (
        not nonce
        or not isinstance(sent, str)
        or not hmac.compare_digest(sent, csrf_token(request, nonce))
    ):
        raise web.HTTPForbidden(text="Missing or invalid CSRF token; reload the page and retry")


def _cookie(response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="Strict"
    )


@web.middleware
async def headers_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """The dashboard's security headers on every answer under /dashboard, refusals and
    redirects included; its refusals stay plain text (not the API's JSON envelope)."""
    if not request.path.startswith(PREFIX):
        response: web.StreamResponse = await handler(request)
        return response
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers.update({"Content-Security-Policy": CSP, **SECURITY_HEADERS})
            raise
        response = web.Response(status=exc.status, text=exc.text or exc.reason)
    response.headers.setdefault("Content-Security-Policy", CSP)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def render(
    request: web.Request,
    name: str,
    session: Session | None,
    status: int = 200,
    csp: str = CSP,
    **context: Any,
) -> web.Response:
    nonce, new = _nonce(request)
    principal = session.principal if session else None
    body = _ENV.get_template(name).render(
        csrf=csrf_token(request, nonce),
        principal=principal,
        operator=session is not None and session.operator,
        test_mode=principal is not None and principal.sandbox,
        path=request.path,
        **context,
    )
    response = web.Response(
        text=body, content_type="text/html", status=status, headers={"Content-Security-Policy": csp}
    )
    if new:
        _cookie(response, CSRF_COOKIE, nonce, None)
    return response


def page(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page for a logged-in user: no session, the login page; a POST, its CSRF token first."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        token = request.cookies.get(SESSION_COOKIE)
        principal = None
        if token:
            state = request.app[STATE]
            try:
                principal = await principal_for_token(state.pool, state.signer, token)
            except ApiError:
                principal = None
        if principal is None:
            if request.method == "GET":
                raise web.HTTPSeeOther(f"{PREFIX}/login")
            raise web.HTTPUnauthorized(text="Log in first")
        if request.method == "POST":
            await _check_csrf(request, await request.post())
        nonce, _ = _nonce(request)
        operator = await request.app[STATE].pool.fetchval(
            DASHBOARD_SQL["user_is_operator"], principal.user_id
        )
        session = Session(principal, csrf_token(request, nonce), bool(operator))
        try:
            return await handler(request, session)
        except DashboardError as exc:
            return render(
                request,
                "error.html",
                session,
                status=exc.status,
                message=exc.message,
                fields=exc.fields,
            )

    return wrapped


# ---------------------------------------------------------------------------------------------
# Login and logout


async def login_page(request: web.Request) -> web.StreamResponse:
    return render(request, "login.html", None, error=None, email="")


async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    await _check_csrf(request, form)
    state = request.app[STATE]
    fields: dict[str, Any] = {
        k: form.get(k) for k in ("email", "password", "tenant") if form.get(k)
    }
    if form.get("mode") in ("live", "test"):
        fields["livemode"] = form.get("mode") == "live"
    email = str(form.get("email", ""))
    try:
        body = LoginRequest.model_validate(fields)
        # The API's own login: its throttle counts this browser's address and account.
        token = await keys.login(Call(request, state, None, body, None))
        assert isinstance(token, Token)
    except ValidationError:
        return render(
            request, "login.html", None, 422, error="Enter an email and a password", email=email
        )
    except ApiError as exc:
        return render(request, "login.html", None, exc.status, error=exc.message, email=email)
    response = web.HTTPSeeOther(PREFIX)
    _cookie(response, SESSION_COOKIE, token.access_token, token.expires_in)
    raise response


async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    response = web.HTTPSeeOther(f"{PREFIX}/login")
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    raise response


# ---------------------------------------------------------------------------------------------
# Pages


async def overview(request: web.Request, session: Session) -> web.StreamResponse:
    listed = await invoke(request, session, campaigns.list_campaigns, query={"limit": 10})
    return render(request, "overview.html", session, campaigns=dump(listed)["items"])


async def campaign_list(request: web.Request, session: Session) -> web.StreamResponse:
    return await _campaigns_page(request, session)


async def _campaigns_page(
    request: web.Request,
    session: Session,
    *,
    status: int = 200,
    form: Mapping[str, Any] | None = None,
    errors: list[str] | None = None,
    analysis: Any = None,
) -> web.StreamResponse:
    listed = await invoke(
        request,
        session,
        campaigns.list_campaigns,
        query={"limit": 50, **_cursor(request)},
    )
    return render(
        request,
        "campaigns.html",
        session,
        status=status,
        page=dump(listed),
        form=dict(form or {}),
        errors=errors or [],
        sequences=await _sequences(request, session),
        templates=await _templates(request, session),
        analysis=analysis,
        analysis_tier=_operation(ai.optimize_content).tier,
        can_analyse=at_least(session.principal.tier, _operation(ai.optimize_content).tier),
    )


async def _templates(request: web.Request, session: Session) -> list[Any]:
    listed = await invoke(request, session, templates.list_templates, query={"limit": 100})
    items: list[Any] = dump(listed)["items"]
    return items


async def _sequences(request: web.Request, session: Session) -> list[Any] | None:
    """The tenant's sequences, or None below the tier that has them (said on the page)."""
    if not at_least(session.principal.tier, _operation(sequences.list_sequences).tier):
        return None
    listed = await invoke(request, session, sequences.list_sequences, query={"limit": 50})
    items: list[Any] = dump(listed)["items"]
    return items


def _cursor(request: web.Request) -> dict[str, str]:
    cursor = request.query.get("cursor")
    return {"cursor": cursor} if cursor else {}


def _recipients(text: str) -> list[dict[str, Any]]:
    """One recipient a line: `email` or `email, First name`."""
    out = []
    for line in text.splitlines():
        email, _, first = line.partition(",")
        if email.strip():
            entry: dict[str, Any] = {"email": email.strip()}
            if first.strip():
                entry["personalization"] = {"first_name": first.strip()}
            out.append(entry)
    return out


async def campaign_create(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    body: dict[str, Any] = {
        "name": str(form.get("name", "")),
        "subject": str(form.get("subject", "")) or None,
        "content": {
            "html": str(form.get("html", "")) or None,
            "text": str(form.get("text", "")) or None,
        },
        "recipients": _recipients(str(form.get("recipients", ""))),
        "settings": {"track_opens": True, "track_clicks": True},
    }
    if form.get("template_id"):
        body["content"] = {"template_id": str(form["template_id"])}
    if form.get("from_email"):
        body["from"] = {"email": str(form["from_email"])}
    try:
        made = await invoke(request, session, campaigns.create_campaign, body=body)
    except DashboardError as exc:
        return await _campaigns_page(
            request,
            session,
            status=exc.status,
            form=form,
            errors=[exc.message, *(f"{f['field']}: {f['message']}" for f in exc.fields)],
        )
    raise web.HTTPSeeOther(f"{PREFIX}/campaigns/{made.id}")


async def campaign_analyse(request: web.Request, session: Session) -> web.StreamResponse:
    """The editor's content through the API's content analysis (POST /ai/optimize-content),
    personalised for the first recipient: the whole page comes back with the findings and the
    suggested changes beside the preview (dash.js swaps that section in without reloading)."""
    form = await request.post()
    recipients = _recipients(str(form.get("recipients", "")))
    body: dict[str, Any] = {
        "content": {
            "subject": str(form.get("subject", "")),
            "html": str(form.get("html", "")) or None,
        },
        "tracking": {"track_opens": True, "track_clicks": True},
    }
    if recipients and recipients[0].get("personalization"):
        body["personalization"] = recipients[0]["personalization"]
    try:
        result = await invoke(request, session, ai.optimize_content, body=body)
    except DashboardError as exc:
        errors = [exc.message, *(f"{f['field']}: {f['message']}" for f in exc.fields)]
        return await _campaigns_page(
            request, session, status=exc.status, form=form, analysis={"errors": errors}
        )
    return await _campaigns_page(request, session, form=form, analysis=dump(result))


async def campaign_detail(request: web.Request, session: Session) -> web.StreamResponse:
    public_id = request.match_info["id"]
    campaign = await invoke(request, session, campaigns.get_campaign, params={"id": public_id})
    stats = await invoke(
        request,
        session,
        analytics.campaign_analytics,
        params={"id": public_id},
        query={"period": "30d"},
    )
    return render(request, "campaign.html", session, campaign=dump(campaign), stats=dump(stats))


async def campaign_series(request: web.Request, session: Session) -> web.StreamResponse:
    """The chart's data, polled by dash.js so the chart follows opens and clicks as they come."""
    stats = await invoke(
        request,
        session,
        analytics.campaign_analytics,
        params={"id": request.match_info["id"]},
        query={"period": "48h", "interval": "hour"},
    )
    data = dump(stats)
    return web.json_response(
        {"series": data["series"] or [], "overview": data["overview"]},
        dumps=lambda v: orjson.dumps(v).decode(),
    )


async def campaign_csv(request: web.Request, session: Session) -> web.StreamResponse:
    public_id = request.match_info["id"]
    stats = await invoke(
        request,
        session,
        analytics.campaign_analytics,
        params={"id": public_id},
        query={"period": "all"},
    )
    out = io.StringIO()
    series = dump(stats)["series"] or []
    names = list(series[0]) if series else ["bucket", "sent", "delivered", "opened", "clicked"]
    writer = csv.DictWriter(out, fieldnames=names)
    writer.writeheader()
    writer.writerows(series)
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{public_id}.csv"'},
    )


_ACTIONS = {
    "send": campaigns.send_campaign,
    "pause": campaigns.pause_campaign,
    "resume": campaigns.resume_campaign,
    "cancel": campaigns.cancel_campaign,
}


async def campaign_action(request: web.Request, session: Session) -> web.StreamResponse:
    public_id = request.match_info["id"]
    action = _ACTIONS.get(request.match_info["action"])
    if action is None:
        raise web.HTTPNotFound()
    body = {}
    form = await request.post()
    send_at = form.get("send_at")
    if action is campaigns.send_campaign and isinstance(send_at, str) and send_at:
        # A datetime-local field has no zone: the page says it is UTC.
        body["send_at"] = f"{send_at}:00+00:00"
    await invoke(request, session, action, params={"id": public_id}, body=body)
    raise web.HTTPSeeOther(f"{PREFIX}/campaigns/{public_id}")


# ---------------------------------------------------------------------------------------------
# Sequences: the form is the whole sequence (steps with their delays, content and variants;
# window; identities; stop rules; the A/B decision), sent to the API's create or update.


def _variant_lines(text: str) -> list[dict[str, Any]]:
    """One variant a line: `name | weight | subject | html`, the parts after the name optional
    (a part left out is the step's own)."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|", 3)]
        if not parts[0]:
            continue
        variant: dict[str, Any] = {"name": parts[0]}
        if len(parts) > 1 and parts[1]:
            variant["weight"] = parts[1]
        if len(parts) > 2 and parts[2]:
            variant["subject"] = parts[2]
        if len(parts) > 3 and parts[3]:
            variant["html"] = parts[3]
        out.append(variant)
    return out


def _sequence_body(form: Any) -> dict[str, Any]:
    """The API's sequence body from the page's form (both create and update take it whole)."""
    steps = []
    for i in range(MAX_STEPS):
        subject = str(form.get(f"step{i}_subject", "")).strip()
        html = str(form.get(f"step{i}_html", ""))
        variants = str(form.get(f"step{i}_variants", ""))
        if not (subject or html.strip() or variants.strip()):
            continue  # the blank step the page offers for adding one
        steps.append(
            {
                "delay": {
                    "days": str(form.get(f"step{i}_days", "")).strip() or 0,
                    "hours": str(form.get(f"step{i}_hours", "")).strip() or 0,
                    "business_days": bool(form.get(f"step{i}_business")),
                },
                "subject": subject or None,
                "content": {"html": html or None},
                "variants": _variant_lines(variants),
            }
        )
    body: dict[str, Any] = {
        "name": str(form.get("name", "")),
        "steps": steps,
        "stop_on": {
            "reply": bool(form.get("stop_reply")),
            "auto_reply": bool(form.get("stop_auto_reply")),
            "click": bool(form.get("stop_click")),
        },
        "settings": {
            "track_opens": bool(form.get("track_opens")),
            "track_clicks": bool(form.get("track_clicks")),
            "identities": [str(i) for i in form.getall("identities", [])],
        },
        "window": None,
        "ab_test": None,
    }
    if form.get("from_email"):
        body["from"] = {"email": str(form["from_email"])}
    start, end = str(form.get("window_start", "")), str(form.get("window_end", ""))
    if start or end:
        body["window"] = {
            "days": [str(d) for d in form.getall("window_days", [])],
            "start": start,
            "end": end,
            "timezone": str(form.get("window_timezone", "")).strip() or "UTC",
        }
    if form.get("winner_by"):
        body["ab_test"] = {
            "winner_by": str(form["winner_by"]),
            "min_sample": str(form.get("min_sample", "")).strip() or 100,
            "wait_hours": str(form.get("wait_hours", "")).strip() or 4,
        }
    return body


def _sequence_form(seq: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stored sequence as the form's fields (a new one: the API's defaults)."""
    if seq is None:
        return {
            "name": "",
            "from_email": "",
            "steps": [],
            "stop_reply": True,
            "stop_auto_reply": False,
            "stop_click": False,
            "track_opens": True,
            "track_clicks": True,
            "identities": [],
            "window_days": list(WEEKDAYS[:5]),
            "window_start": "",
            "window_end": "",
            "window_timezone": "UTC",
            "winner_by": "",
            "min_sample": 100,
            "wait_hours": 4,
        }
    window = seq["window"] or {}
    ab = seq["ab_test"] or {}
    return {
        "name": seq["name"],
        "from_email": seq["from"]["email"],
        "steps": [
            {
                "days": s["delay"]["days"],
                "hours": s["delay"]["hours"],
                "business": s["delay"]["business_days"],
                "subject": s["subject"] or "",
                "html": s["content"]["html"] or "",
                "variants": "\n".join(
                    " | ".join(
                        [v["name"], str(v["weight"]), v["subject"] or "", v["html"] or ""]
                    ).rstrip(" |")
                    for v in s["variants"]
                ),
            }
            for s in seq["steps"]
        ],
        "stop_reply": seq["stop_on"].get("reply", False),
        "stop_auto_reply": seq["stop_on"].get("auto_reply", False),
        "stop_click": seq["stop_on"].get("click", False),
        "track_opens": seq["settings"].get("track_opens", True),
        "track_clicks": seq["settings"].get("track_clicks", True),
        "identities": list(seq["settings"].get("identities") or []),
        "window_days": window.get("days", list(WEEKDAYS[:5])),
        "window_start": (window.get("start") or "")[:5],
        "window_end": (window.get("end") or "")[:5],
        "window_timezone": window.get("timezone", "UTC"),
        "winner_by": ab.get("winner_by", ""),
        "min_sample": ab.get("min_sample", 100),
        "wait_hours": ab.get("wait_hours", 4),
    }


def _posted_form(form: Any) -> dict[str, Any]:
    """What was typed, to show again beside the API's refusal."""
    body = _sequence_body(form)
    values = {k: form.get(k, "") for k in form if not k.startswith("step")}
    values.update(
        {
            "identities": body["settings"]["identities"],
            "window_days": [str(d) for d in form.getall("window_days", [])],
            **{k: bool(form.get(k)) for k in ("stop_reply", "stop_auto_reply", "stop_click")},
            **{k: bool(form.get(k)) for k in ("track_opens", "track_clicks")},
        }
    )
    values["steps"] = [
        {
            "days": form.get(f"step{i}_days", ""),
            "hours": form.get(f"step{i}_hours", ""),
            "business": bool(form.get(f"step{i}_business")),
            "subject": form.get(f"step{i}_subject", ""),
            "html": form.get(f"step{i}_html", ""),
            "variants": form.get(f"step{i}_variants", ""),
        }
        for i in range(MAX_STEPS)
        if any(str(form.get(f"step{i}_{k}", "")).strip() for k in ("subject", "html", "variants"))
    ]
    return {**_sequence_form(None), **values}


async def _sequence_editor(
    request: web.Request,
    session: Session,
    *,
    seq: Mapping[str, Any] | None,
    form: dict[str, Any],
    status: int = 200,
    errors: list[str] | None = None,
) -> web.StreamResponse:
    """The new-sequence page, or a sequence's page with its results, enrolments and editor."""
    idents = dump(await invoke(request, session, identities.list_identities, query={"limit": 100}))
    context: dict[str, Any] = {"stats": None, "enrollments": [], "enroll_status": ""}
    if seq is not None:
        params = {"id": seq["id"]}
        context["stats"] = dump(
            await invoke(request, session, sequences.sequence_analytics, params=params)
        )
        query: dict[str, Any] = {"limit": 50, **_cursor(request)}
        if request.query.get("status"):
            query["status"] = request.query["status"]
            context["enroll_status"] = request.query["status"]
        context["enrollments"] = dump(
            await invoke(request, session, sequences.list_enrollments, params=params, query=query)
        )
    # The stored steps and blank ones to add (one at least, three in all for a new one).
    steps = list(form["steps"])
    while len(steps) < min(MAX_STEPS, max(len(form["steps"]) + 1, 3)):
        steps.append({"days": 0, "hours": 0, "business": False, "subject": "", "html": ""})
    return render(
        request,
        "sequence.html",
        session,
        status=status,
        seq=seq,
        form=form,
        steps=steps,
        weekdays=WEEKDAYS,
        identities=idents["items"],
        errors=errors or [],
        **context,
    )


def _errors(exc: DashboardError) -> list[str]:
    return [exc.message, *(f"{f['field']}: {f['message']}" for f in exc.fields)]


async def sequence_new(request: web.Request, session: Session) -> web.StreamResponse:
    return await _sequence_editor(request, session, seq=None, form=_sequence_form(None))


async def sequence_create(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    body = {k: v for k, v in _sequence_body(form).items() if v is not None}
    try:
        made = await invoke(request, session, sequences.create_sequence, body=body)
    except DashboardError as exc:
        return await _sequence_editor(
            request,
            session,
            seq=None,
            form=_posted_form(form),
            status=exc.status,
            errors=_errors(exc),
        )
    raise web.HTTPSeeOther(f"{PREFIX}/sequences/{made.id}")


async def _get_sequence(request: web.Request, session: Session) -> dict[str, Any]:
    found = await invoke(
        request, session, sequences.get_sequence, params={"id": request.match_info["id"]}
    )
    seq: dict[str, Any] = dump(found)
    return seq


async def sequence_page(request: web.Request, session: Session) -> web.StreamResponse:
    seq = await _get_sequence(request, session)
    return await _sequence_editor(request, session, seq=seq, form=_sequence_form(seq))


async def sequence_update(request: web.Request, session: Session) -> web.StreamResponse:
    seq = await _get_sequence(request, session)
    form = await request.post()
    body = _sequence_body(form)
    if not body.get("from"):
        body.pop("from", None)
    try:
        await invoke(
            request, session, sequences.update_sequence, params={"id": seq["id"]}, body=body
        )
    except DashboardError as exc:
        return await _sequence_editor(
            request,
            session,
            seq=seq,
            form=_posted_form(form),
            status=exc.status,
            errors=_errors(exc),
        )
    raise web.HTTPSeeOther(f"{PREFIX}/sequences/{seq['id']}")


async def sequence_enroll(request: web.Request, session: Session) -> web.StreamResponse:
    """Enrol addresses (one a line) or a tag's contacts through the API's enrolment."""
    seq_id = request.match_info["id"]
    form = await request.post()
    body: dict[str, Any] = {
        "contacts": [
            line.strip() for line in str(form.get("contacts", "")).splitlines() if line.strip()
        ]
    }
    if str(form.get("tag", "")).strip():
        body["tag"] = str(form["tag"]).strip()
    await invoke(request, session, sequences.enroll, params={"id": seq_id}, body=body)
    raise web.HTTPSeeOther(f"{PREFIX}/sequences/{seq_id}#enrollments")


async def sequence_stop(request: web.Request, session: Session) -> web.StreamResponse:
    seq_id = request.match_info["id"]
    await invoke(
        request,
        session,
        sequences.stop_enrollment,
        params={"id": seq_id, "enrollment": request.match_info["enrollment"]},
    )
    raise web.HTTPSeeOther(f"{PREFIX}/sequences/{seq_id}#enrollments")


async def sequence_archive(request: web.Request, session: Session) -> web.StreamResponse:
    seq_id = request.match_info["id"]
    await invoke(request, session, sequences.archive_sequence, params={"id": seq_id})
    raise web.HTTPSeeOther(f"{PREFIX}/sequences/{seq_id}")


async def inbox(request: web.Request, session: Session) -> web.StreamResponse:
    listed = await invoke(
        request, session, sandbox.list_sandbox_messages, query={"limit": 50, **_cursor(request)}
    )
    items = dump(listed)["items"]
    search = request.query.get("q", "").strip().lower()
    if search:
        items = [m for m in items if search in f"{m['subject']} {m['from']} {m['to']}".lower()]
    return render(request, "inbox.html", session, page=dump(listed), items=items, q=search)


async def inbox_message(request: web.Request, session: Session) -> web.StreamResponse:
    message = await invoke(
        request, session, sandbox.get_sandbox_message, params={"id": request.match_info["id"]}
    )
    data = dump(message)
    # Links open in a new tab (the frame may not navigate itself or run anything).
    html = data["html"]
    srcdoc = None if html is None else '<base target="_blank">' + html
    return render(request, "message.html", session, csp=MESSAGE_CSP, message=data, srcdoc=srcdoc)


async def contact_list(request: web.Request, session: Session) -> web.StreamResponse:
    query: dict[str, Any] = {"limit": 50, **_cursor(request)}
    if request.query.get("tag"):
        query["tag"] = request.query["tag"]
    listed = await invoke(request, session, contacts.list_contacts, query=query)
    return render(
        request,
        "contacts.html",
        session,
        page=dump(listed),
        report=None,
        tag=request.query.get("tag", ""),
    )


async def contact_export(request: web.Request, session: Session) -> web.StreamResponse:
    """Every contact (of the tag, if one is given) as CSV, in the import's columns, read page by
    page through the API's list."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["email", "first_name", "last_name", "company", "tags", "custom_fields"])
    query: dict[str, Any] = {"limit": 100}
    if request.query.get("tag"):
        query["tag"] = request.query["tag"]
    while True:
        listed = dump(await invoke(request, session, contacts.list_contacts, query=query))
        for c in listed["items"]:
            writer.writerow(
                [
                    c["email"],
                    c["first_name"] or "",
                    c["last_name"] or "",
                    c["company"] or "",
                    ";".join(c["tags"]),
                    orjson.dumps(c["custom_fields"]).decode() if c["custom_fields"] else "",
                ]
            )
        if not listed["has_more"]:
            break
        query["cursor"] = listed["next_cursor"]
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="contacts.csv"'},
    )


def _import_rows(data: bytes) -> tuple[list[ContactCreate], list[tuple[int, str]]]:
    """The CSV's contacts, and (line, reason) for each row that is not one. Columns: email,
    first_name, last_name, company, tags (separated by ;), any other column a custom field."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], [(0, "the file is not UTF-8")]
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "email" not in reader.fieldnames:
        return [], [(1, "the header row needs an email column")]
    known = {"email", "first_name", "last_name", "company", "tags"}
    good: list[ContactCreate] = []
    bad: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(reader, start=2):
        if number - 1 > MAX_IMPORT_ROWS:
            bad.append((number, f"more than {MAX_IMPORT_ROWS} rows"))
            break
        fields = {
            "email": (row.get("email") or "").strip(),
            "first_name": (row.get("first_name") or "").strip() or None,
            "last_name": (row.get("last_name") or "").strip() or None,
            "company": (row.get("company") or "").strip() or None,
            "tags": [t.strip() for t in (row.get("tags") or "").split(";") if t.strip()],
            "custom_fields": {
                k: v for k, v in row.items() if k and k not in known and v not in (None, "")
            },
        }
        try:
            contact = ContactCreate.model_validate(fields)
        except ValidationError as exc:
            reasons = "; ".join(f"{d['field']}: {d['message']}" for d in pydantic_details(exc))
            bad.append((number, reasons))
            continue
        key = contact.email.lower()
        if key in seen:
            bad.append((number, f"email: the same address as line {seen[key]}"))
            continue
        seen[key] = number
        good.append(contact)
    return good, bad


async def contact_import(request: web.Request, session: Session) -> web.StreamResponse:
    """All or nothing: every row is checked, and only a file with no bad row is imported, in
    one transaction with the API's own insert (a duplicate of a stored contact fails it too)."""
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise DashboardError(422, "Choose a CSV file", [{"field": "file", "message": "required"}])
    data = upload.file.read(MAX_IMPORT_BYTES + 1)
    if len(data) > MAX_IMPORT_BYTES:
        raise DashboardError(413, f"The file is over {MAX_IMPORT_BYTES // (1024 * 1024)} MB")
    good, bad = _import_rows(data)
    imported = 0
    if not bad:
        pool = request.app[STATE].pool
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            for number, contact in enumerate(good, start=2):
                row = await conn.fetchrow(
                    SQL["insert_contact"],
                    session.principal.tenant_id,
                    contact.email,
                    contact.first_name,
                    contact.last_name,
                    contact.company,
                    contact.custom_fields,
                    list(dict.fromkeys(contact.tags)),
                )
                if row is None:
                    bad.append((number, "email: a contact with this address already exists"))
            if bad:
                await transaction.rollback()
            else:
                await transaction.commit()
                imported = len(good)
    listed = await invoke(request, session, contacts.list_contacts, query={"limit": 50})
    report = {"imported": imported, "rows": len(good) + len(bad), "errors": bad}
    return render(
        request,
        "contacts.html",
        session,
        status=422 if bad else 200,
        page=dump(listed),
        report=report,
        tag="",
    )


async def developers(
    request: web.Request, session: Session, created: Any = None, secret: str | None = None
) -> web.StreamResponse:
    api_keys = await invoke(request, session, keys.list_api_keys, query={"limit": 100})
    hooks = await invoke(request, session, webhooks.list_webhooks, query={"limit": 100})
    return render(
        request,
        "developers.html",
        session,
        keys=dump(api_keys)["items"],
        hooks=dump(hooks)["items"],
        created=created,
        secret=secret,
    )


async def developers_page(request: web.Request, session: Session) -> web.StreamResponse:
    return await developers(request, session)


async def key_create(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    made = await invoke(
        request,
        session,
        keys.create_api_key,
        body={"name": str(form.get("name", "")), "type": str(form.get("type", "secret"))},
    )
    return await developers(request, session, created=dump(made))


async def key_revoke(request: web.Request, session: Session) -> web.StreamResponse:
    await invoke(request, session, keys.revoke_api_key, params={"id": request.match_info["id"]})
    raise web.HTTPSeeOther(f"{PREFIX}/developers")


async def webhook_create(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    events = [e.strip() for e in str(form.get("events", "")).split(",") if e.strip()]
    made = await invoke(
        request,
        session,
        webhooks.create_webhook,
        body={"url": str(form.get("url", "")), "events": events or ["email.*"]},
    )
    return await developers(request, session, secret=made.secret)


async def webhook_detail(
    request: web.Request, session: Session, secret: str | None = None, ping: Any = None
) -> web.StreamResponse:
    hook_id = request.match_info["id"]
    hook = await invoke(request, session, webhooks.get_webhook, params={"id": hook_id})
    deliveries = await invoke(
        request,
        session,
        webhooks.list_webhook_deliveries,
        params={"id": hook_id},
        query={"limit": 50},
    )
    return render(
        request,
        "webhook.html",
        session,
        hook=dump(hook),
        deliveries=dump(deliveries)["items"],
        secret=secret,
        ping=ping,
    )


async def webhook_page(request: web.Request, session: Session) -> web.StreamResponse:
    return await webhook_detail(request, session)


async def webhook_rotate(request: web.Request, session: Session) -> web.StreamResponse:
    rotated = await invoke(
        request,
        session,
        webhooks.rotate_webhook_secret,
        params={"id": request.match_info["id"]},
        body={},
    )
    return await webhook_detail(request, session, secret=rotated.secret)


async def webhook_test(request: web.Request, session: Session) -> web.StreamResponse:
    ping = await invoke(
        request, session, webhooks.test_webhook, params={"id": request.match_info["id"]}
    )
    return await webhook_detail(request, session, ping=dump(ping))


async def webhook_retry(request: web.Request, session: Session) -> web.StreamResponse:
    hook_id = request.match_info["id"]
    await invoke(
        request,
        session,
        webhooks.retry_webhook_delivery,
        params={"id": hook_id, "delivery_id": request.match_info["delivery_id"]},
    )
    raise web.HTTPSeeOther(f"{PREFIX}/developers/webhooks/{hook_id}")


async def deliverability(request: web.Request, session: Session) -> web.StreamResponse:
    idents = await invoke(request, session, identities.list_identities, query={"limit": 100})
    paused = await invoke(request, session, pauses.list_pauses)
    suppressed = await invoke(
        request, session, contacts.list_suppressions, query={"limit": 100, **_cursor(request)}
    )
    search = request.query.get("q", "").strip().lower()
    items = [s for s in dump(suppressed)["items"] if search in s["email"].lower()]
    return render(
        request,
        "deliverability.html",
        session,
        identities=dump(idents)["items"],
        pauses=dump(paused),
        suppressions=items,
        q=search,
        rates=await _sending_rates(request, session),
    )


# Gmail's and Yahoo's sender guidelines (2024): keep spam complaints under 0.3%.
PROVIDER_COMPLAINT_LIMIT = 0.003


async def _sending_rates(request: web.Request, session: Session) -> dict[str, Any]:
    """Bounce and complaint rates over the circuit breaker's window, the tenant's and each
    From domain's, beside the limits they are held to: the breaker's (`[mta.breaker]`, which
    pauses sending past them once a sample is large enough) and the mailbox providers'."""
    breaker = request.app[STATE].settings.mta.breaker
    rows = await request.app[STATE].pool.fetch(
        DASHBOARD_SQL["sending_rates"], session.principal.tenant_id, breaker.window_hours
    )
    scopes = []
    for row in rows:
        attempted = row["delivered"] + row["bounced"]
        bounce = row["bounced"] / attempted if attempted else 0.0
        complaint = row["complained"] / max(row["delivered"], 1)
        sample = breaker.broad_min_sample  # a domain's and a tenant's, as the breaker counts
        scopes.append(
            {
                "scope": row["scope"],
                "name": row["name"] or "all sending",
                "attempted": attempted,
                "complained": row["complained"],
                "bounce_rate": bounce,
                "complaint_rate": complaint,
                "bounce_over": bounce > breaker.max_bounce_rate,
                "complaint_over": complaint > breaker.max_complaint_rate,
                "provider_over": complaint > PROVIDER_COMPLAINT_LIMIT,
                "counts": attempted >= sample,
                "sample": sample,
            }
        )
    return {
        "scopes": scopes,
        "window_hours": breaker.window_hours,
        "max_bounce": breaker.max_bounce_rate,
        "max_complaint": breaker.max_complaint_rate,
        "provider_complaint": PROVIDER_COMPLAINT_LIMIT,
        "enabled": breaker.enabled,
    }


async def domain_check(request: web.Request, session: Session) -> web.StreamResponse:
    """One sending domain's DNS checked now (the API's GET /domains/{domain}): each check's
    result with the record found, the record to publish and how to fix it."""
    name = request.query.get("domain", "").strip()
    result = None
    if name:
        result = dump(await invoke(request, session, domains.get_domain, params={"domain": name}))
    return render(request, "domain.html", session, domain=name, result=result)


async def suppression_add(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    await invoke(
        request, session, contacts.add_suppression, body={"email": str(form.get("email", ""))}
    )
    raise web.HTTPSeeOther(f"{PREFIX}/deliverability")


async def suppression_remove(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    await invoke(
        request, session, contacts.delete_suppression, params={"email": str(form.get("email", ""))}
    )
    raise web.HTTPSeeOther(f"{PREFIX}/deliverability")


async def billing(
    request: web.Request, session: Session, *, stripe_url: str | None = None, action: str = ""
) -> web.StreamResponse:
    """The plan and this hour's use of its request budget (api.ratelimit's own count). With
    billing configured (`[billing] secret_key`): a Checkout form per plan and the customer
    portal, each through the billing API's own operation, answered with the Stripe page to go
    to (a link: the pages' CSP keeps forms and redirects on this site)."""
    state = request.app[STATE]
    principal = session.principal
    # This page's own view counts as one request, as any API call would.
    usage = await state.limiter.hit(
        principal.tenant_id, principal.tier, bucket=principal.rate_bucket, test=principal.sandbox
    )
    settings = state.settings.billing
    return render(
        request,
        "billing.html",
        session,
        tier=principal.tier,
        tiers=TIERS,
        usage=usage,
        billing_configured=bool(settings.secret_key),
        plans={name: plan.tier for name, plan in sorted(settings.plans.items())},
        stripe_url=stripe_url,
        action=action,
    )


async def billing_checkout(request: web.Request, session: Session) -> web.StreamResponse:
    form = await request.post()
    done = await invoke(
        request, session, billing_api.create_checkout, body={"plan": str(form.get("plan", ""))}
    )
    return await billing(request, session, stripe_url=done.url, action="checkout")


async def billing_portal(request: web.Request, session: Session) -> web.StreamResponse:
    done = await invoke(request, session, billing_api.create_portal, body={})
    return await billing(request, session, stripe_url=done.url, action="portal")


async def system(request: web.Request, session: Session) -> web.StreamResponse:
    """The installation's queue for operators: what `penguinmails status` prints, from the
    same queries (penguinmails.status), and each role's health. Every tenant's numbers, so
    absent (404) for others."""
    if not session.operator:
        raise web.HTTPNotFound()
    state = request.app[STATE]
    status = await queue_status(state.pool)
    return render(
        request,
        "system.html",
        session,
        queue=status,
        health=await role_health(state.settings),
        presence=await mta_presence(state.pool),
    )


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise web.HTTPNotFound()
    return web.Response(
        body=(_STATIC / name).read_bytes(),
        content_type=_ASSETS[name],
        headers={"Cache-Control": "public, max-age=3600"},
    )


def add_dashboard(app: web.Application) -> None:
    app.middlewares.append(headers_middleware)
    r = app.router
    r.add_get(f"{PREFIX}/static/{{name}}", asset)
    r.add_get(f"{PREFIX}/login", login_page)
    r.add_post(f"{PREFIX}/login", login_submit)
    r.add_post(f"{PREFIX}/logout", page(logout))
    r.add_get(PREFIX, page(overview))
    r.add_get(f"{PREFIX}/campaigns", page(campaign_list))
    r.add_post(f"{PREFIX}/campaigns", page(campaign_create))
    r.add_post(f"{PREFIX}/campaigns/analyse", page(campaign_analyse))
    r.add_get(f"{PREFIX}/campaigns/{{id}}", page(campaign_detail))
    r.add_get(f"{PREFIX}/campaigns/{{id}}/series.json", page(campaign_series))
    r.add_get(f"{PREFIX}/campaigns/{{id}}/export.csv", page(campaign_csv))
    r.add_post(f"{PREFIX}/campaigns/{{id}}/{{action}}", page(campaign_action))
    r.add_get(f"{PREFIX}/sequences/new", page(sequence_new))
    r.add_post(f"{PREFIX}/sequences", page(sequence_create))
    r.add_get(f"{PREFIX}/sequences/{{id}}", page(sequence_page))
    r.add_post(f"{PREFIX}/sequences/{{id}}", page(sequence_update))
    r.add_post(f"{PREFIX}/sequences/{{id}}/enroll", page(sequence_enroll))
    r.add_post(f"{PREFIX}/sequences/{{id}}/archive", page(sequence_archive))
    r.add_post(f"{PREFIX}/sequences/{{id}}/enrollments/{{enrollment}}/stop", page(sequence_stop))
    r.add_get(f"{PREFIX}/inbox", page(inbox))
    r.add_get(f"{PREFIX}/inbox/{{id}}", page(inbox_message))
    r.add_get(f"{PREFIX}/contacts", page(contact_list))
    r.add_post(f"{PREFIX}/contacts/import", page(contact_import))
    r.add_get(f"{PREFIX}/contacts/export.csv", page(contact_export))
    r.add_get(f"{PREFIX}/developers", page(developers_page))
    r.add_post(f"{PREFIX}/developers/keys", page(key_create))
    r.add_post(f"{PREFIX}/developers/keys/{{id}}/revoke", page(key_revoke))
    r.add_post(f"{PREFIX}/developers/webhooks", page(webhook_create))
    r.add_get(f"{PREFIX}/developers/webhooks/{{id}}", page(webhook_page))
    r.add_post(f"{PREFIX}/developers/webhooks/{{id}}/rotate", page(webhook_rotate))
    r.add_post(f"{PREFIX}/developers/webhooks/{{id}}/test", page(webhook_test))
    r.add_post(
        f"{PREFIX}/developers/webhooks/{{id}}/deliveries/{{delivery_id}}/retry",
        page(webhook_retry),
    )
    r.add_get(f"{PREFIX}/deliverability", page(deliverability))
    r.add_get(f"{PREFIX}/deliverability/domain", page(domain_check))
    r.add_post(f"{PREFIX}/deliverability/suppressions", page(suppression_add))
    r.add_post(f"{PREFIX}/deliverability/suppressions/remove", page(suppression_remove))
    r.add_get(f"{PREFIX}/settings/billing", page(billing))
    r.add_post(f"{PREFIX}/settings/billing/checkout", page(billing_checkout))
    r.add_post(f"{PREFIX}/settings/billing/portal", page(billing_portal))
    r.add_get(f"{PREFIX}/system", page(system))
