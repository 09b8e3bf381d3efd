"""A local fake of the two Stripe API calls PenguinMails makes (Checkout sessions and billing
portal sessions), answered in Stripe's test-mode shapes: the stripe library's base URL is
pointed at it, so nothing reaches the internet. Used by the billing API's and the dashboard's
tests."""

from __future__ import annotations

from urllib.parse import parse_qsl

from aiohttp import web


class FakeStripe:
    """POST /v1/checkout/sessions and /v1/billing_portal/sessions, answered as Stripe's test
    mode does, with what each request carried kept for the test to look at."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> FakeStripe:
        app = web.Application()
        app.router.add_post("/v1/checkout/sessions", self.checkout)
        app.router.add_post("/v1/billing_portal/sessions", self.portal)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _record(self, request: web.Request) -> dict[str, str]:
        form = dict(parse_qsl(await request.text()))
        self.requests.append((request.path, form, request.headers.get("Authorization", "")))
        return form

    async def checkout(self, request: web.Request) -> web.Response:
        form = await self._record(request)
        return web.json_response(
            {
                "id": "cs_test_a1B2c3",
                "object": "checkout.session",
                "mode": form["mode"],
                "url": "https://checkout.stripe.com/c/pay/cs_test_a1B2c3",
                "livemode": False,
            }
        )

    async def portal(self, request: web.Request) -> web.Response:
        form = await self._record(request)
        return web.json_response(
            {
                "id": "bps_test_1",
                "object": "billing_portal.session",
                "customer": form["customer"],
                "url": "https://billing.stripe.com/p/session/test_1",
            }
        )
