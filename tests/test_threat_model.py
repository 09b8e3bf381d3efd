"""THREAT_MODEL.md names, for each threat, the test that proves its mitigation: every test file
and test it names must exist, so a renamed or deleted test cannot leave the model claiming a
proof that is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `tests/x.py`, `tests/x.py::test_a`, and `::test_b` continuing the last file named.
_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`")


def _references() -> list[tuple[str, str | None]]:
    text = (ROOT / "THREAT_MODEL.md").read_text()
    found: list[tuple[str, str | None]] = []
    current = ""
    for match in _REFERENCE.finditer(text):
        path, name = match.groups()
        if path is None and name is None:
            continue
        current = path or current
        assert current, f"{match.group(0)} names a test before any file"
        found.append((current, name))
    return found


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_test_the_threat_model_names_exists() -> None:
    references = _references()
    assert len(references) > 40
    for path, name in references:
        file = ROOT / path
        assert file.is_file(), f"THREAT_MODEL.md names {path}, which does not exist"
        if name is not None:
            assert name in _tests_in(file), f"THREAT_MODEL.md names {path}::{name}: no such test"
