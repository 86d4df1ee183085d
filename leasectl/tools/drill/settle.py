"""When placement has settled: every drill lease on the replica placement chooses, none moving.

A round that picks "the holder" while a placement hand-over is still under way (a restarted
victim of the previous round getting its leases back, a joiner's rebalance) can fault a
replica that no longer holds the lease a few milliseconds later, and then waits in vain for a
takeover that nothing needs. So every round starts from a settled cluster, as a join does.

**Settled** means: every leased loop's lease is held by the replica placement chooses for it
(``leasectl status``'s ``placed_on``, computed from the live replicas' rows exactly as the
replicas compute it), and no lease was acquired for :data:`QUIET_S`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import psycopg

from leasectl.status import LeaseStatus, ReplicaStatus, read_status
from leasectl.tools.drill.cluster import Cluster

#: Placement must hold still this long to count as settled.
QUIET_S = 2.0
#: How long a join, a leave or a previous round's aftermath may take to settle.
DEADLINE_S = 60.0


class Settle:
    """Reads placement as the replicas see it and waits until it holds still.

    :param leases: the drill's leased loops (the leases placement spreads).
    :param namespace: ``leases.namespace`` of the replicas.
    :param lease_ttl: ``leases.lease_ttl`` (when a replica row counts as live).
    """

    def __init__(self, leases: Sequence[str], *, namespace: str | int, lease_ttl: float) -> None:
        self.leases = sorted(leases)
        self.namespace = namespace
        self.lease_ttl = lease_ttl

    def status(self, dsn: str) -> tuple[list[LeaseStatus], list[ReplicaStatus]]:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            st = read_status(
                conn, namespace=self.namespace, lease_ttl=self.lease_ttl, expected=self.leases
            )
        return [le for le in st.leases if le.name in self.leases], st.replicas

    def placed(self, dsn: str, must_have: str | None = None, must_not: str | None = None) -> bool:
        """Every lease on its chosen replica (with ``must_have`` live, ``must_not`` gone)."""
        leases, replicas = self.status(dsn)
        live = {r.id for r in replicas if r.alive}
        if must_have is not None and must_have not in live:
            return False
        if must_not is not None and must_not in live:
            return False
        return all(le.state == "held" and le.holder == le.placed_on for le in leases)

    def last_acquired(self, cluster: Cluster, since: float) -> float | None:
        times = [
            ln.ts
            for ln in cluster.snapshot()
            if ln.ts >= since and ln.action == "lease_acquired" and ln.lease in self.leases
        ]
        return max(times) if times else None

    def wait(
        self,
        cluster: Cluster,
        dsn: str,
        since: float,
        *,
        must_have: str | None = None,
        must_not: str | None = None,
        deadline_s: float = DEADLINE_S,
    ) -> float | None:
        """When placement settled after ``since`` (the last lease acquisition's log time, or
        ``since`` when nothing moved); None at the deadline."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            try:
                placed = self.placed(dsn, must_have, must_not)
            except psycopg.Error:
                placed = False
            last = self.last_acquired(cluster, since)
            if placed and time.time() - (last or since) >= QUIET_S:
                return last if last is not None else since
            time.sleep(0.2)
        return None
