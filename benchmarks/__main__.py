"""`python -m benchmarks NAME [options]`: run benchmarks/NAME.py's main() with the options.

Each benchmark is its own module with a `main(argv) -> int`, so adding one needs no change
here. A development tool, not a `penguinmails` command: no shipped module imports benchmarks
(an import-linter contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

_NOT_BENCHMARKS = {"__main__", "report", "sink", "wrk"}


def available() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(here)])
        if m.name not in _NOT_BENCHMARKS and not m.name.endswith("_prof")
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = available()
    if not args or args[0] not in names:
        print(f"usage: python -m benchmarks {{{'|'.join(names)}}} [--quick]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{args[0]}")
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
