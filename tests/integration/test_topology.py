"""The lock connection's topology checks: PgBouncer modes, the safety inequality, Unix sockets."""

from __future__ import annotations

import os
import socket
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from leasectl.errors import DatabaseUnavailable, SafetyInequalityViolated, UnsupportedTopology
from leasectl.lease_manager import LeaseManager
from leasectl.locks import LockSession
from leasectl.settings import CoreSettings, DatabaseSettings, LeaseSettings
from tests.integration.conftest import lock_holders


def test_transaction_pooler_is_refused_naming_lock_dsn(pgbouncer: dict[str, str], dsn: str) -> None:
    with pytest.raises(UnsupportedTopology) as info:
        LockSession.connect(pgbouncer["transaction"], DatabaseSettings(), "leasectl/t-txn")
    msg = str(info.value)
    assert "transaction-mode pooler" in msg
    assert "database.lock_dsn" in msg and "session-mode pool" in msg
    # The manager refuses at start for the same reason, before taking any lock.
    manager = LeaseManager("t-txn", ["a"], CoreSettings(), dsn=pgbouncer["transaction"])
    with pytest.raises(UnsupportedTopology):
        manager.start()
    with psycopg.connect(dsn) as conn:
        assert lock_holders(conn, ["a"]) == {"a": []}


def test_a_pooled_standby_checks_its_lock_dsn_at_start_not_when_first_needed(
    pgbouncer: dict[str, str], dsn: str
) -> None:
    """leases.standby: pooled opens its lock session only when placement needs it (maybe
    hours later); a wrong lock DSN or an unsafe TCP budget must still fail the start."""
    pooled = CoreSettings(leases=LeaseSettings(placement="spread", standby="pooled"))
    via_txn = LeaseManager(
        "t-pooled-txn",
        ["a"],
        pooled,
        dsn=pgbouncer["transaction"],
        lock_dsn=pgbouncer["transaction"],
    )
    with pytest.raises(UnsupportedTopology, match="transaction-mode pooler"):
        via_txn.start()
    unsafe = CoreSettings(
        leases=LeaseSettings(placement="spread", standby="pooled", lease_ttl=8.0, safety_margin=2.0)
    )
    too_long = LeaseManager(
        "t-pooled-ineq", ["a"], unsafe, dsn=pgbouncer["transaction"], lock_dsn=dsn
    )
    with pytest.raises(SafetyInequalityViolated, match="= 10.0s exceeds D_srv = 9.0s"):
        too_long.start()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM leasectl_replicas WHERE id LIKE 't-pooled-%'"
        ).fetchone()
        assert rows == (0,)  # refused before it stamped any row
        assert lock_holders(conn, ["a"]) == {"a": []}


def test_a_pooled_standby_starts_when_its_lock_dsn_cannot_connect_yet(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A probe that cannot connect (a server at max_connections during a mass start, a
    primary restarting) is not a misconfiguration: the standby starts, says so, and the checks
    run when its lock session first opens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    nowhere = conninfo.make_conninfo(dsn, host="127.0.0.1", port=str(port), connect_timeout="2")
    pooled = CoreSettings(leases=LeaseSettings(placement="spread", standby="pooled"))
    m = LeaseManager("t-pooled-later", ["a"], pooled, dsn=dsn, lock_dsn=nowhere)
    m.start()
    try:
        assert m.standby and m.connected.is_set()
        assert "could not open a probe lock session on database.lock_dsn" in caplog.text
    finally:
        m.stop()


def test_session_pooler_is_accepted(pgbouncer: dict[str, str], dsn: str) -> None:
    with LockSession.connect(
        pgbouncer["session"], DatabaseSettings(), "leasectl/t-sess"
    ) as session:
        assert session.via_pooler  # PgBouncer invents the client-visible backend pid
        assert session.try_acquire(["a", "b"]) == {"a", "b"}
        assert session.held() == {"a", "b"}
        with psycopg.connect(dsn) as conn:
            assert lock_holders(conn, ["a", "b"]) == {
                "a": ["leasectl/t-sess"],
                "b": ["leasectl/t-sess"],
            }
        assert session.release(["a"]) == {"a"}
        assert session.held() == {"b"}
    # A lease manager works through it too (LISTEN/NOTIFY included).
    manager = LeaseManager("t-sess", ["c"], CoreSettings(), dsn=pgbouncer["session"])
    manager.start()
    try:
        lease = manager.wait_for("c", timeout=10)
        assert lease.epoch == 1
    finally:
        manager.stop()


def test_safety_inequality_is_refused_at_start_with_the_numbers(dsn: str) -> None:
    too_long = CoreSettings(leases=LeaseSettings(lease_ttl=8.0, safety_margin=2.0))
    manager = LeaseManager("t-ineq", ["a"], too_long, dsn=dsn)
    with pytest.raises(SafetyInequalityViolated) as info:
        manager.start()
    msg = str(info.value)
    assert "lease_ttl (8.0s) + safety_margin (2.0s) = 10.0s" in msg
    assert "D_srv = 9.0s" in msg
    assert "tcp_keepalives_idle=4" in msg and "tcp_user_timeout=9000ms" in msg
    # Without a user timeout D_srv is idle + interval * count, read back from the server.
    short = CoreSettings(
        database=DatabaseSettings(
            tcp_keepalives_idle=2,
            tcp_keepalives_interval=1,
            tcp_keepalives_count=2,
            tcp_user_timeout_ms=0,
        )
    )
    with pytest.raises(SafetyInequalityViolated) as info:
        LeaseManager("t-ineq2", ["a"], short, dsn=dsn).start()
    assert "= 7.0s exceeds D_srv = 4.0s" in str(info.value)
    with psycopg.connect(dsn) as conn:
        assert lock_holders(conn, ["a"]) == {"a": []}
    # The defaults satisfy it: 5 + 2 <= 9.
    ok = LeaseManager("t-ok", ["a"], CoreSettings(), dsn=dsn)
    ok.start()
    try:
        assert ok.d_srv == 9.0
        ok.wait_for("a", timeout=10)
    finally:
        ok.stop()


def test_unix_socket_connections_are_exempt(dsn: str, conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SHOW unix_socket_directories").fetchone()
    socket_dir = row[0].split(",")[0].strip() if row else ""
    if not socket_dir or not os.path.isdir(socket_dir):
        pytest.skip("the test server has no local Unix socket")
    params = conninfo.conninfo_to_dict(dsn)
    params["host"] = socket_dir
    unix_dsn = conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    settings = CoreSettings(leases=LeaseSettings(lease_ttl=30.0))  # far beyond any D_srv
    manager = LeaseManager("t-unix", ["a"], settings, dsn=unix_dsn)
    manager.start()
    try:
        assert manager.d_srv is None
        assert manager.wait_for("a", timeout=10).epoch == 1
    finally:
        manager.stop()


@pytest.mark.slow
def test_standby_is_refused_and_a_multi_host_dsn_finds_the_primary(
    standby_dsn: str, dsn: str
) -> None:
    with psycopg.connect(standby_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    with pytest.raises(DatabaseUnavailable) as info:
        LockSession.connect(standby_dsn, DatabaseSettings(), "leasectl/t-standby")
    assert "cannot open the lock connection" in str(info.value)
    with pytest.raises(DatabaseUnavailable):
        LeaseManager("t-standby", ["a"], CoreSettings(), dsn=standby_dsn).start()
    # Standby listed first: target_session_attrs=read-write skips it for the primary.
    s, p = conninfo.conninfo_to_dict(standby_dsn), conninfo.conninfo_to_dict(dsn)
    both = conninfo.make_conninfo(
        host=f"{s['host']},{p['host']}",
        port=f"{s['port']},{p['port']}",
        user=str(p.get("user", "postgres")),
        dbname=str(p["dbname"]),
    )
    with LockSession.connect(both, DatabaseSettings(), "leasectl/t-multi") as session:
        assert session.try_acquire(["a"]) == {"a"}
        with psycopg.connect(dsn) as conn:
            assert lock_holders(conn, ["a"]) == {"a": ["leasectl/t-multi"]}
