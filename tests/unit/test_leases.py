"""Lease validity on an injected monotonic clock: self-fencing without a database."""

from __future__ import annotations

import pytest

from leasectl.errors import LeaseLost
from leasectl.leases import FENCE_SQL, Lease, make_replica_id


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
    assert "FOR KEY SHARE" in FENCE_SQL


def test_replica_ids_are_unique_per_call_unless_configured() -> None:
    assert make_replica_id("fixed") == "fixed"
    assert make_replica_id() != make_replica_id()
