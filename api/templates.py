"""Templates: stored content that a send or campaign names by `content.template_id`.

A template has a name, an optional subject, and html and/or text written in the template
language of penguinmails.template. Its id is the caller's (`welcome_template`, as the
product documentation writes it) or a generated `tpl_...`, unique per tenant and mode. Every
change to its content is a new version; all versions are kept, and a send uses the current
one (`resolve_content`, which the send and campaign routes call).

Contents are checked at save time with the rules a message's content is checked with
(penguinmails.messages.Draft), so a broken template is a 422 naming the field when it is
written, not when the first campaign uses it.

CSS: when a template's html is used for a message, its `<style>` rules are inlined into
`style` attributes (many mail clients drop `<style>`), and at-rules such as `@media` stay in
a `<style>` block, where the clients that keep it still apply them.
"""

from __future__ import annotations

import html as html_escaping
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import css_inline

from api.drafts import PLACEHOLDER_SENDER, new_draft
from api.errors import ApiError, not_found, validation_error
from api.models import (
    Content,
    Deleted,
    ListQuery,
    Page,
    RenderedTemplate,
    Template,
    TemplateCreate,
    TemplateRender,
    TemplateUpdate,
    TemplateVersion,
)
from api.routing import API, Call, decode_cursor, encode_cursor, keyset_page
from penguinmails import template
from penguinmails.html_text import derived_text
from penguinmails.messages import Draft, InvalidMessage
from penguinmails.queries import load

SQL = load("api", "templates.sql")

_TEMPLATE_ID = re.compile(r"^[a-z0-9_-]{1,64}$")
_MAX_VERSION = 2**31 - 1  # the column is an integer
PREVIEW_EMAIL = "recipient@example.com"
_CONTENT = ("subject", "html", "text")


# -- CSS inlining ----------------------------------------------------------------------------

# Stylesheets are never loaded, remote or local: a `<link href="/etc/...">` in a tenant's html
# must neither read the server's files nor make it fetch a URL. Link tags stay as written
# (inlining moves only what <style> says), and at-rules (@media, @font-face, @import) stay
# in a <style> block, since no style attribute can hold them.
_INLINER = css_inline.CSSInliner(
    keep_at_rules=True, keep_link_tags=True, load_remote_stylesheets=False
)
_STYLE_TAG = re.compile(r"<style\b", re.IGNORECASE)
# Inlining costs about (selectors x elements), and the inliner holds the GIL, so the API's
# event loop waits for it. Unbounded, one crafted 1 MB template (80,000 `*{}` rules over
# 70,000 elements) would stall it for minutes; at this bound it is well under a second.
# Real mail stays far below: a heavy newsletter has some 300 selectors over 3,000 tags.
MAX_INLINE_WORK = 10_000_000


class CssError(ValueError):
    """Html whose style sheet cannot be inlined (or would take too long to)."""


# The scans below are linear in the html: a regular expression looking for the end of each
# `<style` or `{{` would rescan the rest of a 1 MB body for every one that has none.


def inline_work(source: str) -> int:
    """An upper bound on the selector-element pairs inlining `source` would match: rules
    and commas in what a parser takes for style sheets (from `<style...>` up to `</style`,
    or to the end when unclosed), times the tags."""
    lowered = source.lower()
    selectors = 0
    pos = 0
    while (start := lowered.find("<style", pos)) >= 0:
        body = lowered.find(">", start)
        if body < 0:
            break
        close = lowered.find("</style", body)
        block = lowered[body : close if close >= 0 else len(lowered)]
        selectors += block.count("{") + block.count(",")
        if close < 0:
            break
        pos = close + len("</style")
    return selectors * source.count("<")


def _hide_expressions(source: str, marker: str) -> tuple[str, list[str]]:
    """`source` with each template expression (`{{`, then up to the first `}}`, as
    penguinmails.template reads one) replaced by `marker<n>x`, and the expressions."""
    out: list[str] = []
    expressions: list[str] = []
    pos = 0
    while (start := source.find("{{", pos)) >= 0:
        end = source.find("}}", start + 2)
        if end < 0:
            break
        out.append(source[pos:start])
        out.append(f"{marker}{len(expressions)}x")
        expressions.append(source[start : end + 2])
        pos = end + 2
    out.append(source[pos:])
    return "".join(out), expressions


def inline_css(source: str) -> str:
    """`source` with its <style> rules moved into style attributes; itself when it has none.

    The inliner parses and re-serializes the whole document, which would escape the quotes
    and `&` of an expression such as `{{x | default: "a & b"}}` in an attribute and so change
    what it renders. Expressions are therefore hidden behind markers (plain lowercase words,
    which the HTML parser and CSS keep as they are) and put back byte for byte afterwards.
    Spintax (`{Hi|Hello}`) is text to the parser and passes through unchanged.
    Raises CssError when the inliner refuses the document or it is past MAX_INLINE_WORK.
    """
    if not _STYLE_TAG.search(source):
        return source
    work = inline_work(source)
    if work > MAX_INLINE_WORK:
        raise CssError(
            f"its style sheet is too large to inline ({work:,} selector-element pairs, "
            f"at most {MAX_INLINE_WORK:,}): fewer rules or fewer elements"
        )
    marker = _marker(source)
    hidden, expressions = _hide_expressions(source, marker)
    try:
        inlined = _INLINER.inline(hidden)
    except css_inline.InlineError as exc:
        raise CssError(f"its CSS cannot be inlined: {exc}") from None
    return re.sub(rf"{marker}(\d+)x", lambda m: expressions[int(m.group(1))], inlined)


def _marker(source: str) -> str:
    while True:
        marker = f"pmexpr{secrets.token_hex(6)}x"
        if marker not in source:
            return marker


# -- What sends use ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedContent:
    """The content a message is queued with, and the template version it came from."""

    subject: str | None
    html: str | None
    text: str | None
    template_id: str | None = None
    template_version: int | None = None


async def resolve_content(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant_id: int,
    *,
    template_id: str | None,
    subject: str | None,
    html: str | None,
    text: str | None,
) -> ResolvedContent:
    """The request's content with its template filled in.

    Without a template id the inputs come back unchanged (inline content is not inlined:
    the caller sent exactly what it wants sent). With one, the request's own subject, html
    and text win part by part, the template's current version fills the parts it left out,
    and the final html has its CSS inlined. An unknown id is a 422 on `content.template_id`;
    no subject from either is a 422 on `subject`.
    """
    if template_id is None:
        return ResolvedContent(subject, html, text)
    row = (
        await conn.fetchrow(SQL["get_template"], tenant_id, template_id)
        if _TEMPLATE_ID.match(template_id)
        else None
    )
    if row is None:
        raise validation_error(
            [
                {
                    "field": "content.template_id",
                    "message": f"no template {template_id!r}; "
                    "create it with POST /api/v1/templates",
                }
            ]
        )
    subject = subject if subject is not None else row["subject"]
    if subject is None:
        raise validation_error(
            [
                {
                    "field": "subject",
                    "message": f"required: template {template_id!r} has no subject either",
                }
            ]
        )
    html = _inlined(html if html is not None else row["html"], "content.html")
    text = text if text is not None else row["text"]
    return ResolvedContent(subject, html, text, row["id"], row["version"])


async def content_of(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant_id: int,
    content: Content,
    subject: str | None,
) -> ResolvedContent:
    """A request's `content` (and subject) with its template filled in; a subject is
    required of one or the other."""
    resolved = await resolve_content(
        conn,
        tenant_id,
        template_id=content.template_id,
        subject=subject,
        html=content.html,
        text=content.text,
    )
    if resolved.subject is None:
        raise validation_error([{"field": "subject", "message": "Field required"}])
    return resolved


def _inlined(html: str | None, field: str) -> str | None:
    if html is None:
        return None
    try:
        return inline_css(html)
    except CssError as exc:
        raise validation_error([{"field": field, "message": str(exc)}]) from None


# -- Checks --------------------------------------------------------------------------------------


def check_content(subject: str | None, html: str | None, text: str | None) -> None:
    """A 422 naming the field for content a message could not be sent with.

    Variables need no values here (a template is meant to have them); everything else a
    send refuses is refused: a bad template expression, a line break in the subject, control
    characters in the html, and html whose CSS cannot be inlined.
    """
    if html is None and text is None:
        raise validation_error([{"field": "html", "message": "html or text is required"}])
    draft = new_draft(
        from_email=None,
        from_name="",
        subject=subject or "",
        html=html,
        text=text,
        headers={},
        settings={},
    )
    try:
        draft.validate()
    except InvalidMessage as exc:
        raise validation_error([{"field": exc.field, "message": exc.message}]) from None
    inlined = _inlined(html, "html")
    if inlined is not None:
        try:
            template.compile(inlined)
        except template.TemplateError as exc:
            raise validation_error(
                [{"field": "html", "message": f"once its CSS is inlined: {exc}"}]
            ) from None


def _template_id(call: Call[Any, Any]) -> str:
    raw = call.request.match_info["id"]
    if not _TEMPLATE_ID.match(raw):
        raise not_found("Template")
    return raw


def _version(call: Call[Any, Any]) -> int:
    raw = call.request.match_info["version"]
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_VERSION:
        raise not_found("Template version")
    return int(raw)


def _taken(template_id: str) -> ApiError:
    return ApiError(
        409,
        "CONFLICT",
        f"A template with id {template_id} already exists",
        [{"field": "id", "message": "already exists"}],
    )


# -- Routes --------------------------------------------------------------------------------------


@API.route(
    "POST",
    "/templates",
    summary="Create a template (version 1)",
    tag="Templates",
    body=TemplateCreate,
    response=Template,
    status=201,
    errors=(409,),
)
async def create_template(call: Call[TemplateCreate, None]) -> Template:
    body = call.body
    check_content(body.subject, body.html, body.text)
    row = await call.pool.fetchrow(
        SQL["insert_template"],
        call.principal.tenant_id,
        body.id,
        body.name,
        body.description,
        body.subject,
        body.html,
        body.text,
    )
    if row is None:
        assert body.id is not None  # a generated id has 80 random bits
        raise _taken(body.id)
    return Template(**dict(row))


@API.route(
    "GET",
    "/templates",
    summary="List templates, newest first",
    tag="Templates",
    query=ListQuery,
    response=Page[Template],
)
async def list_templates(call: Call[None, ListQuery]) -> Page[Template]:
    query = call.query
    after_time, after_id = _decode_position(query.cursor)
    rows = await call.pool.fetch(
        SQL["list_templates"], call.principal.tenant_id, after_time, after_id, query.limit + 1
    )
    return keyset_page(
        Page[Template],
        rows,
        query.limit,
        lambda r: Template(**dict(r)),
        lambda _row, item: _encode_position(item),
    )


def _encode_position(last: Template) -> str:
    return encode_cursor(f"{last.created_at.isoformat()}|{last.id}")


def _decode_position(cursor: str | None) -> tuple[datetime | None, str | None]:
    """(created_at, id) of the last template of the previous page, or (None, None)."""
    if cursor is None:
        return None, None
    when, _, template_id = decode_cursor(cursor, numeric=False).partition("|")
    try:
        at = datetime.fromisoformat(when)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None or not _TEMPLATE_ID.match(template_id):
        raise validation_error([{"field": "cursor", "message": "invalid cursor"}])
    return at, template_id


@API.route(
    "GET",
    "/templates/{id}",
    summary="Get a template and its current content",
    tag="Templates",
    response=Template,
    errors=(404,),
)
async def get_template(call: Call[None, None]) -> Template:
    row = await call.pool.fetchrow(
        SQL["get_template"], call.principal.tenant_id, _template_id(call)
    )
    if row is None:
        raise not_found("Template")
    return Template(**dict(row))


@API.route(
    "PATCH",
    "/templates/{id}",
    summary="Change a template (only the fields given; new content makes a new version)",
    tag="Templates",
    body=TemplateUpdate,
    response=Template,
    errors=(404,),
)
async def update_template(call: Call[TemplateUpdate, None]) -> Template:
    body = call.body
    template_id = _template_id(call)
    given = body.model_fields_set
    if "name" in given and body.name is None:
        raise validation_error([{"field": "name", "message": "must not be null"}])
    tenant = call.principal.tenant_id
    async with call.pool.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(SQL["lock_template"], tenant, template_id)
        if current is None:
            raise not_found("Template")
        merged = dict(current)
        for name in given:
            merged[name] = getattr(body, name)
        version = current["version"]
        # Only a change of content is a new version: renaming, or sending the same content
        # again, leaves the version a send would use as it was.
        if any(merged[part] != current[part] for part in _CONTENT):
            check_content(merged["subject"], merged["html"], merged["text"])
            version += 1
            await conn.execute(
                SQL["insert_template_version"],
                current["id"],
                version,
                merged["subject"],
                merged["html"],
                merged["text"],
            )
        await conn.execute(
            SQL["update_template"], current["id"], merged["name"], merged["description"], version
        )
        row = await conn.fetchrow(SQL["get_template"], tenant, template_id)
    assert row is not None
    return Template(**dict(row))


@API.route(
    "DELETE",
    "/templates/{id}",
    summary="Delete a template and its versions",
    tag="Templates",
    response=Deleted,
    errors=(404,),
)
async def delete_template(call: Call[None, None]) -> Deleted:
    found = await call.pool.fetchval(
        SQL["delete_template"], call.principal.tenant_id, _template_id(call)
    )
    if found is None:
        raise not_found("Template")
    return Deleted(id=found)


@API.route(
    "GET",
    "/templates/{id}/versions",
    summary="List a template's versions, newest first",
    tag="Templates",
    query=ListQuery,
    response=Page[TemplateVersion],
    errors=(404,),
)
async def list_template_versions(call: Call[None, ListQuery]) -> Page[TemplateVersion]:
    template_id = _template_id(call)
    query = call.query
    found = await call.pool.fetchrow(SQL["find_template"], call.principal.tenant_id, template_id)
    if found is None:
        raise not_found("Template")
    before = decode_cursor(query.cursor)
    if before is not None and before > _MAX_VERSION:
        raise validation_error([{"field": "cursor", "message": "invalid cursor"}])
    rows = await call.pool.fetch(
        SQL["list_template_versions"], found["id"], before, query.limit + 1
    )
    return keyset_page(
        Page[TemplateVersion],
        rows,
        query.limit,
        lambda r: TemplateVersion(template_id=template_id, **dict(r)),
        lambda _row, item: encode_cursor(item.version),
    )


@API.route(
    "GET",
    "/templates/{id}/versions/{version}",
    summary="Get one version of a template",
    tag="Templates",
    response=TemplateVersion,
    errors=(404,),
)
async def get_template_version(call: Call[None, None]) -> TemplateVersion:
    template_id = _template_id(call)
    row = await call.pool.fetchrow(
        SQL["get_template_version"], call.principal.tenant_id, template_id, _version(call)
    )
    if row is None:
        raise not_found("Template version")
    return TemplateVersion(template_id=template_id, **dict(row))


@API.route(
    "POST",
    "/templates/{id}/render",
    summary="Preview a template for one recipient, as a message would carry it",
    tag="Templates",
    body=TemplateRender,
    body_optional=True,
    response=RenderedTemplate,
    errors=(404,),
)
async def render_template(call: Call[TemplateRender, None]) -> RenderedTemplate:
    """What a message sent from the current version carries, short of what only a queued
    message has: no tracking links or pixel, and a preview link for {{unsubscribe_url}}."""
    template_id = _template_id(call)
    row = await call.pool.fetchrow(SQL["get_template"], call.principal.tenant_id, template_id)
    if row is None:
        raise not_found("Template")
    source = _inlined(row["html"], "html")
    email = call.body.email or PREVIEW_EMAIL
    personalization = call.body.personalization
    # The checks a send makes: a value for every variable without a default, and none that
    # smuggles a line break into the subject.
    draft = Draft(
        from_email=PLACEHOLDER_SENDER,
        subject=row["subject"] or "",
        recipients=[email],
        text=row["text"],
        html=source,
        personalization=[personalization],
    )
    try:
        draft.validate()
    except InvalidMessage as exc:
        raise validation_error(
            [{"field": _render_field(exc.field), "message": exc.message}]
        ) from None
    # As mta.compose fills them: the recipient's address, and an unsubscribe link.
    values = {
        **personalization,
        "email": email,
        "unsubscribe_url": f"{call.state.settings.tracker.base_url.rstrip('/')}/u/preview",
    }
    # A message's id picks its spintax options; a preview is seeded by what it shows and for
    # whom, so asking again shows the same words.
    seed = f"preview:{template_id}:{row['version']}:{email}"
    try:
        subject = (
            template.compile(row["subject"]).render(values, seed=seed)
            if row["subject"] is not None
            else None
        )
        page = (
            template.compile(source).render(values, seed=seed, escape=html_escaping.escape)
            if source is not None
            else None
        )
        text = (
            template.compile(row["text"]).render(values, seed=seed)
            if row["text"] is not None
            else None
        )
    except template.TemplateError as exc:
        raise validation_error([{"field": "personalization", "message": str(exc)}]) from None
    if text is None and source is not None and page is not None:
        text = derived_text(source, page, values, seed)  # as the MTA writes an html-only one
    return RenderedTemplate(
        template_id=template_id, version=row["version"], subject=subject, html=page, text=text
    )


def _render_field(name: str) -> str:
    if name.startswith("personalization[0]"):
        return "personalization" + name[len("personalization[0]") :]
    if name.startswith("recipients[0]"):
        return "email"
    return name
