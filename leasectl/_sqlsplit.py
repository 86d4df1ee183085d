"""Split a migration file into statements, each with the line it starts on.

Migrations run one statement at a time so that a failure names the statement's line even
when PostgreSQL reports no position (a constraint violation, a runtime error), and so that
a ``no-transaction`` file can hold ``CREATE INDEX CONCURRENTLY`` next to other statements
(a multi-statement query string runs in an implicit transaction block, which CIC refuses).

Understood: ``'...'`` (with ``''``), ``E'...'`` (backslash escapes), ``"..."``, ``$tag$...$tag$``,
``--`` and nested ``/* */`` comments, and SQL-standard bodies ``BEGIN ATOMIC ... END`` (with
``CASE ... END`` inside). psql meta-commands are not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


@dataclass(frozen=True)
class Statement:
    offset: int  # character offset of the statement's first significant character
    line: int  # 1-based line of that character
    text: str


def split(text: str) -> list[Statement]:
    """Statements of ``text`` without their terminating ``;``; comment-only pieces are dropped."""
    out: list[Statement] = []
    i, n = 0, len(text)
    start = 0
    depth = 0  # BEGIN ATOMIC / CASE nesting: semicolons inside do not end the statement
    prev_word = ""
    significant = False  # has the current piece anything but whitespace and comments?

    def flush(end: int) -> None:
        nonlocal start, significant
        if significant:
            piece = text[start:end]
            lead = len(piece) - len(piece.lstrip())
            offset = start + lead
            out.append(Statement(offset, text.count("\n", 0, offset) + 1, piece.strip()))
        start = end + 1
        significant = False

    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            if not significant:
                start = i
            continue
        if c == "/" and text.startswith("/*", i):
            level, i = 1, i + 2
            while i < n and level:
                if text.startswith("/*", i):
                    level, i = level + 1, i + 2
                elif text.startswith("*/", i):
                    level, i = level - 1, i + 2
                else:
                    i += 1
            if not significant:
                start = i
            continue
        if c.isspace():
            i += 1
            if not significant:
                start = i
            continue
        if c == ";" and depth == 0:
            flush(i)
            prev_word = ""
            i += 1
            continue
        significant = True
        if c == "'":
            escapes = i > 0 and text[i - 1] in "eE" and (i < 2 or not _is_word(text[i - 2]))
            i += 1
            while i < n:
                if escapes and text[i] == "\\":
                    i += 2
                    continue
                if text[i] == "'":
                    if text.startswith("''", i):
                        i += 2
                        continue
                    break
                i += 1
            i += 1
            prev_word = ""
            continue
        if c == '"':
            j = text.find('"', i + 1)
            while j >= 0 and text.startswith('""', j):
                j = text.find('"', j + 2)
            i = n if j < 0 else j + 1
            prev_word = ""
            continue
        if c == "$":
            m = _DOLLAR.match(text, i)
            if m and not (i > 0 and _is_word(text[i - 1])):
                close = text.find(m.group(0), m.end())
                i = n if close < 0 else close + len(m.group(0))
                prev_word = ""
                continue
        if _is_word(c) and not c.isdigit():
            m = _WORD.match(text, i)
            assert m is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
            word = m.group(0).upper()
            if (word == "ATOMIC" and prev_word == "BEGIN") or (depth and word == "CASE"):
                depth += 1
            elif depth and word == "END":
                depth -= 1
            prev_word = word
            i = m.end()
            continue
        i += 1
    flush(n)
    return out


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"
