"""The API reference page: the OpenAPI document rendered by Swagger UI, at `<prefix>/docs`.

Swagger UI's files come from a package (swagger-ui-bundle-v2) and are served by the API
itself, never from a CDN, so the page works offline and loads nothing from elsewhere; the
page and its small initialiser are ours (package data), so no inline script is needed and
the Content-Security-Policy can forbid them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

_STATIC = resources.files("api") / "static" / "docs"
PAGE = (_STATIC / "index.html").read_bytes()
SCRIPT = (_STATIC / "docs.js").read_bytes()
# Only Swagger UI's two files are served, not the whole vendor folder.
ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _serve(body: bytes, content_type: str, cache: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={**_HEADERS, "Cache-Control": cache},
        )

    return handler


def add_docs(app: web.Application, prefix: str) -> None:
    """`<prefix>/docs` (its assets relative to it, so any prefix works)."""
    app.router.add_get(f"{prefix}/docs", _redirect_to_slash(f"{prefix}/docs/"))
    app.router.add_get(f"{prefix}/docs/", _serve(PAGE, "text/html", "no-cache"))
    app.router.add_get(f"{prefix}/docs/docs.js", _serve(SCRIPT, "text/javascript", "no-cache"))
    for name, content_type in ASSETS.items():
        body = (swagger_ui_path / name).read_bytes()
        # The file name carries no version, but the package's folder does: a day is safe.
        app.router.add_get(
            f"{prefix}/docs/assets/{name}", _serve(body, content_type, "public, max-age=86400")
        )


def _redirect_to_slash(target: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(target)

    return handler
