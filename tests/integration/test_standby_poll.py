"""The standby's poll (leasectl_standby_poll, migration 0012) on a real server: the row it
stamps, the view it resends only on change, the holders it reports, the ids it refuses."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from leasectl.lease_manager import LeaseManager, request_step_down
from leasectl.locks import LockSession
from leasectl.settings import CoreSettings, DatabaseSettings, LeaseSettings
from leasectl.standby import StandbySession, StandbyView
from tests.conftest import one, wait_until

LEASES = ["sp-a", "sp-b"]


def poll(s: StandbySession, rid: str, seen: str = "", **kw: Any) -> StandbyView | None:
    args: dict[str, Any] = dict(
        host="h",
        pid=1,
        version="t",
        may_lead=True,
        loops=[],
        labels=[],
        campaigns_for=LEASES,
        preferred_for=[],
        names=LEASES,
        live_s=5.0,
    )
    args.update(kw)
    return s.poll(rid, seen=seen, **args)


def test_the_poll_stamps_a_standby_and_resends_the_view_only_on_change(dsn: str) -> None:
    db = DatabaseSettings()
    a = StandbySession.connect(dsn, db, "leasectl/a/standby")
    b = StandbySession.connect(dsn, db, "leasectl/b/standby")
    try:
        first = poll(a, "a")
        assert first is not None and first.replicas is not None
        assert [r.id for r in first.replicas] == ["a"]
        assert first.holders == {"sp-a": None, "sp-b": None}
        with psycopg.connect(dsn, autocommit=True) as c:
            row = c.execute(
                "SELECT standby, backend_pid FROM leasectl_replicas WHERE id = 'a'"
            ).fetchone()
        assert row == (True, None)

        same = poll(a, "a", first.view_hash)
        assert same is not None and same.replicas is None  # nothing changed: not resent

        joined = poll(b, "b")  # a second standby joins
        assert joined is not None
        again = poll(a, "a", same.view_hash)
        assert again is not None and again.replicas is not None
        assert sorted(r.id for r in again.replicas) == ["a", "b"]

        poll(b, "b", campaigns_for=["sp-a"])  # b's candidacy changes
        changed = poll(a, "a", again.view_hash)
        assert changed is not None and changed.replicas is not None
        assert {r.id: r.campaigns_for for r in changed.replicas}["b"] == frozenset({"sp-a"})

        # The same id from another process while the row is fresh: refused.
        assert poll(b, "a", pid=2) is None
    finally:
        a.close()
        b.close()


def test_the_poll_reports_who_holds_each_lease(dsn: str) -> None:
    db = DatabaseSettings()
    s = StandbySession.connect(dsn, db, "leasectl/w/standby")
    lock = LockSession.connect(dsn, db, "leasectl/holder")
    try:
        assert lock.try_acquire(["sp-a"]) == {"sp-a"}
        [(_, epoch)] = lock.bump_epoch(["sp-a"], "holder", "test")
        seen = poll(s, "w")
        assert seen is not None
        assert seen.holders == {"sp-a": "holder", "sp-b": None}
        lock.hand_over(["sp-a"], [epoch], "holder", "test")  # the graceful release
        assert poll(s, "w", seen.view_hash).holders == {"sp-a": None, "sp-b": None}  # type: ignore[union-attr]
        # A holder whose lock session ends (a crash) reads as free too.
        assert lock.try_acquire(["sp-a"]) == {"sp-a"}
        lock.bump_epoch(["sp-a"], "holder", "test")
        assert poll(s, "w", seen.view_hash).holders["sp-a"] == "holder"  # type: ignore[union-attr]
        pid = lock.backend_pid
        lock.close()
        # The server ends the backend after the client has gone: the session has ended once
        # its pg_stat_activity row is gone (reading at once raced that exit under load).
        with psycopg.connect(dsn, autocommit=True) as c:
            wait_until(
                lambda: one(
                    c.execute(
                        "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", (pid,)
                    )
                )[0],
                timeout=10,
                what="the holder's lock session ended",
            )
        after = poll(s, "w", seen.view_hash)
        assert after is not None and after.holders == {"sp-a": None, "sp-b": None}
    finally:
        s.close()
        lock.close()


def test_a_step_down_of_a_standby_replica_reaches_it_through_its_poll(dsn: str) -> None:
    """``step-down --replica R`` is a NOTIFY, which only lock sessions hear; a standby R reads
    the same request from its row, and a new process under the id does not inherit it."""
    s = StandbySession.connect(dsn, DatabaseSettings(), "leasectl/dr/standby")
    try:
        first = poll(s, "dr")
        assert first is not None and first.drain is None
        with psycopg.connect(dsn, autocommit=True) as conn:
            request_step_down(conn, replica="dr", cooldown=30.0)
            request_step_down(conn, replica="other", cooldown=30.0)  # nobody else's row moves
        drained = poll(s, "dr")
        assert drained is not None and drained.drain is not None
        age, cooldown = drained.drain
        assert 0.0 <= age < 30.0 and cooldown == 30.0
        with psycopg.connect(dsn, autocommit=True) as conn:
            request_step_down(conn, replica="dr")  # no --cooldown: the replica's own default
        default = poll(s, "dr")
        assert default is not None and default.drain is not None and default.drain[1] is None
        # The process that had the id stopped; a new one (another pid) starts clean.
        s.stopped("dr")
        fresh = poll(s, "dr", pid=2)
        assert fresh is not None and fresh.drain is None
    finally:
        s.close()


def test_a_drained_standby_manager_stays_away_without_a_lock_session(dsn: str) -> None:
    """Three pooled replicas and one lease: holder, heir and one standby. ``step-down
    --replica <the standby>`` withdraws its candidacy (peers rank by its row) while it stays a
    standby: it read the request through the pooler-side poll, not a NOTIFY."""
    pooled = CoreSettings(
        leases=LeaseSettings(placement="spread", standby="pooled", standby_after=2.0)
    )
    lease = LEASES[:1]
    managers = [LeaseManager(f"dr-{i}", lease, pooled, dsn=dsn) for i in range(3)]
    for m in managers:
        m.start()
    try:
        # Settled: the lease held and the same one replica a standby for 3 s on end (right
        # after start every replica is a standby until its first poll).
        since: dict[str, float] = {}

        def settled() -> LeaseManager | None:
            standbys = [m for m in managers if m.standby]
            if len(standbys) != 1 or not any(m.held() for m in managers):
                since.clear()
                return None
            first = since.setdefault(standbys[0].replica_id, time.monotonic())
            return standbys[0] if time.monotonic() - first >= 3.0 else None

        standby = wait_until(settled, 30, what="one replica neither holder nor heir: a standby")
        with psycopg.connect(dsn, autocommit=True) as conn:

            def campaigns_for() -> list[str]:
                row = conn.execute(
                    "SELECT campaigns_for FROM leasectl_replicas WHERE id = %s",
                    (standby.replica_id,),
                ).fetchone()
                assert row is not None
                return list(row[0])

            assert campaigns_for() == lease
            request_step_down(conn, replica=standby.replica_id, cooldown=60.0)
            wait_until(lambda: campaigns_for() == [], 10, what="the drained standby withdraws")
        assert standby.standby  # it never needed a lock session to hear it
        assert all(standby.core.state.cooldown_until[n] > standby.clock() + 50 for n in lease)
    finally:
        for m in managers:
            m.stop()


def test_a_standby_poll_tells_the_lock_sessions_when_a_holder_crashed(dsn: str) -> None:
    """The poll that finds a lease whose holder renewed it, never released it and whose lock
    session is gone says ``replica_gone`` on the control channel (the heir listens there),
    until the lease is taken; a graceful release says nothing."""
    db = DatabaseSettings()
    s = StandbySession.connect(dsn, db, "leasectl/cw/standby")
    heir = LockSession.connect(dsn, db, "leasectl/cw-heir")
    heir.listen_control()

    def gone_said() -> list[str]:
        said = [json.loads(p) for p in heir.wait_notify(0.5)]
        return [m["replica"] for m in said if m.get("action") == "replica_gone"]

    try:
        graceful = LockSession.connect(dsn, db, "leasectl/cw-graceful")
        assert graceful.try_acquire(["sp-b"]) == {"sp-b"}
        [(_, epoch)] = graceful.bump_epoch(["sp-b"], "cw-graceful", "test")
        graceful.hand_over(["sp-b"], [epoch], "cw-graceful", "test")
        graceful.close()
        poll(s, "cw")
        assert "cw-graceful" not in gone_said()

        crashing = LockSession.connect(dsn, db, "leasectl/cw-crash")
        assert crashing.try_acquire(["sp-a"]) == {"sp-a"}
        crashing.bump_epoch(["sp-a"], "cw-crash", "test")
        poll(s, "cw")
        assert "cw-crash" not in gone_said()  # alive: nothing said
        crashing.close()  # no release: as a SIGKILL leaves it
        wait_until(
            lambda: poll(s, "cw") is not None and "cw-crash" in gone_said(),
            10,
            what="a standby poll says the crashed holder is gone",
        )
        assert heir.try_acquire(["sp-a"]) == {"sp-a"}
        heir.bump_epoch(["sp-a"], "cw-heir", "test")  # taken: the row names a live holder
        gone_said()  # drain what the poll above may have sent before the take-over
        poll(s, "cw")
        assert gone_said() == []
    finally:
        s.close()
        heir.close()
