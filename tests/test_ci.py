"""CI runs every check: under CI=true a skipped test fails the run unless tests/conftest.py's
ALLOWED_SKIPS names it, so a tool missing on a fresh machine shows as a failure, not as a
quietly smaller suite. Elsewhere a skip stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ALLOWED_SKIPS
from tests.helpers import ROOT

SKIPPING = """
import shutil

import pytest


@pytest.mark.skipif(shutil.which("true") is not None, reason="a tool the check lacks")
def test_marked_skip():
    pass


def test_skip_at_run_time():
    pytest.skip("no such tool here")


def test_runs():
    pass
"""


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    # Only our conftest's hooks, none of the project's pytest settings: a bare session.
    command += ["-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path)]
    command += ["-o", "asyncio_default_fixture_loop_scope=function"]
    return subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_under_ci_a_skip_fails_the_run(tmp_path: Path) -> None:
    result = _run(tmp_path, "true")
    assert result.returncode == 1, result.stdout + result.stderr
    # A skip by marker fails at setup (an error), one at run time fails the test.
    assert "1 failed, 1 passed, 1 error" in result.stdout, result.stdout
    for reason in ("a tool the check lacks", "no such tool here"):
        assert f"skipped under CI, where every check must run: Skipped: {reason}" in result.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_elsewhere_a_skip_is_a_skip(tmp_path: Path, ci: str | None) -> None:
    result = _run(tmp_path, ci)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 2 skipped" in result.stdout, result.stdout


def test_every_allowed_skip_says_why() -> None:
    for nodeid, reason in ALLOWED_SKIPS.items():
        assert nodeid.startswith("tests/") and reason.strip(), nodeid
