"""Lease validity on an injected monotonic clock: self-fencing without a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from leasectl import sql
from leasectl.errors import LeaseLost
from leasectl.lease_manager import make_replica_id
from leasectl.leases import FENCE_SQL, Lease

_FENCE_FUNCTION = Path(__file__).resolve().parents[2] / "migrations/0007_fence_function.up.sql"


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_valid_until_the_deadline_then_self_fenced() -> None:
    clock = FakeClock()
    lease = Lease("digest", 7, valid_until=105.0, clock=clock)
    assert lease.valid() and bool(lease)
    assert lease.remaining == pytest.approx(5.0)
    lease.check()
    clock.now = 104.999
    assert lease.valid()
    clock.now = 105.0  # exactly at the deadline: no longer valid
    assert not lease.valid() and not lease
    assert lease.remaining == 0.0
    assert lease.lost_reason == "ttl_expired"
    with pytest.raises(LeaseLost) as info:
        lease.check()
    assert info.value.lease == "digest" and info.value.epoch == 7
    assert "ttl expired" in str(info.value)


def test_renew_extends_but_never_shortens() -> None:
    clock = FakeClock()
    lease = Lease("a", 1, valid_until=105.0, clock=clock)
    lease._renew(103.0)
    clock.now = 104.0
    assert lease.valid()
    lease._renew(110.0)
    clock.now = 109.0
    assert lease.valid()
    clock.now = 110.0
    assert not lease.valid()


def test_loss_is_immediate_final_and_signalled() -> None:
    clock = FakeClock()
    lease = Lease("a", 3, valid_until=200.0, clock=clock)
    assert not lease.lost_event.is_set()
    lease._lose("connection_lost")
    assert not lease.valid()
    assert lease.lost_event.is_set()
    assert lease.lost_reason == "connection_lost"
    lease._renew(500.0)  # a late heartbeat cannot resurrect it
    lease._lose("other")  # the first reason stays
    assert not lease.valid() and lease.lost_reason == "connection_lost"
    with pytest.raises(LeaseLost, match="connection_lost"):
        lease.check()
    assert "lost: connection_lost" in repr(lease)


def test_fence_params_match_the_fence_sql_placeholders() -> None:
    lease = Lease("a", 9, valid_until=1.0, clock=FakeClock())
    params = lease.fence_params()
    assert params == {"lease_name": "a", "lease_epoch": 9}
    for key in params:
        assert f"%({key})s" in FENCE_SQL
    # The predicate lives in one SQL function (migration 0007); FENCE_SQL calls it.
    assert "leasectl_fence(" in FENCE_SQL
    assert "FOR KEY SHARE" in _FENCE_FUNCTION.read_text(encoding="utf-8")


def test_every_fenced_query_calls_the_one_fence_function() -> None:
    """No query spells the fence predicate by hand: it is written once, in leasectl_fence."""
    root = Path(__file__).resolve().parents[2]
    queries = sorted((root / "leasectl").rglob("*.sql")) + sorted((root / "loops").rglob("*.sql"))
    for path in queries:
        for name, query in sql.parse(path.read_text(encoding="utf-8")).items():
            code = "\n".join(line.split("--")[0] for line in query.splitlines())
            if "FOR KEY SHARE" in code:
                raise AssertionError(f"{path.name}:{name} fences by hand; call leasectl_fence")
    assert "__FENCE__" not in "".join(p.read_text(encoding="utf-8") for p in queries)


def test_replica_ids_are_unique_per_call_unless_configured() -> None:
    assert make_replica_id("fixed") == "fixed"
    assert make_replica_id() != make_replica_id()
