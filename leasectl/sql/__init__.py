"""Named SQL queries, kept apart from the Python that calls them.

Each ``leasectl/sql/<module>.sql`` file holds queries under a ``-- name: <query_name>``
line followed by ``--`` description lines. Only ``%(param)s`` placeholders are used, so
every query is parameterized and reviewable in one place.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString, cast

_HEADER = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, LiteralString]:
    """Split a SQL file into ``{name: query}``; description comments are kept in the query."""
    parts = _HEADER.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = cast(LiteralString, body.strip())
    return queries


@cache
def load(module: str, package: str = "leasectl.sql") -> dict[str, LiteralString]:
    """Read ``<module>.sql`` from ``package`` once and return its named queries."""
    text = resources.files(package).joinpath(f"{module}.sql").read_text(encoding="utf-8")
    return parse(text)
