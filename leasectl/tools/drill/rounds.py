"""One round: find the holder of the target lease, inject a fault, measure the recovery.

All times are unix seconds (``time.time()``), the clock of the replicas' JSON logs. Each
wait has a deadline; a round that does not recover in time is recorded as such (and fails
the drill's ``recovered`` invariant) instead of hanging the drill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from leasectl import sql
from leasectl.tools.drill import faults
from leasectl.tools.drill.cluster import Cluster, LogLine, Replica
from leasectl.tools.drill.standby import Failover
from leasectl.tools.drill.stats import Cap

Q = sql.load("drill", package="leasectl.tools.drill")

DEADLINES = {
    "graceful": 20.0,
    "kill": 20.0,
    "stop": 45.0,
    "terminate": 20.0,
    "partition": 45.0,
    "db-restart": 60.0,
    "db-failover": 60.0,
    "pooler-restart": 30.0,
    "backend-kill-storm": 30.0,
}

#: Faults that must not move any lease: the lock connections are not touched.
NO_FLAP = ("pooler-restart", "backend-kill-storm")


@dataclass
class RoundResult:
    """What one round measured. Durations are seconds from the fault instant."""

    index: int
    kind: str
    lease: str
    victim: str
    old_epoch: int | None
    t_fault: float
    t_lift: float | None = None
    t_accept: float | None = None  # db-restart: the server accepts connections again
    t_down: float | None = None  # db-failover: the old primary is gone (its stop returned)
    new_holder: str | None = None
    new_epoch: int | None = None
    self_fence_s: float | None = None
    takeover_s: float | None = None
    first_tick_s: float | None = None
    leases_back_s: float | None = None  # db-restart/failover: all leases re-held, after t_accept
    lost_commits: int | None = None  # db-failover: commits of the old primary not promoted
    first_lost_at: float | None = None  # db-failover: the earliest of them (commit time)
    timeline: int | None = None  # db-failover: the new primary's timeline
    rebalance_s: float | None = None  # join: joined -> placement stable (leases handed over)
    rebalance_back_s: float | None = None  # join: removed -> placement stable again
    moves: int | None = None  # join: lease moves the join and the removal caused
    recovered: bool = False
    overlap_s: float = 0.0
    duplicates: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """The lease timing the drill needs to bound beliefs it cannot see logged."""

    lease_ttl: float
    d_srv: float


class RoundRunner:
    """Applies faults to the cluster's current holder and records :class:`RoundResult`."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        lease: str,
        timing: Timing,
        admin_dsn: str,
        restart_server: Callable[[], float] | None,
        failover: Callable[[], Failover] | None = None,
        after_failover: Callable[[], None] | None = None,
        restart_pooler: Callable[[], tuple[float, float]] | None = None,
        storm: Callable[[], tuple[int, float]] | None = None,
        custom: Mapping[str, Callable[[RoundRunner, int], RoundResult]] | None = None,
        settle: Callable[[], float | None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.lease = lease
        self.timing = timing
        self.admin_dsn = admin_dsn
        self.restart_server = restart_server
        self.failover = failover
        self.after_failover = after_failover
        self.restart_pooler = restart_pooler
        self.storm = storm
        self.custom = dict(custom or {})  # kinds with rounds of their own (wedge, join)
        # waits until placement has settled; the settle time, or None at its deadline
        self.settle = settle
        self.caps: list[Cap] = []

    # -- helpers ----------------------------------------------------------------------------

    def current_holder(self, timeout: float = 30.0) -> tuple[Replica, int | None]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = self.cluster.holders().get(self.lease)
            if held is not None:
                rep = self.cluster.replicas.get(held[0])
                if rep is not None and rep.alive():
                    return rep, held[1]
            time.sleep(0.05)
        raise TimeoutError(f"no replica holds lease {self.lease} after {timeout}s")

    def _acquired_after(
        self, since: float, old_epoch: int | None, timeout: float, lease: str | None = None
    ) -> LogLine | None:
        name = lease or self.lease

        def pred(line: LogLine) -> bool:
            return (
                line.action == "lease_acquired"
                and line.lease == name
                and (old_epoch is None or (line.epoch or 0) > old_epoch)
            )

        return self.cluster.wait_line(pred, since=since, timeout=timeout)

    def _ended(
        self, rep: Replica, epoch: int | None, since: float, timeout: float
    ) -> LogLine | None:
        def pred(line: LogLine) -> bool:
            return (
                line.replica == rep.replica_id
                and line.lease == self.lease
                and line.action in ("lease_lost", "lease_released")
                and (epoch is None or line.epoch == epoch)
            )

        return self.cluster.wait_line(pred, since=since, timeout=timeout)

    def _first_tick(
        self, replica: str | None, since: float, timeout: float, above: int | None = None
    ) -> LogLine | None:
        """The first ok tick of the target loop after ``since``: by ``replica``, or (None) by
        any replica under an epoch above ``above``."""

        def pred(line: LogLine) -> bool:
            return (
                (line.replica == replica if replica is not None else True)
                and (above is None or (line.epoch or 0) > above)
                and line.action == "tick_finished"
                and line.loop == self.lease
                and line.outcome == "ok"
            )

        return self.cluster.wait_line(pred, since=since, timeout=timeout)

    def _wait_exit(self, rep: Replica, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not rep.alive():
                return True
            time.sleep(0.05)
        return False

    # -- a round ----------------------------------------------------------------------------

    def run(self, index: int, kind: str) -> RoundResult:
        # The victim is the holder once placement holds still: a hand-over still under way
        # (the previous round's victim getting its leases back) would move the lease away
        # from the replica just chosen, and the round would wait for a takeover nothing needs.
        t_settle = time.time()
        settled = self.settle() if self.settle is not None else t_settle
        if kind in self.custom:
            return self.custom[kind](self, index)
        victim, old_epoch = self.current_holder()
        deadline = DEADLINES[kind]
        r = RoundResult(index, kind, self.lease, victim.replica_id, old_epoch, t_fault=0.0)
        if settled is None:
            r.notes.append(
                f"placement had not settled {time.time() - t_settle:.0f}s after the last round"
            )
        held_before = dict(self.cluster.holders())
        if kind == "graceful":
            r.t_fault = faults.sigterm(victim)
        elif kind == "kill":
            r.t_fault = faults.sigkill(victim)
            self.caps.append(Cap(victim.replica_id, r.t_fault, r.t_fault, "SIGKILL"))
        elif kind == "stop":
            r.t_fault = faults.sigstop(victim)
            self.caps.append(
                Cap(victim.replica_id, r.t_fault, r.t_fault + self.timing.lease_ttl, "SIGSTOP+ttl")
            )
        elif kind == "terminate":
            r.t_fault, pid = faults.terminate_lock_connection(self.admin_dsn, victim)
            r.notes.append(f"terminated backend {pid}")
        elif kind == "partition":
            r.t_fault = faults.partition(victim)
            self.caps.append(
                Cap(
                    victim.replica_id, r.t_fault, r.t_fault + self.timing.lease_ttl, "partition+ttl"
                )
            )
        elif kind == "db-restart":
            if self.restart_server is None:
                raise faults.FaultError("db-restart needs the embedded server")
            r.t_fault = time.time()
            r.t_accept = self.restart_server()
        elif kind == "db-failover":
            if self.failover is None:
                raise faults.FaultError("db-failover needs the drill's replicated server pair")
            fo = self.failover()
            r.t_fault, r.t_down, r.t_accept = fo.t_stop, fo.t_down, fo.t_promoted
            r.lost_commits, r.timeline = fo.lost_commits, fo.timeline
            r.first_lost_at = fo.first_lost_at
            r.notes.append(
                f"promoted to timeline {fo.timeline} {fo.t_promoted - fo.t_stop:.2f}s after the "
                f"crash; {fo.lost_commits} commit(s) of the old primary not on the new one"
            )
        elif kind == "pooler-restart":
            if self.restart_pooler is None:
                raise faults.FaultError("pooler-restart needs the drill's PgBouncer")
            r.t_fault, r.t_lift = self.restart_pooler()
        elif kind == "backend-kill-storm":
            if self.storm is None:
                raise faults.FaultError("backend-kill-storm needs the drill's database")
            r.t_fault = time.time()
            killed, r.t_lift = self.storm()
            r.notes.append(f"terminated {killed} work backend(s)")
        else:
            raise ValueError(kind)

        if kind in NO_FLAP:
            self._no_flap(r, deadline)
            return r
        try:
            self._recover(r, victim, kind, deadline, held_before)
        finally:
            self._lift(r, victim, kind, held_before)
        return r

    def _no_flap(self, r: RoundResult, deadline: float) -> None:
        """Work must resume after the fault and no lease may have moved meanwhile."""
        assert r.t_lift is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction

        def ok(line: LogLine) -> bool:
            return (
                line.action == "tick_finished" and line.loop == self.lease and line.outcome == "ok"
            )

        tick = self.cluster.wait_line(ok, since=r.t_lift, timeout=deadline)
        if tick is None:
            r.notes.append(f"no {self.lease} tick completed within {deadline}s after the fault")
        else:
            r.first_tick_s = tick.ts - r.t_fault
        # A lease lost or given up for any reason but placement (a rebalancing hand-over or
        # an operator's step-down) is a flap: the lock connections were never touched.
        flaps = [
            f"{ln.replica} {ln.action} {ln.lease}@{ln.epoch} ({ln.reason})"
            for ln in self.cluster.snapshot()
            if ln.ts >= r.t_fault
            and (
                ln.action == "lease_lost"
                or (
                    ln.action == "lease_released"
                    and not ln.reason.startswith(("rebalance", "step_down"))
                )
            )
        ]
        if flaps:
            r.notes.append("LEASE FLAPPED: " + "; ".join(flaps[:5]))
        r.recovered = tick is not None and not flaps

    def _recover(
        self,
        r: RoundResult,
        victim: Replica,
        kind: str,
        deadline: float,
        held_before: dict[str, tuple[str, int | None]],
    ) -> None:
        acq = self._acquired_after(r.t_fault, r.old_epoch, deadline)
        if acq is None:
            r.notes.append(f"no takeover within {deadline}s")
            return
        r.new_holder, r.new_epoch = acq.replica, acq.epoch
        r.takeover_s = acq.ts - r.t_fault
        if kind != "kill":
            # db-restart drops every lock connection at once: the victim's end is logged too.
            end = self._ended(victim, r.old_epoch, r.t_fault, 0.0 if kind == "stop" else 5.0)
            if end is not None:
                r.self_fence_s = end.ts - r.t_fault
        if kind in ("stop", "partition"):
            # Its last successful heartbeat started before the fault: belief ended by then.
            bound = self.timing.lease_ttl
            r.self_fence_s = min(r.self_fence_s, bound) if r.self_fence_s is not None else bound
        if kind in ("db-restart", "db-failover"):
            # The first taker may have acquired on a session the server was still to end (a
            # fast shutdown terminates the backends one by one): whoever holds the lease once
            # the server is back runs the first tick.
            tick = self._first_tick(None, acq.ts, 30.0, above=r.old_epoch)
        else:
            tick = self._first_tick(acq.replica, acq.ts, 30.0)
        if tick is not None:
            r.first_tick_s = tick.ts - r.t_fault
            if tick.replica != acq.replica:
                r.notes.append(
                    f"{acq.replica} lost it to the restart; first tick by {tick.replica}"
                )
        else:
            r.notes.append("new holder completed no tick within 30s")
        r.recovered = tick is not None
        if kind in ("db-restart", "db-failover"):
            assert r.t_accept is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
            back = []
            issued = self._max_epochs_before(r.t_fault)
            for lease in held_before:
                line = self._acquired_after(r.t_fault, None, deadline, lease=lease)
                if line is None:
                    r.notes.append(f"lease {lease} not back within {deadline}s")
                    r.recovered = False
                    continue
                back.append(line.ts)
                if (line.epoch or 0) <= issued.get(lease, 0):
                    # Any epoch ever logged counts, a bump the old primary never replicated too.
                    r.notes.append(
                        f"EPOCH NOT INCREASED: {lease} re-acquired at {line.epoch}, "
                        f"{issued[lease]} was issued before the fault"
                    )
                    r.recovered = False
            if back:
                r.leases_back_s = max(back) - r.t_accept

    def _max_epochs_before(self, t: float) -> dict[str, int]:
        """The highest epoch of each lease any replica logged acquiring before ``t``."""
        out: dict[str, int] = {}
        for line in self.cluster.snapshot():
            if line.action == "lease_acquired" and line.lease and line.ts < t and line.epoch:
                out[line.lease] = max(out.get(line.lease, 0), line.epoch)
        return out

    def _lift(
        self,
        r: RoundResult,
        victim: Replica,
        kind: str,
        held_before: dict[str, tuple[str, int | None]],
    ) -> None:
        if kind == "stop":
            # Stay stopped for longer than the TTL (and until the takeover), then wake.
            remaining = r.t_fault + self.timing.lease_ttl + 1.0 - time.time()
            if remaining > 0:
                time.sleep(remaining)
            r.t_lift = faults.sigcont(victim)
            self._zombie_check(r, victim, held_before)
        elif kind == "partition":
            remaining = r.t_fault + self.timing.d_srv + 1.0 - time.time()
            if remaining > 0:
                time.sleep(remaining)
            r.t_lift = faults.heal(victim)
            end = self._ended(victim, r.old_epoch, r.t_fault, 10.0)
            if end is None:
                r.notes.append("partitioned holder never reported its lease lost")
        elif kind == "db-failover" and self.after_failover is not None:
            self.after_failover()  # the next round needs a standby again
        elif kind in ("graceful", "kill"):
            if not self._wait_exit(victim, 40.0):
                r.notes.append("victim did not exit within 40s; killed")
                faults.sigkill(victim)
                self._wait_exit(victim, 10.0)
            if kind == "graceful" and victim.proc.returncode != 0:
                r.notes.append(f"graceful exit code {victim.proc.returncode}")

    def _committed_before_takeover(self, line: LogLine) -> bool:
        """The ledger, not the log clock, decides when a completion happened."""
        if line.tick_at is None or line.epoch is None:
            return False
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                Q["tick_committed_before_takeover"],
                {
                    "lease": line.lease,
                    "loop": line.loop,
                    "tick_at": line.tick_at,
                    "epoch": line.epoch,
                },
            ).fetchone()
        return bool(row and row[0])

    def _zombie_check(
        self, r: RoundResult, victim: Replica, held_before: dict[str, tuple[str, int | None]]
    ) -> None:
        """After SIGCONT the zombie must report its lease lost and complete no leased tick."""
        assert r.t_lift is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        end = self._ended(victim, r.old_epoch, r.t_fault, 10.0)
        if end is None:
            r.notes.append("zombie did not report its lease lost within 10s of SIGCONT")
            r.recovered = False
        else:
            r.notes.append(
                f"zombie reported lost ({end.reason}) {end.ts - r.t_lift:.2f}s after SIGCONT"
            )
        time.sleep(1.0)  # let a tick it was in the middle of finish (and be refused)
        its = {(lease, ep) for lease, (rid, ep) in held_before.items() if rid == victim.replica_id}
        refused = 0
        for line in self.cluster.snapshot():
            if line.replica != victim.replica_id or line.ts < r.t_lift:
                continue
            if line.action == "tick_finished" and (line.lease, line.epoch) in its:
                if line.outcome == "ok" and self._committed_before_takeover(line):
                    r.notes.append(
                        f"zombie's {line.loop} tick (epoch {line.epoch}) had committed before "
                        "the takeover; its log line came after SIGCONT"
                    )
                elif line.outcome == "ok":
                    r.notes.append(f"ZOMBIE TICK COMPLETED: {line.loop} epoch {line.epoch}")
                    r.recovered = False
                else:
                    refused += 1
        if refused:
            r.notes.append(f"zombie's in-flight tick(s) refused: {refused}")
