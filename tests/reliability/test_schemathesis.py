"""schemathesis, the reference OpenAPI fuzzer, against a real `penguinmails api` process:
whatever it generates from our published document, the API never answers 500."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest

from api.keys import create_key
from tests.helpers import free_port, role_env, size, wait_for


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error(pool, database_url, tmp_path, spawn):
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    async with pool.acquire() as conn:
        key = await create_key(conn, tenant="fuzz", tier="enterprise", test=True)
    port = free_port()
    api = await spawn(
        "api", role_env(database_url, tmp_path, PENGUINMAILS_API__LISTEN=f"127.0.0.1:{port}")
    )
    base = f"http://127.0.0.1:{port}"
    await wait_for(lambda: _listening(port), timeout=30)

    fuzz = await asyncio.create_subprocess_exec(
        st,
        "run",
        f"{base}/api/v1/openapi.json",
        "--url",
        base,  # the document's paths carry /api/v1 themselves
        "--checks",
        "not_a_server_error",
        "--header",
        f"Authorization: Bearer {key}",
        "--max-examples",
        str(size(15, 200)),
        "--generation-deterministic",
        "--phases",
        "examples,coverage,fuzzing",
        "--no-color",
        # Revoking keys is fuzzed like the rest, but not its own key: every later request
        # would be a 401 and reach no handler.
        "--exclude-path",
        "/api/v1/api-keys/{id}",
        # These act on the calling user's session, so an API key only ever gets 403 from
        # them; tests/api/test_login.py drives them with real tokens.
        "--exclude-path",
        "/api/v1/auth/logout",
        "--exclude-path",
        "/api/v1/auth/password",
        # Billing belongs to the live account: a test key only ever gets 403 from these;
        # tests/api/test_billing.py drives them with live keys and a Stripe fake.
        "--exclude-path",
        "/api/v1/billing/subscription",
        "--exclude-path",
        "/api/v1/billing/checkout",
        "--exclude-path",
        "/api/v1/billing/portal",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(fuzz.communicate(), 600)
    api.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(api.wait(), 30) == 0

    report = output.decode(errors="replace")
    assert fuzz.returncode == 0, report[-6000:]
    assert " passed" in report
    # It must have reached the handlers, not bounced off auth or the rate limit.
    assert "Authentication failed" not in report, report[-6000:]
    assert "Rate limited" not in report, report[-6000:]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
