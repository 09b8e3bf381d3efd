"""The SDKs' types against the API's OpenAPI document, as a running server serves it: the
generated files must be exactly what sdk/generate_types.py makes of it, and a model change
the SDK does not follow fails its build."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from api.server import ApiServer
from tests.helpers import ROOT
from tests.sdk.conftest import run_async

GENERATOR = ROOT / "sdk" / "generate_types.py"


def generate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def served(api: ApiServer, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(api.url + "/api/v1/openapi.json") as response:
        assert response.status == 200
        doc: dict[str, Any] = await response.json()
        return doc


async def test_the_generated_types_match_the_served_document(
    api: ApiServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Fetched here, not by the generator: a blocking call would stall the server's loop.
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(await served(api, http)))
    result = generate(document, "--check")
    assert result.returncode == 0, (
        "the SDKs' generated types differ from the API's OpenAPI document; run "
        "`python sdk/generate_types.py http://<api>/api/v1/openapi.json` and update the SDKs\n"
        + result.stdout
        + result.stderr
    )


async def test_a_changed_model_fails_the_check(
    api: ApiServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    doc = await served(api, http)
    del doc["components"]["schemas"]["Contact"]["properties"]["company"]
    changed = tmp_path / "openapi.json"
    changed.write_text(json.dumps(doc))
    result = generate(changed, "--check")
    assert result.returncode == 1
    assert "-  company: string | null;" in result.stdout  # the TypeScript interface
    assert "-    company: str | None" in result.stdout  # the Python TypedDict


async def test_a_removed_operation_breaks_the_typescript_build(
    api: ApiServer, http: aiohttp.ClientSession, tmp_path: Path, js_sdk: Path
) -> None:
    """The SDK's code is typed by the generated table: an operation it calls that the API no
    longer has (or a request model it names) is a compile error, not a 404 at run time."""
    doc = await served(api, http)
    del doc["paths"]["/api/v1/contacts/{id}/sequences"]
    changed = tmp_path / "openapi.json"
    changed.write_text(json.dumps(doc))
    copy = tmp_path / "js"
    shutil.copytree(js_sdk / "src", copy / "src")
    shutil.copy(js_sdk / "tsconfig.json", copy)
    assert (
        generate(
            changed, "--ts-out", copy / "src" / "generated.ts", "--py-out", tmp_path / "gen.py"
        ).returncode
        == 0
    )
    tsc = js_sdk / "node_modules" / "typescript" / "bin" / "tsc"
    compile_copy = ["node", str(tsc), "-p", str(copy), "--noEmit"]
    broken = await run_async(compile_copy, copy, {})
    assert broken.returncode != 0
    assert "trigger_sequence" in broken.output, broken.output
    # The same copy with the served document compiles: the failure is the change's.
    original = tmp_path / "served.json"
    original.write_text(json.dumps(await served(api, http)))
    generate(original, "--ts-out", copy / "src" / "generated.ts", "--py-out", tmp_path / "g.py")
    fine = await run_async(compile_copy, copy, {})
    assert fine.returncode == 0, fine.output
