"""Eviction reads the holder's renewal: its replica's heartbeat, on the session holding the lock.

A heartbeat renews every lease of a replica at once by stamping ``leasectl_replicas`` with
``last_seen`` and the lock session's backend pid. That stamp protects a holder only when the
pid is the one in ``pg_locks``: a restarted process reusing a configured replica id must not
keep its hung predecessor's leases alive.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from leasectl.keys import int4_hash, namespace_for
from leasectl.lease_manager import LeaseManager
from leasectl.settings import CoreSettings, LeaseSettings
from tests.conftest import wait_until

QUICK = CoreSettings(
    leases=LeaseSettings(
        acquire_interval=0.1,
        heartbeat_interval=0.3,
        lease_ttl=1.0,
        safety_margin=0.5,
        eviction_grace=0.5,
    )
)


def hung_holder(dsn: str, stamp_pid: str) -> psycopg.Connection[Any]:
    """A session holding lease ``x`` that last renewed it 30 s ago, as replica ``X``.

    ``stamp_pid`` is SQL for the pid in X's heartbeat stamp (fresh ``last_seen``).
    """
    holder = psycopg.connect(dsn, autocommit=True, application_name="leasectl/X")
    holder.execute("SELECT pg_advisory_lock(%s, %s)", (namespace_for("leasectl"), int4_hash("x")))
    holder.execute(
        "INSERT INTO leasectl_leases (name, key, epoch, holder, holder_backend_pid, acquired_at,"
        " renewed_at) VALUES ('x', %s, 3, 'X', pg_backend_pid(), now() - interval '60 s',"
        " now() - interval '30 s')",
        (int4_hash("x"),),
    )
    holder.execute(
        "INSERT INTO leasectl_replicas (id, host, pid, version, last_seen, backend_pid) "
        "VALUES ('X', 'h', 1, 'v', now() + interval '1 hour', " + stamp_pid + ")"
    )
    return holder


def test_fresh_stamp_from_another_session_does_not_protect_a_hung_holder(dsn: str) -> None:
    holder = hung_holder(dsn, "pg_backend_pid() + 100000")
    candidate = LeaseManager("B", ["x"], QUICK, dsn=dsn)
    candidate.start()
    try:
        lease = candidate.wait_for("x", 10)
        assert lease.epoch == 4
        wait_until(lambda: holder.closed or _dead(holder), 5, what="hung session terminated")
    finally:
        candidate.stop()
        holder.close()


def test_fresh_stamp_from_the_holding_session_prevents_eviction(dsn: str) -> None:
    holder = hung_holder(dsn, "pg_backend_pid()")
    candidate = LeaseManager("B", ["x"], QUICK, dsn=dsn)
    candidate.start()
    try:
        deadline = time.monotonic() + 4.5  # three eviction thresholds (ttl + grace = 1.5 s)
        while time.monotonic() < deadline:
            assert candidate.lease("x") is None
            assert not _dead(holder)
            time.sleep(0.1)
    finally:
        candidate.stop()
        holder.close()


def _dead(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
        return False
    except psycopg.OperationalError:
        return True
