"""The named-query loader and the packaged SQL files."""

from __future__ import annotations

import re

import pytest

from leasectl import sql

TEXT = """-- name: first
-- Describes the first query.
SELECT 1

-- name: second_one
SELECT %(x)s
FROM t
"""


def test_parse_splits_on_name_headers_and_keeps_descriptions() -> None:
    q = sql.parse(TEXT)
    assert list(q) == ["first", "second_one"]
    assert q["first"] == "-- Describes the first query.\nSELECT 1"
    assert q["second_one"] == "SELECT %(x)s\nFROM t"


def test_parse_refuses_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="'first' is defined twice"):
        sql.parse(TEXT + "\n-- name: first\nSELECT 2\n")


def test_parse_ignores_text_before_the_first_header_and_odd_headers() -> None:
    q = sql.parse("-- file comment\n-- name: a\nSELECT 1\n--name: not_a_header\n")
    assert list(q) == ["a"]
    assert "not_a_header" in q["a"]


@pytest.mark.parametrize("module", ["locks", "leases", "migrate"])
def test_packaged_files_load_with_named_parameters_only(module: str) -> None:
    queries = sql.load(module)
    assert queries and all(body.strip() for body in queries.values())
    for name, body in queries.items():
        code = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
        assert not re.search(r"%s|\{\}", code), f"{module}.{name} uses a positional placeholder"
    assert sql.load(module) is queries  # read once
