"""`/` and `/api/v1`, the first URLs a new user opens, say where to go next."""

from __future__ import annotations

import re

import aiohttp

from api.server import ApiServer


async def test_the_root_and_the_api_base_url_point_onwards(
    api: ApiServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(api.url + "/") as page:
        assert page.status == 200 and page.content_type == "text/html"
        html = await page.text()
    assert 'href="/api/v1/openapi.json"' in html and 'href="/sandbox"' in html
    for path in ("/api/v1", "/api/v1/"):
        async with http.get(api.url + path) as reply:
            assert reply.status == 200
            body = await reply.json()
        assert body["success"] is True
        assert body["data"]["openapi"] == "/api/v1/openapi.json"
        async with http.get(api.url + body["data"]["openapi"]) as document:
            assert document.status == 200


async def test_v1_is_the_same_api_as_api_v1(
    api: ApiServer, http: aiohttp.ClientSession, key: str
) -> None:
    """The product document's base URL is .../v1/ and its examples say /api/v1/: both work."""
    auth = {"Authorization": f"Bearer {key}"}
    body = {"name": "Launch", "subject": "Hi", "content": {"text": "Hello"}}
    async with http.post(api.url + "/v1/campaigns", json=body, headers=auth) as made:
        assert made.status == 201
        campaign = (await made.json())["data"]
    async with http.get(api.url + f"/api/v1/campaigns/{campaign['id']}", headers=auth) as got:
        assert got.status == 200 and (await got.json())["data"]["name"] == "Launch"
    async with http.get(api.url + "/v1/campaigns", headers=auth) as listed:
        assert [c["id"] for c in (await listed.json())["data"]["items"]] == [campaign["id"]]
    documents = []
    for path in ("/api/v1/openapi.json", "/v1/openapi.json"):
        async with http.get(api.url + path, headers={"Origin": "https://editor.example"}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
            documents.append(await r.read())
    assert documents[0] == documents[1]


async def test_the_api_reference_page_is_served_by_the_api_itself(
    api: ApiServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(api.url + "/api/v1/docs", allow_redirects=False) as moved:
        assert moved.status == 308 and moved.headers["Location"] == "/api/v1/docs/"
    async with http.get(api.url + "/api/v1/docs/") as page:
        assert page.status == 200 and page.content_type == "text/html"
        html = await page.text()
        csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp
    # Everything it loads is relative to it and served here: no CDN.
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(not s.startswith(("http:", "https:", "//")) for s in sources)
    for source in sources:
        async with http.get(api.url + "/api/v1/docs/" + source) as asset:
            assert asset.status == 200, source
            body = await asset.read()
        assert len(body) > 100, source
        if source.endswith("swagger-ui-bundle.js"):
            assert b"SwaggerUIBundle" in body
        if source == "docs.js":
            assert b"../openapi.json" in body
