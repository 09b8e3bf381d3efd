"""@penguinmails/sdk (sdk/js) against a real API server: its vitest suites (the product
documentation's examples, and the SDK's own behaviour) run in Node with the server's URL and
keys in the environment; this test passes only if every one of them passed."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from api.server import ApiServer
from tests.sdk.conftest import run_async


async def test_js_sdk_suites_pass_against_the_server(
    js_sdk: Path,
    api: ApiServer,
    key: str,
    start_api: Callable[..., Awaitable[ApiServer]],
    make_key: Callable[..., Awaitable[str]],
) -> None:
    # A second server with a tiny limit and a two-second window: the retry example meets a
    # real 429 and a Retry-After it can wait out. Its own account, so the limit is its own.
    throttled = await start_api(limits={"free": 1}, window=2)
    throttled_key = await make_key("throttled", tier="free", test=True)
    env = {
        "PENGUINMAILS_BASE_URL": api.url,
        "PENGUINMAILS_API_KEY": key,
        "PENGUINMAILS_THROTTLED_BASE_URL": throttled.url,
        "PENGUINMAILS_THROTTLED_API_KEY": throttled_key,
        "CI": "true",  # vitest: no watch mode
        "NO_COLOR": "1",
    }
    run = await run_async(
        [str(js_sdk / "node_modules" / ".bin" / "vitest"), "run", "--reporter=verbose"], js_sdk, env
    )
    assert run.returncode == 0, run.output
    passed = re.search(r"Tests\s+(\d+) passed", run.output)
    assert passed and int(passed.group(1)) >= 15, run.output
    assert "failed" not in run.output.split("Test Files")[-1], run.output


async def test_the_types_accept_the_documented_examples_and_refuse_mistakes(js_sdk: Path) -> None:
    """sdk/js/test/types.ts: the documentation's calls (camelCase and snake_case mixed,
    content as a string) compile against the published declarations, and its
    @ts-expect-error lines (an unknown field, a wrong type, a field answers lack) do not."""
    tsc = str(js_sdk / "node_modules" / "typescript" / "bin" / "tsc")
    run = await run_async(["node", tsc, "-p", "tsconfig.test.json"], js_sdk, {})
    assert run.returncode == 0, run.output
