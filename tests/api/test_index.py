"""`/` and `/api/v1`, the first URLs a new user opens, say where to go next."""

from __future__ import annotations

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
