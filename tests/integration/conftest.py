"""Fixtures for multi-process lease tests: replica processes and the truth from pg_locks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from leasectl.keys import as_oid, int4_hash, namespace_for
from tests.replica_proc import FENCE_LOG_DDL, ReplicaProcess

HOLDERS_SQL = """
SELECT l.objid::bigint, l.pid, a.application_name
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid = %(ns)s::bigint::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest.fixture
def fence_dsn(dsn: str) -> str:
    """A migrated database with the ``fence_log`` table the replica processes write to."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(FENCE_LOG_DDL)
    return dsn


@pytest.fixture
def spawn(fence_dsn: str) -> Iterator[Callable[..., ReplicaProcess]]:
    """Start replica processes on ``fence_dsn``; every one is killed at the end of the test."""
    started: list[ReplicaProcess] = []

    def start(replica_id: str, leases: list[str], **kwargs: Any) -> ReplicaProcess:
        proc = ReplicaProcess(fence_dsn, replica_id, leases, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def lock_holders(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, list[str]]:
    """For each lease name, the application_names of the backends holding its lock."""
    by_oid = {as_oid(int4_hash(n)): n for n in names}
    out: dict[str, list[str]] = {n: [] for n in names}
    for objid, _pid, app in conn.execute(
        HOLDERS_SQL, {"ns": as_oid(namespace_for("leasectl"))}
    ).fetchall():
        if objid in by_oid:
            out[by_oid[objid]].append(app)
    return out


def db_epochs(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return dict(conn.execute("SELECT name, epoch FROM leasectl_leases").fetchall())
