"""Connections: resolving the DSN (embedded default), the work pool, the lock connection.

The lock connection is never taken from the pool: a pool may close, reset or hand a
connection to another thread, and any of those silently drops session advisory locks.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool

from leasectl.embedded import EmbeddedPostgres
from leasectl.errors import DatabaseUnavailable
from leasectl.settings import DatabaseSettings


def configured_dsn(db: DatabaseSettings) -> str | None:
    """The DSN the operator gave: ``database.dsn``, else ``$LEASECTL_DSN``; None for neither.

    The one place the environment fallback is read, so the daemon and the status commands
    can never disagree about which database they talk to.
    """
    return db.dsn or os.environ.get("LEASECTL_DSN", "") or None


def resolve_dsn(db: DatabaseSettings) -> str:
    """The configured DSN, ``$LEASECTL_DSN``, or the embedded server's."""
    return configured_dsn(db) or EmbeddedPostgres(db.data_dir).dsn()


def resolve_lock_dsn(db: DatabaseSettings, work_dsn: str) -> str:
    return db.lock_dsn or os.environ.get("LEASECTL_LOCK_DSN", "") or work_dsn


def is_unix_socket(dsn: str) -> bool:
    """True when the DSN connects over a Unix socket (no network partition is possible)."""
    params = conninfo.conninfo_to_dict(dsn)
    host = str(params.get("host") or os.environ.get("PGHOST", ""))
    return host == "" or host.startswith("/") or host.startswith("@")


def lock_connect(dsn: str, db: DatabaseSettings, application_name: str) -> psycopg.Connection[Any]:
    """Open the dedicated autocommit lock connection.

    ``target_session_attrs=read-write`` refuses a standby at connect time; the client-side
    ``tcp_user_timeout`` makes a heartbeat on a dead link fail instead of hanging for minutes.
    """
    extra: dict[str, Any] = {
        "application_name": application_name,
        "target_session_attrs": "read-write",
        "connect_timeout": max(1, int(db.connect_timeout)),
        "autocommit": True,
    }
    if not is_unix_socket(dsn):
        extra.update(
            keepalives=1,
            keepalives_idle=db.tcp_keepalives_idle,
            keepalives_interval=db.tcp_keepalives_interval,
            keepalives_count=db.tcp_keepalives_count,
            tcp_user_timeout=db.client_tcp_user_timeout_ms,
        )
    try:
        return psycopg.connect(dsn, **extra)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot open the lock connection: {exc}") from exc


def make_pool(
    dsn: str, db: DatabaseSettings, application_name: str, *, open_wait: bool = True
) -> ConnectionPool:
    """The work pool: every query that is not about holding locks goes through it."""

    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.autocommit = True
        conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
            (str(db.work_idle_in_transaction_timeout_ms),),
        )
        conn.autocommit = False

    pool = ConnectionPool(
        dsn,
        min_size=db.pool_min_size,
        max_size=db.pool_max_size,
        kwargs={
            "application_name": application_name,
            "connect_timeout": max(1, int(db.connect_timeout)),
        },
        configure=configure,
        open=False,
        name=application_name,
        reconnect_timeout=3600.0,
    )
    pool.open(wait=open_wait, timeout=max(10.0, db.connect_timeout * 2))
    return pool
