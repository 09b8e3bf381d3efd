"""What `/` and `/api/v1` answer: where to go next, for a person and for a program.

`up` prints the API's base URL, so both are the first thing a new user opens; neither needs
a key, and neither says anything a stranger should not know.
"""

from __future__ import annotations

from aiohttp import web

from api.envelope import success

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>PenguinMails</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
code{{background:#f2f2f2;padding:0 .2em}}</style></head>
<body>
<h1>PenguinMails</h1>
<p>This is the control API of a PenguinMails server.</p>
<ul>
<li>API base URL: <code>{prefix}</code> (send <code>Authorization: Bearer &lt;key&gt;</code>)</li>
<li><a href="{prefix}/docs/">API reference</a>: every route, request and response, browsable
  (the raw <a href="{prefix}/openapi.json">OpenAPI document</a>)</li>
<li><a href="/sandbox">Sandbox inbox</a>: what test-mode mail looked like when it arrived</li>
</ul>
</body>
</html>
"""


def add_index(app: web.Application, prefix: str, *, page: bool = True) -> None:
    """`prefix` (and `prefix/`) answer the JSON index; with `page`, `/` the html page."""
    html = PAGE.format(prefix=prefix).encode()

    async def root(request: web.Request) -> web.Response:
        return web.Response(body=html, content_type="text/html")

    async def api_root(request: web.Request) -> web.Response:
        return success(
            request,
            {
                "name": "PenguinMails API",
                "openapi": f"{prefix}/openapi.json",
                "docs": f"{prefix}/docs/",
                "sandbox_inbox": "/sandbox",
                "authentication": "Authorization: Bearer <API key or login token>",
            },
        )

    if page:
        app.router.add_get("/", root)
    app.router.add_get(prefix, api_root)
    app.router.add_get(prefix + "/", api_root)
