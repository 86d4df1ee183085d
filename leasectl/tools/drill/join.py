"""The ``join`` fault: a replica joins the running cluster, then leaves it again.

Spread placement (rendezvous hashing with bounded load) gives a joining replica the leases it
ranks best for, and the holders hand them over at a tick boundary through the normal release +
NOTIFY path. A round starts one more ``leasectl run`` (an extra slot with the same config),
whose id is drawn so that placement gives it at least one lease (a join that moves nothing
measures nothing), waits until placement is stable, then SIGTERMs it and waits until
placement is stable again.

**Stable** is :mod:`leasectl.tools.drill.settle`'s "settled": every leased loop's lease on
the replica placement chooses for it, and none acquired for a quiet period.

Measured: **rebalance** (join → the last hand-over's acquisition, once stable) and
**rebalance back** (SIGTERM → the last acquisition once stable again). Checked over the round:
every release was a placement hand-over (reason ``rebalance…``) or the leaving replica's own
``shutdown`` release; no ``lease_lost``, no eviction; no lease moved twice while joining
(hysteresis); no leased tick interrupted (the ledger's ``lost`` / ``cancelled`` outcomes, or
a slot left ``running``). Overlaps are checked over the whole run by ``no_overlap``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from leasectl import placement
from leasectl.tools.drill import faults
from leasectl.tools.drill.cluster import Cluster, LogLine
from leasectl.tools.drill.liveness import read_ledger
from leasectl.tools.drill.rounds import RoundResult, RoundRunner
from leasectl.tools.drill.settle import DEADLINE_S, Settle

#: Generations tried for a joiner id that placement gives a lease to.
ID_ATTEMPTS = 200


class JoinRounds:
    """Join rounds: start slot ``slot`` (one past the cluster's), wait, stop it, wait.

    :param leases: the drill's leased loops (the leases placement spreads).
    :param namespace: ``leases.namespace`` of the replicas.
    :param lease_ttl: ``leases.lease_ttl`` (when a replica row counts as live).
    """

    def __init__(
        self, slot: int, leases: Sequence[str], *, namespace: str | int, lease_ttl: float
    ) -> None:
        self.slot = slot
        self.leases = sorted(leases)
        self.namespace = namespace
        self.lease_ttl = lease_ttl
        self.settle = Settle(leases, namespace=namespace, lease_ttl=lease_ttl)

    # -- placement as the replicas see it ------------------------------------------------------

    def _joiner_generation(self, cluster: Cluster, dsn: str) -> tuple[int, list[str]]:
        """A generation whose replica id placement would give at least one lease, and those."""
        _, replicas = self.settle.status(dsn)
        live = [r for r in replicas if r.alive and r.may_lead]
        model = next((r for r in live if r.campaigns_for), None)
        campaigns = frozenset(model.campaigns_for) if model else frozenset(self.leases)
        prefers = frozenset(model.preferred_for) if model else frozenset()
        view = [
            placement.Replica(
                r.id,
                frozenset(r.campaigns_for),
                frozenset(r.preferred_for),
                frozenset(r.wedged),
                r.live_for_s or 0.0,
                r.labels,
            )
            for r in live
        ]
        first = cluster.next_generation(self.slot)
        for gen in range(first, first + ID_ATTEMPTS):
            rid = cluster.replica_id(self.slot, gen)
            plan = placement.Placement([*view, placement.Replica(rid, campaigns, prefers)])
            won = [n for n in self.leases if plan.choose(n) == rid]
            if won:
                return gen, won
        return first, []

    def _wait_stable(
        self, runner: RoundRunner, since: float, must_have: str | None, must_not: str | None
    ) -> float | None:
        """When placement became stable after ``since``; None at the deadline."""
        return self.settle.wait(
            runner.cluster, runner.admin_dsn, since, must_have=must_have, must_not=must_not
        )

    # -- a round -------------------------------------------------------------------------------

    def run(self, runner: RoundRunner, index: int) -> RoundResult:
        cluster = runner.cluster
        # Start from a settled cluster: moves still under way from the previous round (a
        # restarted replica getting its leases back) are not this join's.
        t_settle = time.time()
        settled = self._wait_stable(runner, t_settle, must_have=None, must_not=None)
        gen, won = self._joiner_generation(cluster, runner.admin_dsn)
        t_join = time.time()
        rep = cluster.start(self.slot, generation=gen)
        r = RoundResult(index, "join", ",".join(won) or runner.lease, rep.replica_id, None, t_join)
        r.notes.append(
            f"joined {rep.replica_id}; placement gives it {', '.join(won) or 'nothing'}"
            + (f" (placement settled for {t_join - t_settle:.1f}s first)" if settled else "")
        )
        if settled is None:
            r.notes.append(f"placement was not stable within {DEADLINE_S:.0f}s before the join")
        ok = True
        try:
            stable = self._wait_stable(runner, t_join, must_have=rep.replica_id, must_not=None)
            if stable is None:
                r.notes.append(f"placement not stable within {DEADLINE_S:.0f}s of the join")
                ok = False
            else:
                r.rebalance_s = stable - t_join
                held = [
                    ln.lease
                    for ln in cluster.snapshot()
                    if ln.ts >= t_join
                    and ln.action == "lease_acquired"
                    and ln.replica == rep.replica_id
                ]
                r.notes.append(f"joiner took {', '.join(str(x) for x in held) or 'nothing'}")
            t_joined = time.time()
        finally:
            r.t_lift = faults.sigterm(rep)
        deadline = time.monotonic() + 40.0
        while rep.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if rep.alive():
            r.notes.append("the joiner did not exit within 40s of SIGTERM; killed")
            faults.sigkill(rep)
            ok = False
        elif rep.proc.returncode != 0:
            r.notes.append(f"the joiner exited with {rep.proc.returncode}")
            ok = False
        cluster.slots.pop(self.slot, None)  # not a member the drill restores
        back = self._wait_stable(runner, r.t_lift, must_have=None, must_not=rep.replica_id)
        if back is None:
            r.notes.append(f"placement not stable within {DEADLINE_S:.0f}s of the leave")
            ok = False
        else:
            r.rebalance_back_s = back - r.t_lift
        t_end = time.time()
        ok = self._graceful(runner, r, rep.replica_id, t_join, t_joined, t_end) and ok
        r.recovered = ok
        return r

    def _graceful(
        self,
        runner: RoundRunner,
        r: RoundResult,
        joiner: str,
        t_join: float,
        t_joined: float,
        t_end: float,
    ) -> bool:
        """Every move a hand-over: no loss, no eviction, no ping-pong, no interrupted tick."""
        lines = [ln for ln in runner.cluster.snapshot() if t_join <= ln.ts <= t_end]
        bad: list[str] = []
        for ln in lines:
            if ln.lease is not None and ln.lease not in self.leases:
                continue
            if ln.action == "lease_lost":
                bad.append(f"{ln.replica} lost {ln.lease}@{ln.epoch} ({ln.reason})")
            elif ln.action == "lease_evicted":
                bad.append(f"{ln.replica} evicted the holder of {ln.lease}")
            elif ln.action == "lease_released" and not (
                ln.reason.startswith("rebalance")
                or (ln.replica == joiner and ln.reason == "shutdown")
            ):
                bad.append(f"{ln.replica} released {ln.lease}@{ln.epoch} ({ln.reason})")
        moves: dict[str, list[str]] = {}
        for ln in lines:
            if ln.action == "lease_acquired" and ln.lease in self.leases and ln.ts <= t_joined:
                moves.setdefault(ln.lease, []).append(
                    f"{ln.replica}@{ln.epoch} +{ln.ts - t_join:.1f}s"
                )
        r.moves = sum(1 for ln in lines if ln.action == "lease_acquired" and ln.lease)
        for lease, went in moves.items():
            if len(went) > 1:
                bad.append(
                    f"{lease} acquired {len(went)} times while the joiner settled (a lease "
                    "moves at most once per rebalance): " + ", ".join(went)
                )
        bad += self._interrupted(runner, t_join, t_end)
        bad += _interrupted_in_logs(lines, self.leases)
        for b in bad[:10]:
            r.notes.append("NOT GRACEFUL: " + b)
        if not bad:
            r.notes.append(f"graceful: {r.moves} hand-over(s), every release a placement one")
        return not bad

    def _interrupted(self, runner: RoundRunner, t_join: float, t_end: float) -> list[str]:
        """Slots of the leased loops begun in the round whose ledger row says interrupted."""
        rows = read_ledger(runner.admin_dsn, self.leases, t_join - 60.0)
        out = []
        for row in rows:
            began = row.started_at
            if began is None or not t_join <= began <= t_end:
                continue
            if row.outcome in ("lost", "cancelled") or (
                row.outcome == "running" and began < t_end - 5.0
            ):
                out.append(f"{row.loop} slot {row.tick_at:.0f} {row.outcome} ({row.replica})")
        return out


def _interrupted_in_logs(lines: Sequence[LogLine], leases: Sequence[str]) -> list[str]:
    return [
        f"{ln.replica}'s tick of {ln.loop} ended {ln.outcome}"
        for ln in lines
        if ln.action == "tick_finished"
        and ln.loop in leases
        and ln.outcome in ("lost", "cancelled")
    ]
