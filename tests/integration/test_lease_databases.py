"""Advisory locks are per database: leases in two databases on one server never interact.

Regression: the campaign joined ``pg_locks`` without a database filter, so a candidate in
database B saw database A's holder of the same key as a "mismatched" holder and, after the
eviction threshold, terminated it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from leasectl.lease_manager import LeaseManager
from leasectl.migrate import migrate
from leasectl.settings import CoreSettings, LeaseSettings
from tests.conftest import _create_db, _drop_db

# Eviction threshold ttl + grace = 1.5 s, so the old bug fired within a couple of seconds.
QUICK = CoreSettings(
    leases=LeaseSettings(
        acquire_interval=0.1,
        heartbeat_interval=0.3,
        lease_ttl=1.0,
        safety_margin=0.5,
        eviction_grace=0.5,
    )
)


@pytest.fixture
def second_dsn(server_dsn: str) -> Iterator[str]:
    dsn = _create_db(server_dsn)
    migrate(dsn)
    try:
        yield dsn
    finally:
        _drop_db(server_dsn, dsn)


def test_same_lease_names_in_two_databases_do_not_evict_each_other(
    dsn: str, second_dsn: str
) -> None:
    managers: list[LeaseManager] = []
    try:
        a = LeaseManager("A-db1", ["x"], QUICK, dsn=dsn)
        a.start()
        managers.append(a)
        lease_a = a.wait_for("x", 5)
        c = LeaseManager("C-db2", ["x"], QUICK, dsn=second_dsn)
        c.start()
        managers.append(c)
        lease_c = c.wait_for("x", 5)  # no conflict with database 1
        b = LeaseManager("B-db2", ["x"], QUICK, dsn=second_dsn)
        b.start()
        managers.append(b)
        # Three eviction thresholds of B campaigning against C (and, wrongly, A).
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            assert lease_a.valid(), f"A lost its lease: {lease_a.lost_reason}"
            assert lease_c.valid(), f"C lost its lease: {lease_c.lost_reason}"
            assert b.lease("x") is None
            time.sleep(0.05)
        assert lease_a.epoch == 1 and lease_c.epoch == 1
    finally:
        for m in managers:
            m.stop()


def test_campaign_and_holders_see_only_this_databases_holder(dsn: str, second_dsn: str) -> None:
    """One campaign row per wanted lease, naming this database's holder only."""
    from leasectl.locks import LockSession

    managers: list[LeaseManager] = []
    try:
        a = LeaseManager("A-db1", ["x"], QUICK, dsn=dsn)
        a.start()
        managers.append(a)
        a.wait_for("x", 5)
        c = LeaseManager("C-db2", ["x"], QUICK, dsn=second_dsn)
        c.start()
        managers.append(c)
        c.wait_for("x", 5)
        with LockSession.connect(second_dsn, QUICK.database, "probe") as probe:
            c_pid = probe.holders(["x"])["x"].pid
            rows = probe.campaign(["x"])
            session = a._loop.session  # noqa: SLF001 - which backend a's lock session is
            a_pid = session.backend_pid if session else None
        assert len(rows) == 1, rows
        name, got, _age, holder_pid, row_pid, holder, holder_gone = rows[0]
        assert (name, got, holder, holder_gone) == ("x", False, "C-db2", False)
        assert holder_pid == row_pid == c_pid != a_pid
    finally:
        for m in managers:
            m.stop()
