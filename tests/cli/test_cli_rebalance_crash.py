"""A SIGKILL right after a rebalance is taken over as fast as any other crash (issue 20).

Three ``leasectl run`` replicas, default lease settings: two settle, a third joins, and the
first lease a rebalance hands it is acquired; the receiver is SIGKILLed within a second of
that. Before the fix every survivor honoured the hand-over reservation "for" the dead
receiver (three placement steps + 1 s) and the lease was taken 2.1 s later; now the
reservation ends with its receiver and the next candidate takes the lease as it takes any
crashed holder's: its watcher's ``replica_gone`` (milliseconds), at worst its next campaign.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import psycopg

from leasectl.placement import Replica, choose
from tests.cli.conftest import LEASES, Cluster, cli_env, kill_group, write_config
from tests.conftest import wait_until

#: LeaseSettings' acquire_interval x (1 + acquire_jitter): `leasectl timing`'s crash bound.
CRASH_BOUND = 1.2


def _joiner(first: list[str]) -> str:
    """A replica id that placement gives at least one lease once it joins ``first``."""
    for i in range(3, 200):
        rid = f"r{i}"
        view = [Replica(x, frozenset(LEASES)) for x in [*first, rid]]
        if rid in choose(LEASES, view).values():
            return rid
    raise AssertionError("no joiner id wins a lease")


def _events(dsn: str, since: float) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(
            "SELECT lease, event, replica, reason, extract(epoch FROM at)::float8 "
            "FROM leasectl_lease_events WHERE at >= to_timestamp(%s) ORDER BY id",
            (since,),
        ).fetchall()


def _db_now(dsn: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def test_a_sigkill_right_after_a_rebalance_is_taken_over_like_any_crash(
    dsn: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "leasectl.yaml", dsn)
    cluster = Cluster(dsn, config, cli_env(config), tmp_path)
    try:
        for rid in ("r1", "r2"):
            cluster.start(rid)
        cluster.wait_settled()
        joiner = _joiner(["r1", "r2"])
        joined_at = _db_now(dsn)
        cluster.start(joiner)

        def handed() -> tuple[str, float] | None:
            events = _events(dsn, joined_at)
            for i, (lease, event, _replica, reason, _) in enumerate(events):
                if event == "released" and reason == f"rebalance: to {joiner}":
                    for lease2, event2, replica2, _, at in events[i + 1 :]:
                        if lease2 == lease and event2 == "acquired" and replica2 == joiner:
                            return lease, at
            return None

        lease, acquired_at = wait_until(
            handed, timeout=60, interval=0.02, what="a rebalance hand-over to the joiner"
        )
        kill_group(cluster.replicas[joiner].proc, signal.SIGKILL)
        killed_at = _db_now(dsn)
        assert killed_at - acquired_at < 1.0, "the kill came too late to test the window"

        def taken() -> float | None:
            for lease2, event, replica, _, at in _events(dsn, killed_at - 0.01):
                if lease2 == lease and event == "acquired" and replica != joiner:
                    return float(at)
            return None

        took = wait_until(taken, timeout=15, interval=0.02, what=f"{lease} taken again") - killed_at
        # 2.1 s before the fix (the reservation for the dead receiver); now the crash bound.
        assert took < CRASH_BOUND, f"{lease} taken {took:.3f}s after the kill"
    finally:
        cluster.stop_all()
