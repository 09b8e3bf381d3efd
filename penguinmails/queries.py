"""Named SQL queries, loaded once from .sql files.

A file holds blocks that start with `-- name: <query_name>`, followed by comment lines that
say why the query is shaped as it is, then the statement. Keeping SQL out of Python strings
makes it reviewable as SQL and testable with EXPLAIN.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _BLOCK.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
        if name in queries:
            raise ValueError(f"query {name!r} defined twice")
        queries[name] = sql.strip().rstrip(";")
    return queries


@cache
def load(package: str, filename: str = "queries.sql") -> dict[str, str]:
    return parse((resources.files(package) / filename).read_text("utf-8"))
