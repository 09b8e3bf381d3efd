"""The template store: CRUD, versions, ids, modes, CSS inlining, previews, resolve_content."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from api.errors import ApiError
from api.templates import inline_css, resolve_content
from tests.helpers import Client, assert_error

# The stylesheet of the product documentation's "CSS Integration" section (one blank line there
# holds two spaces; here it is empty).
DOC_CSS = """\
/* PenguinMails Email Template Styles */
.penguin-email-container {
  max-width: 600px;
  margin: 0 auto;
  font-family: 'Helvetica Neue', Arial, sans-serif;
  line-height: 1.6;
  color: #333;
}

.penguin-header {
  background: linear-gradient(135deg, #667eea 0%, #764ba2 100%);
  color: white;
  padding: 30px 20px;
  text-align: center;
}

.penguin-content {
  padding: 30px 20px;
  background: #ffffff;
}

.penguin-button {
  display: inline-block;
  background: #4CAF50;
  color: white;
  padding: 12px 24px;
  text-decoration: none;
  border-radius: 5px;
  font-weight: bold;
  margin: 20px 0;
}

/* Responsive Design */
@media only screen and (max-width: 600px) {
  .penguin-email-container {
    width: 100% !important;
  }

  .penguin-content {
    padding: 20px 15px !important;
  }
}
"""

DOC_HTML = (
    f"<style>{DOC_CSS}</style>"
    '<div class="penguin-email-container">'
    '<div class="penguin-header"><h1>{Hi|Hello} {{name}}</h1></div>'
    '<div class="penguin-content">'
    '<p>Welcome to {{company | default: "your team"}}.</p>'
    '<a class="penguin-button" href="https://app.example.com/start?u={{name}}">Start</a>'
    "</div></div>"
)


def _style_of(page: str, css_class: str) -> str:
    match = re.search(rf'<[a-z0-9]+ class="{css_class}"[^>]* style="([^"]*)"', page)
    assert match is not None, (css_class, page)
    return match.group(1)


def _style_blocks(page: str) -> str:
    return "".join(re.findall(r"<style>(.*?)</style>", page, re.DOTALL))


async def _create(client: Client, **body: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": "Welcome", "subject": "Hi {{name}}", "text": "Hi {{name}}"}
    fields.update(body)
    reply = await client.post("/templates", json=fields)
    assert reply.status == 201, reply.body
    return dict(reply.data)


# -- CRUD and ids ------------------------------------------------------------------------------


async def test_template_crud(client: Client) -> None:
    made = await _create(
        client,
        id="welcome_template",
        html="<p>Hello {{name}}</p>",
        description="The first mail",
    )
    assert made["id"] == "welcome_template" and made["version"] == 1
    assert made["livemode"] is False
    assert made["subject"] == "Hi {{name}}" and made["html"] == "<p>Hello {{name}}</p>"
    assert made["description"] == "The first mail"
    path = "/templates/welcome_template"
    assert (await client.get(path)).data == made

    changed = (await client.patch(path, json={"name": "Welcome, again"})).data
    assert changed["name"] == "Welcome, again" and changed["html"] == made["html"]
    assert changed["updated_at"] > made["updated_at"]

    listed = (await client.get("/templates")).data
    assert [t["id"] for t in listed["items"]] == ["welcome_template"]

    assert (await client.delete(path)).data == {"id": "welcome_template", "deleted": True}
    assert_error(await client.get(path), 404, "NOT_FOUND")
    assert_error(await client.delete(path), 404, "NOT_FOUND")
    assert_error(await client.patch(path, json={"name": "x"}), 404, "NOT_FOUND")
    assert_error(await client.get(f"{path}/versions"), 404, "NOT_FOUND")
    assert_error(await client.post(f"{path}/render", json={}), 404, "NOT_FOUND")
    # A deleted id is free again, starting over at version 1.
    assert (await _create(client, id="welcome_template"))["version"] == 1


async def test_ids_generated_or_chosen_and_unique(client: Client) -> None:
    generated = await _create(client)
    assert re.fullmatch(r"tpl_[0-9a-f]{32}", generated["id"]), generated["id"]
    assert (await client.get(f"/templates/{generated['id']}")).data == generated

    assert (await _create(client, id="promo-2025_v2"))["id"] == "promo-2025_v2"
    taken = await client.post("/templates", json={"id": "promo-2025_v2", "name": "x", "text": "y"})
    assert assert_error(taken, 409, "CONFLICT")["details"] == [
        {"field": "id", "message": "already exists"}
    ]
    assert (await _create(client, id="a" * 64))["id"] == "a" * 64
    for bad in ("Welcome", "with space", "a" * 65, "", "café", "a/b", "a.b"):
        reply = await client.post("/templates", json={"id": bad, "name": "x", "text": "y"})
        error = assert_error(reply, 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == "id", bad
    # Ids outside the rule cannot name a template in a path either.
    assert_error(await client.get("/templates/Welcome"), 404, "NOT_FOUND")
    assert_error(await client.get(f"/templates/{'a' * 65}"), 404, "NOT_FOUND")


async def test_broken_content_is_refused_at_save_naming_the_field(client: Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "x"}, "html"),
        ({"name": "x", "html": None, "text": None}, "html"),
        ({"name": "x", "html": "<p>{{ }}</p>"}, "html"),
        ({"name": "x", "html": "<p>{{name | shout}}</p>"}, "html"),
        ({"name": "x", "text": "Hi {{name"}, "text"),
        ({"name": "x", "text": "Hi", "subject": "Hi {{name | default: x}}"}, "subject"),
        ({"name": "x", "text": "Hi", "subject": "two\nlines"}, "subject"),
        ({"name": "x", "html": "<p>bell \x07</p>"}, "html"),
        ({"name": "", "text": "Hi"}, "name"),
        ({"text": "Hi"}, "name"),
        ({"name": "x", "text": "Hi", "content": {"text": "Hi"}}, "content"),
    ]
    for body, field in cases:
        reply = await client.post("/templates", json=body)
        error = assert_error(reply, 422, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == field, (body, error)
    assert (await client.get("/templates")).data["items"] == []

    made = await _create(client, id="t1")
    for patch, field in (
        ({"text": "{{broken"}, "text"),
        ({"text": None}, "html"),  # nothing left to send
        ({"name": None}, "name"),
        ({"id": "t2"}, "id"),
    ):
        reply = await client.patch("/templates/t1", json=patch)
        assert assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == field
    assert (await client.get("/templates/t1")).data == made


async def test_list_newest_first_with_a_cursor(client: Client) -> None:
    made = [(await _create(client, id=f"t{i}"))["id"] for i in range(5)]
    made.append((await _create(client))["id"])  # generated ids page alongside chosen ones
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/templates", params=params)).data
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            assert cursor is None
            break
    assert seen == made[::-1]
    for bad in ("garbage", "djE6", "djE6bm90LWEtdGltZXx0MQ"):
        reply = await client.get("/templates", params={"cursor": bad})
        assert assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == "cursor"


# -- versions -------------------------------------------------------------------------------------


async def test_each_content_change_is_a_version(client: Client) -> None:
    await _create(client, id="news", subject="v1 {{name}}", text="one")
    path = "/templates/news"
    second = (await client.patch(path, json={"subject": "v2 {{name}}"})).data
    assert second["version"] == 2 and second["text"] == "one"
    third = (await client.patch(path, json={"html": "<p>three</p>", "text": None})).data
    assert third["version"] == 3 and third["text"] is None and third["html"] == "<p>three</p>"
    # Renaming, or sending the same content again, is no new version.
    same = (await client.patch(path, json={"name": "News", "html": "<p>three</p>"})).data
    assert same["version"] == 3 and same["name"] == "News"

    first = (await client.get(f"{path}/versions/1")).data
    assert first["template_id"] == "news" and first["version"] == 1
    assert (first["subject"], first["html"], first["text"]) == ("v1 {{name}}", None, "one")
    assert first["livemode"] is False
    latest = (await client.get(f"{path}/versions/3")).data
    assert (latest["subject"], latest["html"], latest["text"]) == (
        "v2 {{name}}",
        "<p>three</p>",
        None,
    )
    for missing in ("4", "0", "x", "99999999999999999999"):
        assert_error(await client.get(f"{path}/versions/{missing}"), 404, "NOT_FOUND")

    page = (await client.get(f"{path}/versions", params={"limit": "2"})).data
    assert [v["version"] for v in page["items"]] == [3, 2] and page["has_more"]
    rest = (
        await client.get(f"{path}/versions", params={"limit": "2", "cursor": page["next_cursor"]})
    ).data
    assert [v["version"] for v in rest["items"]] == [1] and not rest["has_more"]


# -- modes ---------------------------------------------------------------------------------------


async def test_a_test_key_cannot_see_a_live_template(client: Client, live_key: str) -> None:
    live = client.with_key(live_key)
    made = await _create(live, id="welcome_template", text="live words")
    assert made["livemode"] is True
    path = "/templates/welcome_template"
    assert_error(await client.get(path), 404, "NOT_FOUND")
    assert_error(await client.get(f"{path}/versions"), 404, "NOT_FOUND")
    assert_error(await client.get(f"{path}/versions/1"), 404, "NOT_FOUND")
    assert_error(await client.patch(path, json={"text": "test words"}), 404, "NOT_FOUND")
    assert_error(await client.post(f"{path}/render", json={}), 404, "NOT_FOUND")
    assert_error(await client.delete(path), 404, "NOT_FOUND")
    assert (await client.get("/templates")).data["items"] == []
    # The same id is free in test mode: the two worlds do not clash.
    own = await _create(client, id="welcome_template", text="test words")
    assert own["livemode"] is False
    assert (await live.get(path)).data["text"] == "live words"
    assert (await client.get(path)).data["text"] == "test words"


async def test_another_account_cannot_see_a_template(client: Client, make_key: Any) -> None:
    await _create(client, id="welcome_template", text="acme words")
    other = client.with_key(await make_key("globex", test=True))
    assert_error(await other.get("/templates/welcome_template"), 404, "NOT_FOUND")
    assert_error(await other.delete("/templates/welcome_template"), 404, "NOT_FOUND")
    assert (await other.get("/templates")).data["items"] == []
    assert (await _create(other, id="welcome_template", text="globex words"))["version"] == 1
    assert (await client.get("/templates/welcome_template")).data["text"] == "acme words"


async def test_resolve_content_stays_in_the_callers_mode(
    client: Client, live_key: str, pool: asyncpg.Pool, tenant_id: int
) -> None:
    await _create(client.with_key(live_key), id="live_only")
    with pytest.raises(ApiError) as refused:
        await resolve_content(
            pool, tenant_id, template_id="live_only", subject=None, html=None, text=None
        )
    assert refused.value.details[0]["field"] == "content.template_id"


# -- CSS -------------------------------------------------------------------------------------------


def test_the_documentation_stylesheet_is_inlined_and_its_media_rules_kept() -> None:
    page = inline_css(DOC_HTML)
    container = _style_of(page, "penguin-email-container")
    assert "max-width: 600px" in container and "margin: 0 auto" in container
    assert "font-family: 'Helvetica Neue', Arial, sans-serif" in container
    assert "background: linear-gradient(135deg, #667eea 0%, #764ba2 100%)" in _style_of(
        page, "penguin-header"
    )
    assert "padding: 30px 20px" in _style_of(page, "penguin-content")
    button = _style_of(page, "penguin-button")
    assert "background: #4CAF50" in button and "border-radius: 5px" in button
    # The responsive rules cannot live in a style attribute: they stay in <style>, and only
    # they do (the rest is inlined, not sent twice).
    kept = _style_blocks(page)
    assert "@media only screen and (max-width: 600px)" in kept
    assert "width: 100% !important" in kept and "padding: 20px 15px !important" in kept
    assert ".penguin-button" not in kept and "#4CAF50" not in kept
    assert "width: 100%" not in container


def test_template_syntax_survives_inlining_unchanged() -> None:
    expressions = [
        "{{name}}",
        '{{company | default: "your team"}}',
        '{{deal | default: "Tom & Jerry <3"}}',
        "{{ first_name | capitalize }}",
        '{{ "{" }}',
        "{{url}}",
    ]
    page = inline_css(
        "<style>p { color: red } a { color: blue }</style>"
        f"<p>{{Hi|Hello|Hey}} {expressions[0]}, from {expressions[1]}</p>"
        f"<p title='{expressions[2]}'>{expressions[3]} {expressions[4]}</p>"
        f'<a href="{expressions[5]}?ref={{a|b}}">go</a>'
    )
    for expression in expressions:
        assert expression in page, (expression, page)
    assert "{Hi|Hello|Hey}" in page and "?ref={a|b}" in page
    assert page.count('style="color: red;"') == 2 and 'style="color: blue;"' in page
    assert "pmexpr" not in page


def test_inlining_leaves_html_without_style_alone_and_loads_no_stylesheet(
    tmp_path: Path,
) -> None:
    plain = '<p class="x">Hi {{name}} &amp; {a|b}</p>'
    assert inline_css(plain) == plain
    # A tenant's html must not make the server read its files (or fetch URLs).
    sheet = tmp_path / "secret.css"
    sheet.write_text("p { color: green }")
    page = inline_css(f'<link rel="stylesheet" href="{sheet}"><style>b {{ x: y }}</style><p>x</p>')
    assert "green" not in page and f'href="{sheet}"' in page


async def test_a_style_sheet_too_costly_to_inline_is_refused(
    client: Client, pool: asyncpg.Pool, tenant_id: int
) -> None:
    # Inlining holds the API's event loop: selectors times elements is bounded.
    costly = "<style>" + "* { color: red }" * 2_000 + "</style>" + "<p>x</p>" * 3_000
    reply = await client.post("/templates", json={"name": "x", "html": costly})
    detail = assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]
    assert detail["field"] == "html" and "too large to inline" in detail["message"]
    await _create(client, id="t", subject="S")
    with pytest.raises(ApiError) as refused:
        await resolve_content(
            pool, tenant_id, template_id="t", subject=None, html=costly, text=None
        )
    assert refused.value.details[0]["field"] == "content.html"
    # An unclosed <style> is a style sheet to the end of the body, and counted as one.
    assert_error(
        await client.post("/templates", json={"name": "x", "html": costly[: -len("</style>")]}),
        422,
        "VALIDATION_ERROR",
    )


def test_inlining_scans_once_whatever_is_left_unclosed() -> None:
    # Regular expressions for these would rescan the rest of the body at every opener.
    unclosed = "<style>p { color: red }</style><p>x</p>" + "{{" * 200_000
    assert inline_css(unclosed).endswith("{{" * 200_000 + "</body></html>")
    assert "<style" not in inline_css("<style" * 100_000)


# -- render --------------------------------------------------------------------------------------


async def test_render_is_what_a_message_carries(client: Client) -> None:
    await _create(
        client,
        id="doc",
        subject="{Hi|Hello} {{name}}",
        html=DOC_HTML + '<p><a href="{{unsubscribe_url}}">unsubscribe</a> {{email}}</p>',
        text=None,
    )
    body = {"personalization": {"name": "<Ann>"}, "email": "ann@dest.test"}
    shown = (await client.post("/templates/doc/render", json=body)).data
    assert shown["template_id"] == "doc" and shown["version"] == 1
    assert shown["livemode"] is False
    page = shown["html"]
    # Values are escaped in html, as in a message; the subject (a header) is not.
    assert "&lt;Ann&gt;" in page and "<Ann>" not in page
    assert shown["subject"] in ("Hi <Ann>", "Hello <Ann>")
    greeting = shown["subject"].split()[0]
    assert f"<h1>{greeting} &lt;Ann&gt;</h1>" in page  # one choice per group per message
    assert "Welcome to your team." in page
    assert "padding: 30px 20px" in _style_of(page, "penguin-content")
    assert "@media only screen and (max-width: 600px)" in _style_blocks(page)
    assert "ann@dest.test" in page and "/u/preview" in page
    # An html-only template gets the text part the MTA would derive from the html.
    assert shown["text"].startswith(f"{greeting} <Ann>\n")
    assert "\nWelcome to your team.\n" in shown["text"]
    assert "Start (https://app.example.com/start?u=<Ann>)" in shown["text"]
    again = (await client.post("/templates/doc/render", json=body)).data
    assert again == shown


async def test_render_needs_every_value_without_a_default(client: Client) -> None:
    await _create(client, id="t", subject=None, text="Dear {{name}}, {{plan | default: 'free'}}")
    missing = await client.post("/templates/t/render", json={})
    error = assert_error(missing, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "personalization"
    assert "name" in error["details"][0]["message"]
    shown = (
        await client.post("/templates/t/render", json={"personalization": {"name": "Bo"}})
    ).data
    assert shown == {
        "template_id": "t",
        "version": 1,
        "subject": None,
        "html": None,
        "text": "Dear Bo, free",
        "livemode": False,
    }
    bad = await client.post("/templates/t/render", json={"personalization": {"name": "a\x07"}})
    assert assert_error(bad, 422, "VALIDATION_ERROR")["details"][0]["field"] == (
        "personalization.name"
    )
    await _create(client, id="s", subject="Hi {{name}}", text="x")
    smuggled = await client.post(
        "/templates/s/render", json={"personalization": {"name": "x\r\nBcc: eve@evil.test"}}
    )
    assert assert_error(smuggled, 422, "VALIDATION_ERROR")["details"][0]["field"] == (
        "personalization.name"
    )


# -- resolve_content -----------------------------------------------------------------------------


async def test_resolve_content_fills_what_the_request_left_out(
    client: Client, pool: asyncpg.Pool, tenant_id: int
) -> None:
    styled = "<style>p { color: red }</style><p>{{name}}</p>"

    async def resolve(**given: Any) -> Any:
        parts: dict[str, Any] = {"template_id": None, "subject": None, "html": None, "text": None}
        parts.update(given)
        return await resolve_content(pool, tenant_id, **parts)

    # No template: the request's own content, untouched (no inlining).
    plain = await resolve(subject="S", html=styled)
    assert (plain.subject, plain.html, plain.text) == ("S", styled, None)
    assert (plain.template_id, plain.template_version) == (None, None)

    with pytest.raises(ApiError) as unknown:
        await resolve(template_id="welcome_template", subject="S")
    assert unknown.value.status == 422 and unknown.value.details == [
        {
            "field": "content.template_id",
            "message": "no template 'welcome_template'; create it with POST /api/v1/templates",
        }
    ]
    with pytest.raises(ApiError) as malformed:
        await resolve(template_id="Not An Id", subject="S")
    assert malformed.value.details[0]["field"] == "content.template_id"

    await _create(client, id="welcome_template", subject="T subject", html=styled, text="T text")
    await client.patch("/templates/welcome_template", json={"text": "T text v2"})
    whole = await resolve(template_id="welcome_template")
    assert whole.subject == "T subject" and whole.text == "T text v2"
    assert whole.html is not None and '<p style="color: red;">{{name}}</p>' in whole.html
    assert (whole.template_id, whole.template_version) == ("welcome_template", 2)

    mixed = await resolve(template_id="welcome_template", subject="Mine", text="My text")
    assert (mixed.subject, mixed.text) == ("Mine", "My text")
    assert mixed.html == whole.html
    # The request's own html wins, and is inlined too, being part of a template send.
    own = await resolve(
        template_id="welcome_template", html="<style>b { color: blue }</style><b>x</b>"
    )
    assert own.html is not None and '<b style="color: blue;">x</b>' in own.html
    assert own.subject == "T subject" and own.text == "T text v2"

    await _create(client, id="no_subject", subject=None, text="x")
    with pytest.raises(ApiError) as no_subject:
        await resolve(template_id="no_subject")
    assert no_subject.value.status == 422 and no_subject.value.details[0]["field"] == "subject"
    assert (await resolve(template_id="no_subject", subject="Given")).subject == "Given"
