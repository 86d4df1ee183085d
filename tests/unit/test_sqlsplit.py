"""Splitting migration files into statements with their starting lines."""

from __future__ import annotations

from leasectl._sqlsplit import split


def _texts(sql: str) -> list[tuple[int, str]]:
    return [(s.line, s.text) for s in split(sql)]


def test_statements_and_lines() -> None:
    sql = "-- header\nCREATE TABLE a (x int);\n\nINSERT INTO a\nVALUES (1);\n"
    assert _texts(sql) == [(2, "CREATE TABLE a (x int)"), (4, "INSERT INTO a\nVALUES (1)")]


def test_semicolons_inside_quotes_and_comments_do_not_split() -> None:
    sql = (
        "SELECT 'a;b', 'it''s;', E'\\';x', \"odd;name\";\n"
        "/* a; /* nested; */ still comment; */ SELECT 2; -- trailing; comment\n"
    )
    assert _texts(sql) == [
        (1, "SELECT 'a;b', 'it''s;', E'\\';x', \"odd;name\""),
        (2, "SELECT 2"),  # leading comments are not part of the statement
    ]


def test_dollar_quoted_bodies() -> None:
    sql = (
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n"
        "DO $body$ BEGIN PERFORM 1; END $body$;\n"
        "SELECT $1;\n"
    )
    texts = [t for _, t in _texts(sql)]
    assert texts == [
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql",
        "DO $body$ BEGIN PERFORM 1; END $body$",
        "SELECT $1",
    ]


def test_begin_atomic_bodies_with_case() -> None:
    sql = (
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT CASE WHEN true THEN 1 END;\n  SELECT 2;\nEND;\n"
        "SELECT 3;\n"
    )
    assert [line for line, _ in _texts(sql)] == [1, 6]
    assert split(sql)[0].text.endswith("SELECT 2;\nEND")


def test_comment_only_pieces_and_missing_final_semicolon() -> None:
    assert split("-- only a comment\n;\n  ;") == []
    (only,) = split("\n\n  SELECT 1")
    assert (only.line, only.offset, only.text) == (3, 4, "SELECT 1")


def test_offsets_point_at_the_statement_start() -> None:
    sql = "SELECT 1;\n  -- x\n  SELECT 2;"
    for stmt in split(sql):
        assert sql[stmt.offset :].startswith(stmt.text)
