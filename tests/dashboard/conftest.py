"""Fixtures for the dashboard: an API process with a logged-in user's cookies, over HTTP and
in a real browser."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.api.conftest import api, client, key, make_key, settings, start_api  # noqa: F401
from tests.dashboard.browser import FLAGS, USER_AGENT, ensure_installed
from tests.helpers import Client

PASSWORD = "correct horse battery staple"


async def make_user(api_client: Client, email: str) -> dict[str, str]:
    made = await api_client.post("/users", json={"email": email, "password": PASSWORD})
    assert made.status == 201, made.body
    return {"email": email, "password": PASSWORD}


class Browserless:
    """The dashboard over plain HTTP with the browser's cookies kept by hand (aiohttp's jar
    does not send Secure cookies over http, as a browser does for loopback)."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.cookies: dict[str, str] = {}

    def _keep(self, response: aiohttp.ClientResponse) -> None:
        for name, morsel in response.cookies.items():
            if morsel.value:
                self.cookies[name] = morsel.value
            else:
                self.cookies.pop(name, None)

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        headers.update(kwargs.pop("headers", {}))
        async with self.http.request(
            method, self.base + path, headers=headers, allow_redirects=False, **kwargs
        ) as response:
            self._keep(response)
            return response.status, response.headers, await response.text()

    async def csrf(self, path: str = "/dashboard/login") -> str:
        import re

        _, _, html = await self.request("GET", path)
        found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
        assert found, html
        return found.group(1)

    async def login(self, email: str, password: str = PASSWORD) -> None:
        token = await self.csrf()
        status, headers, body = await self.request(
            "POST",
            "/dashboard/login",
            data={"email": email, "password": password, "csrf_token": token},
        )
        assert status == 303 and headers["Location"] == "/dashboard", body


@pytest.fixture
def browserless(http: aiohttp.ClientSession) -> Callable[[str], Browserless]:
    return lambda base: Browserless(http, base)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = ensure_installed()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=FLAGS
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(
        user_agent=USER_AGENT, viewport={"width": 1100, "height": 900}
    )
    page = await context.new_page()
    yield page
    await context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[Any, str], Awaitable[None]]:
    """Screenshots of each page for review, under the test's tmp path."""
    folder = tmp_path / "screenshots"
    folder.mkdir()

    async def shoot(page: Any, name: str) -> None:
        await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    return shoot
