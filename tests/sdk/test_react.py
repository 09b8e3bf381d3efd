"""@penguinmails/sdk-react (sdk/react) against a real API server: its vitest suite renders the
documentation's React integration in a DOM (jsdom, @testing-library/react) and talks to the
server with the key it is given; this passes only if every test there passed."""

from __future__ import annotations

import re
from pathlib import Path

from api.server import ApiServer
from tests.sdk.conftest import run_async


async def test_react_suite_passes_against_the_server(
    react_sdk: Path, api: ApiServer, key: str
) -> None:
    env = {
        "PENGUINMAILS_BASE_URL": api.url,
        "PENGUINMAILS_API_KEY": key,
        "CI": "true",
        "NO_COLOR": "1",
    }
    vitest = str(react_sdk / "node_modules" / ".bin" / "vitest")
    run = await run_async([vitest, "run", "--reporter=verbose"], react_sdk, env)
    assert run.returncode == 0, run.output
    passed = re.search(r"Tests\s+(\d+) passed", run.output)
    assert passed and int(passed.group(1)) >= 5, run.output
