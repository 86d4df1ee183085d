"""The standby's poll (leasectl_standby_poll, migration 0012) on a real server: the row it
stamps, the view it resends only on change, the holders it reports, the ids it refuses."""

from __future__ import annotations

from typing import Any

import psycopg

from leasectl.locks import LockSession
from leasectl.settings import DatabaseSettings
from leasectl.standby import StandbySession, StandbyView

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
        lock.close()
        after = poll(s, "w", seen.view_hash)
        assert after is not None and after.holders == {"sp-a": None, "sp-b": None}
    finally:
        s.close()
        lock.close()
