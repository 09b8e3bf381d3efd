"""Running wrk: one place that starts it with a Lua script and reads the JSON its script
prints as the last line, for every benchmark that puts HTTP load on a server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson


def run_wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    result: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return result
