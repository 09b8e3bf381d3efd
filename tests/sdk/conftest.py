"""Fixtures for the SDKs' suites: the API's server fixtures, and the SDKs' Node packages
installed from their committed lockfiles (npm ci) when node_modules is missing, then built.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api.conftest import api, key, make_key, settings, start_api  # noqa: F401
from tests.helpers import ROOT

SDK = ROOT / "sdk"
# The Python client is its own distribution (sdk/python), not installed into the server's
# environment: its tests import it from the tree (tests/sdk/test_packaging.py builds the wheel).
if str(SDK / "python") not in sys.path:
    sys.path.insert(0, str(SDK / "python"))
NPM_TIMEOUT = 600.0


def npm() -> str:
    """npm, which .ci/run installs with Node when the machine lacks them: never a skip."""
    found = shutil.which("npm")
    if found is None:
        pytest.fail("npm is missing: .ci/run installs nodejs and npm (apt-get install nodejs npm)")
    return found


def npm_ci(package: Path) -> None:
    if (package / "node_modules").is_dir():
        return
    subprocess.run(
        [npm(), "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=package,
        check=True,
        timeout=NPM_TIMEOUT,
    )


@pytest.fixture(scope="session")
def js_sdk() -> Path:
    """sdk/js, installed and built (dist/esm, dist/cjs)."""
    package = SDK / "js"
    npm_ci(package)
    subprocess.run([npm(), "run", "--silent", "build"], cwd=package, check=True, timeout=300)
    return package


@pytest.fixture(scope="session")
def react_sdk(js_sdk: Path) -> Path:
    """sdk/react, installed (its @penguinmails/sdk is sdk/js, built) and built."""
    package = SDK / "react"
    npm_ci(package)
    subprocess.run([npm(), "run", "--silent", "build"], cwd=package, check=True, timeout=300)
    return package


@dataclass
class Run:
    returncode: int
    output: str


async def run_async(
    command: list[str], cwd: Path, env: Mapping[str, str], timeout: float = 240.0
) -> Run:
    """A command run while this event loop keeps serving the API it talks to."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return Run(process.returncode or 0, out.decode(errors="replace"))
