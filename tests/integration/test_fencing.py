"""Fencing against a real PostgreSQL: guarded writes serialize with the epoch bump only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from leasectl.errors import FencingRejected, LeaseLost
from leasectl.lease_manager import LeaseManager, request_step_down
from leasectl.leases import FENCE_SQL, LeaseEvent
from leasectl.settings import CoreSettings, LeaseSettings
from tests.conftest import wait_until
from tests.integration.conftest import lock_holders
from tests.replica_proc import FENCE_LOG_DDL

FAST = CoreSettings(leases=replace(LeaseSettings(), heartbeat_interval=0.2, acquire_interval=0.2))


@pytest.fixture
def managers(dsn: str) -> Iterator[list[LeaseManager]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(FENCE_LOG_DDL)
    made: list[LeaseManager] = []
    yield made
    for m in made:
        m.stop(timeout=5)


def _start(
    made: list[LeaseManager], dsn: str, rid: str, events: list[tuple[float, LeaseEvent]]
) -> LeaseManager:
    m = LeaseManager(rid, ["w"], FAST, dsn=dsn)
    m.add_listener(lambda ev: events.append((time.monotonic(), ev)))
    m.start()
    made.append(m)
    return m


def test_long_guarded_transaction_does_not_stall_heartbeats_but_delays_the_bump(
    dsn: str, managers: list[LeaseManager]
) -> None:
    a_events: list[tuple[float, LeaseEvent]] = []
    b_events: list[tuple[float, LeaseEvent]] = []
    a = _start(managers, dsn, "fa", a_events)
    lease = a.wait_for("w", timeout=10)

    work = psycopg.connect(dsn)
    try:
        cur = work.cursor()
        lease.guard(cur)  # the lease row is now share-locked until commit
        cur.execute(
            "INSERT INTO fence_log (lease, epoch, replica) VALUES ('w', %s, 'fa')", (lease.epoch,)
        )
        # The holder's heartbeat (UPDATE renewed_at) goes on while the guarded txn is open.
        beats_before = sum(1 for _, ev in a_events if ev.kind == "heartbeat")
        wait_until(
            lambda: sum(1 for _, ev in a_events if ev.kind == "heartbeat") >= beats_before + 3,
            5,
            what="three heartbeats during the guarded transaction",
        )
        assert lease.valid()

        # A successor cannot finish its epoch bump until the guarded transaction ends.
        b = _start(managers, dsn, "fb", b_events)
        with psycopg.connect(dsn, autocommit=True) as ctl:
            request_step_down(ctl, lease="w", replica="fa", cooldown=30)
        wait_until(lambda: not lease.valid(), 5, what="a steps down")
        wait_until(
            lambda: any(
                row[0] == "Lock" and "FOR UPDATE" in row[1]
                for row in _lock_waits(dsn, "leasectl/fb")
            ),
            5,
            what="b's epoch bump waits on the row lock",
        )
        assert a.lease("w") is None and b.lease("w") is None
        committed_at = time.monotonic()
        work.commit()  # the stale holder's write was serialized before the new epoch
    finally:
        work.close()
    new = b.wait_for("w", timeout=10)
    acquired_at = next(t for t, ev in b_events if ev.kind == "acquired")
    assert acquired_at >= committed_at
    assert new.epoch == lease.epoch + 1

    # After the bump, the old epoch cannot write any more, even skipping the local check.
    with psycopg.connect(dsn) as conn:
        with pytest.raises(LeaseLost):
            lease.guard(conn.cursor())
        conn.rollback()
        cur = conn.execute(
            "INSERT INTO fence_log (lease, epoch, replica) SELECT 'w', %(lease_epoch)s, 'fa'"
            " WHERE " + FENCE_SQL,
            lease.fence_params(),
        )
        assert cur.rowcount == 0
        conn.rollback()
        with conn.transaction():
            new.guard(conn.cursor())
        rows = conn.execute("SELECT epoch, replica FROM fence_log ORDER BY id").fetchall()
    assert rows == [(lease.epoch, "fa")]


def test_superseded_epoch_is_refused_then_dropped_without_a_stacked_lock(
    dsn: str, managers: list[LeaseManager]
) -> None:
    """The database refuses a superseded epoch even while the local clock still says valid."""
    slow_beat = CoreSettings(leases=replace(LeaseSettings(), heartbeat_interval=3.0))
    a = LeaseManager("fa", ["w"], slow_beat, dsn=dsn)
    a.start()
    managers.append(a)
    lease = a.wait_for("w", timeout=10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # What a successor's bump does; the next heartbeat is ~3 s away.
        conn.execute("UPDATE leasectl_leases SET epoch = epoch + 1 WHERE name = 'w'")
        assert lease.valid()
        with pytest.raises(FencingRejected) as info:
            with conn.transaction():
                lease.guard(conn.cursor())
        assert info.value.current == lease.epoch + 1
        # The heartbeat notices the moved epoch, stops believing, gives the lock back, and
        # the manager campaigns again: a fresh epoch on top of the moved one.
        wait_until(lambda: not lease.valid(), 6, what="the holder drops the superseded lease")
        assert lease.lost_reason == "lock_missing_or_superseded"
        again = a.wait_for("w", timeout=10)
        assert again.epoch == lease.epoch + 2
        # One release must free the lock: the re-acquisition did not stack a second grant.
        request_step_down(conn, lease="w", replica="fa", cooldown=30)
        wait_until(
            lambda: lock_holders(conn, ["w"]) == {"w": []}, 5, what="lock free after step-down"
        )


def _lock_waits(dsn: str, app: str) -> list[tuple[Any, Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return [
            (r[0], r[1] or "")
            for r in c.execute(
                "SELECT wait_event_type, query FROM pg_stat_activity WHERE application_name = %s",
                (app,),
            )
        ]


def test_threads_can_share_a_lease_handle(dsn: str, managers: list[LeaseManager]) -> None:
    """Concurrent guarded transactions of one holder do not block each other."""
    a = _start(managers, dsn, "fa", [])
    lease = a.wait_for("w", timeout=10)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer() -> None:
        try:
            with psycopg.connect(dsn) as conn, conn.transaction():
                lease.guard(conn.cursor())
                barrier.wait(5)  # all four hold the row lock at once
                conn.execute(
                    "INSERT INTO fence_log (lease, epoch, replica) VALUES ('w', %s, 'fa')",
                    (lease.epoch,),
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM fence_log").fetchone() == (4,)
