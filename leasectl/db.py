"""Connections: resolving the DSN (embedded default), the work pool, the lock connection.

The lock connection is never taken from the pool: a pool may close, reset or hand a
connection to another thread, and any of those silently drops session advisory locks.

Every connection leasectl opens (lock, work pool, migrations, status) gets its connect
parameters from :func:`connect_kwargs`: with a multi-host DSN (``host=a,b``) that adds
``target_session_attrs=read-write``, so libpq walks the host list and keeps the first server
that accepts writes, which after a failover is the promoted standby. Nothing caches the
primary: every new connection goes through the host list again.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Self, TypeVar

import psycopg
from psycopg import conninfo
from psycopg.abc import Params, PQGen, Query
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from leasectl.embedded import EmbeddedPostgres, locate_data_dir
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
    return configured_dsn(db) or EmbeddedPostgres(locate_data_dir(db.data_dir)).dsn()


def resolve_lock_dsn(db: DatabaseSettings, work_dsn: str) -> str:
    return db.lock_dsn or os.environ.get("LEASECTL_LOCK_DSN", "") or work_dsn


def is_unix_socket(dsn: str) -> bool:
    """True when the DSN connects over a Unix socket (no network partition is possible)."""
    params = conninfo.conninfo_to_dict(dsn)
    host = str(params.get("host") or os.environ.get("PGHOST", ""))
    return host == "" or host.startswith("/") or host.startswith("@")


def is_multi_host(dsn: str) -> bool:
    """True when the DSN lists several servers (``host=a,b`` or ``hostaddr=…,…``)."""
    params = conninfo.conninfo_to_dict(dsn)
    return any("," in str(params.get(key) or "") for key in ("host", "hostaddr"))


#: ``target_session_attrs`` values that only ever connect to a server accepting writes.
_WRITABLE = ("read-write", "primary")


def connect_kwargs(
    dsn: str, db: DatabaseSettings, application_name: str, *, primary_only: bool = False
) -> dict[str, Any]:
    """The connect parameters every leasectl connection adds to its DSN (the one place).

    ``target_session_attrs=read-write`` is added for a multi-host DSN, so a standby in the list
    is skipped and the primary found again after a failover. A single-host DSN is left as the
    operator wrote it (libpq would apply the attribute to that one host too and simply fail
    on a standby); ``primary_only`` (the lock connection) adds it for one host as well, since
    advisory locks on a standby protect nothing. A value in the DSN wins, except that
    ``primary_only`` accepts only ``read-write`` or ``primary``.
    """
    extra: dict[str, Any] = {
        "application_name": application_name,
        "connect_timeout": max(1, int(db.connect_timeout)),
    }
    given = str(conninfo.conninfo_to_dict(dsn).get("target_session_attrs") or "")
    if (primary_only and given not in _WRITABLE) or (not given and is_multi_host(dsn)):
        extra["target_session_attrs"] = "read-write"
    return extra


def connect(
    dsn: str, db: DatabaseSettings, application_name: str, *, autocommit: bool = False
) -> psycopg.Connection[Any]:
    """A plain connection with :func:`connect_kwargs` (migrations, status); errors are psycopg's."""
    return psycopg.connect(dsn, autocommit=autocommit, **connect_kwargs(dsn, db, application_name))


_RV = TypeVar("_RV")

#: How often a statement that waits on the server off the main thread wakes up meanwhile.
#: psycopg's default (0.1 s) exists so Ctrl-C can interrupt a query, and Python delivers
#: signals to the main thread only; the remaining reasons to wake (a ``timeout`` given to the
#: wait, the socket closed under it) do not depend on it. See :class:`_LockConnection`.
_THREAD_WAIT_INTERVAL = 5.0


class _LockConnection(psycopg.Connection[Any]):
    """The lock and watch connections: a statement waiting on a background thread sleeps.

    The watch connection's statement waits in the server for up to its ``lock_timeout``, and
    is issued again at once, forever: with psycopg's 0.1 s check interval that thread woke
    ten times a second per replica, resuming psycopg's generator each time, for nothing (its
    check is for Ctrl-C, which only the main thread receives): a quarter of an idle
    replica's CPU. Off the main thread the wait now wakes when the server answers (a cancel
    from another thread is a server answer), when a ``timeout`` given to the wait ends, and
    every few seconds (psycopg's check that the socket was not closed under it; nothing in
    leasectl closes a connection another thread is using). On the main thread (the
    ``leasectl`` commands) Ctrl-C stays prompt.
    """

    def wait(self, gen: PQGen[_RV], interval: float = 0.1, timeout: float | None = None) -> _RV:
        if threading.current_thread() is not threading.main_thread():
            interval = max(interval, _THREAD_WAIT_INTERVAL)
        return super().wait(gen, interval=interval, timeout=timeout)


def lock_connect(dsn: str, db: DatabaseSettings, application_name: str) -> psycopg.Connection[Any]:
    """Open the dedicated autocommit lock connection.

    ``target_session_attrs=read-write`` refuses a standby at connect time; the client-side
    ``tcp_user_timeout`` makes a heartbeat on a dead link fail instead of hanging for minutes.
    """
    extra = connect_kwargs(dsn, db, application_name, primary_only=True)
    extra["autocommit"] = True
    if not is_unix_socket(dsn):
        extra.update(
            keepalives=1,
            keepalives_idle=db.tcp_keepalives_idle,
            keepalives_interval=db.tcp_keepalives_interval,
            keepalives_count=db.tcp_keepalives_count,
            tcp_user_timeout=db.client_tcp_user_timeout_ms,
        )
    try:
        return _LockConnection.connect(dsn, **extra)
    except psycopg.OperationalError as exc:
        # The lock session, its watcher (".../watch") and the pooler probe share this path:
        # say which connection failed, so a watcher's retry does not read as a lost lock session.
        parts = application_name.split("/")  # leasectl/<replica-id>[/watch | /pooler-probe]
        suffix = parts[-1] if len(parts) >= 3 else ""
        what = {"watch": "watch connection", "pooler-probe": "pooler probe connection"}.get(
            suffix, "lock connection"
        )
        raise DatabaseUnavailable(f"cannot open the {what}: {exc}") from exc


#: Pool connections that met a read-only server (SQLSTATE 25006): dropped at their next checkout.
_READ_ONLY: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


class _PrimaryCursor(psycopg.Cursor[Any]):
    """The work pool's cursor: remembers a ``ReadOnlySqlTransaction`` on its connection.

    A write refused with 25006 means the connection's server is (now) a standby or read-only
    (a stale DNS name, a demoted primary). The error still reaches the caller; the connection
    is marked, and :func:`_check_writable` drops it instead of handing it out again.
    """

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        base: Any = super()  # execute is overloaded (templates); this passes its arguments on
        try:
            return base.execute(query, params, prepare=prepare, binary=binary)  # type: ignore[no-any-return]
        except psycopg.errors.ReadOnlySqlTransaction:
            _READ_ONLY.add(self.connection)
            raise

    def executemany(self, query: Query, params_seq: Any, *, returning: bool = False) -> None:
        try:
            super().executemany(query, params_seq, returning=returning)
        except psycopg.errors.ReadOnlySqlTransaction:
            _READ_ONLY.add(self.connection)
            raise


def server_read_only(conn: psycopg.Connection[Any]) -> bool:
    """What the server last reported about itself (PostgreSQL 14+ reports both on change)."""
    info = conn.info
    return (
        info.parameter_status("in_hot_standby") == "on"
        or info.parameter_status("default_transaction_read_only") == "on"
    )


def _check_writable(conn: psycopg.Connection[Any]) -> None:
    """The pool's checkout check; sends no query.

    A connection that met 25006 or whose server reports itself in hot standby is closed here,
    so the pool replaces it with a new one, which goes through the DSN's host list again,
    rather than retrying against the same server.
    """
    if conn in _READ_ONLY or server_read_only(conn):
        _READ_ONLY.discard(conn)
        conn.close()
        raise DatabaseUnavailable("work connection reached a read-only server; reconnecting")


def make_pool(
    dsn: str, db: DatabaseSettings, application_name: str, *, open_wait: bool = True
) -> ConnectionPool:
    """The work pool: every query that is not about holding locks goes through it.

    A new connection that lands on a server in recovery is refused in ``configure`` (the check
    rides on the one statement it already sends); one that later meets a read-only server is
    dropped at its next checkout (:func:`_check_writable`). Behind a pooler (the server's pid
    is not the one the client was told) statements are never prepared.
    """

    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.autocommit = True
        row = conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false), "
            "pg_is_in_recovery(), pg_backend_pid()",
            (str(db.work_idle_in_transaction_timeout_ms),),
        ).fetchone()
        if row is not None and row[1]:
            raise DatabaseUnavailable("work connection reached a server in recovery (a standby)")
        if row is not None and row[2] != conn.info.backend_pid:
            # A pooler answered (PgBouncer invents the pid): in transaction mode the next
            # statement may run on another server connection, where psycopg's automatically
            # prepared statements do not exist. Send every statement unprepared.
            conn.prepare_threshold = None
        conn.autocommit = False

    kwargs = connect_kwargs(dsn, db, application_name)
    kwargs["cursor_factory"] = _PrimaryCursor
    pool = ConnectionPool(
        dsn,
        min_size=db.pool_min_size,
        max_size=db.pool_max_size,
        kwargs=kwargs,
        configure=configure,
        check=_check_writable,
        open=False,
        name=application_name,
        reconnect_timeout=3600.0,
    )
    pool.open(wait=open_wait, timeout=max(10.0, db.connect_timeout * 2))
    return pool


async def make_async_pool(
    dsn: str, db: DatabaseSettings, application_name: str
) -> AsyncConnectionPool:
    """The async work pool of ``async def`` loops, opened on the running event loop.

    Configured like :func:`make_pool` (idle-in-transaction timeout, no standby, no prepared
    statements behind a pooler), sized like it, and only made when an App has async loops.
    """

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.set_autocommit(True)
        cur = await conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false), "
            "pg_is_in_recovery(), pg_backend_pid()",
            (str(db.work_idle_in_transaction_timeout_ms),),
        )
        row = await cur.fetchone()
        if row is not None and row[1]:
            raise DatabaseUnavailable("work connection reached a server in recovery (a standby)")
        if row is not None and row[2] != conn.info.backend_pid:
            conn.prepare_threshold = None
        await conn.set_autocommit(False)

    pool = AsyncConnectionPool(
        dsn,
        min_size=db.pool_min_size,
        max_size=db.pool_max_size,
        kwargs=connect_kwargs(dsn, db, application_name),
        configure=configure,
        open=False,
        name=application_name,
        reconnect_timeout=3600.0,
    )
    await pool.open(wait=True, timeout=max(10.0, db.connect_timeout * 2))
    return pool
