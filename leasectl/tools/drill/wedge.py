"""The ``wedge`` fault: one replica's leased tick never returns and ignores cancellation.

The drill's replicas run :mod:`.drill_app` (the App under test plus the drill-only loop
:data:`~.wedge_loop.WEDGE_LOOP`). A round creates the flag file of the loop's current holder;
that replica's next tick of the loop blocks (``drill_wedge_blocked`` in its log: the wedge
start). Then, with nothing faked, the daemon's watchdog must notice that the tick outlived
``timeout + scheduler.wedge_grace``, log ``loop_wedged``, record the loop in its
``leasectl_replicas.wedged`` and give the lease up (``lease_released``, reason
``wedged_tick``), and another replica must take the lease and complete the loop's next slot.
The drill then removes the flag: the stuck call returns, and its fenced write must be refused
(its ``tick_finished`` is not ``ok`` and no row under the wedged epoch exists), after which
the replica campaigns for the loop again (``loop_unwedged``).

Measured from the wedge start: **takeover** (another replica's ``lease_acquired``), **first
tick** (another replica completes the next slot: what the issue's bound is about) and
**self-fence** (the wedged replica's release).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import psycopg

from leasectl import sql
from leasectl.tools.drill.cluster import LogLine, Replica
from leasectl.tools.drill.rounds import RoundResult, RoundRunner
from leasectl.tools.drill.wedge_loop import WEDGE_INTERVAL, WEDGE_LOOP, WEDGE_TIMEOUT

Q = sql.load("wedge", package="leasectl.tools.drill")

#: The drill's ``scheduler.wedge_grace`` when it runs wedge rounds (the default is 30 s).
WEDGE_GRACE = 3.0
#: How many times a round looks for a holder that actually wedges (a rebalance hand-over can
#: move the lease between the flag and the next tick).
ATTEMPTS = 3


def prepare(dsn: str) -> None:
    """Create the table the wedged tick's late write goes to (it must stay without one)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(Q["create_wedge_writes"])


class WedgeRounds:
    """Wedge rounds against the cluster's holder of :data:`WEDGE_LOOP`.

    :param flag_dir: ``$LEASECTL_DRILL_WEDGE_DIR`` of every replica.
    :param wedge_grace: the replicas' ``scheduler.wedge_grace``.
    """

    def __init__(self, flag_dir: Path, wedge_grace: float = WEDGE_GRACE) -> None:
        self.flag_dir = flag_dir
        self.wedge_grace = wedge_grace
        flag_dir.mkdir(parents=True, exist_ok=True)

    def lift_all(self) -> None:
        """Unblock every wedged tick (clean-up: a stuck tick would hold up the drain)."""
        for flag in self.flag_dir.glob("*"):
            flag.unlink(missing_ok=True)

    def _holder(self, runner: RoundRunner, timeout: float = 30.0) -> tuple[Replica, int | None]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = runner.cluster.holders().get(WEDGE_LOOP)
            if held is not None:
                rep = runner.cluster.replicas.get(held[0])
                if rep is not None and rep.alive():
                    return rep, held[1]
            time.sleep(0.05)
        raise TimeoutError(f"no replica holds lease {WEDGE_LOOP} after {timeout}s")

    def _wedge(
        self, runner: RoundRunner, r: RoundResult
    ) -> tuple[Replica, int | None, LogLine] | None:
        """Flag the holder until one of its ticks blocks; (victim, epoch, blocked line)."""
        for _ in range(ATTEMPTS):
            victim, epoch = self._holder(runner)
            flag = self.flag_dir / victim.replica_id
            t_flag = time.time()
            flag.write_text("wedged by leasectl drill\n")

            def blocked(line: LogLine, rid: str = victim.replica_id) -> bool:
                return line.action == "drill_wedge_blocked" and line.replica == rid

            line = runner.cluster.wait_line(blocked, since=t_flag, timeout=3 * WEDGE_INTERVAL + 5)
            if line is not None:
                r.notes.append(
                    f"tick {line.tick_at} blocked {line.ts - t_flag:.2f}s after the flag"
                )
                return victim, line.epoch if line.epoch is not None else epoch, line
            flag.unlink(missing_ok=True)
            r.notes.append(f"{victim.replica_id}'s tick did not block (lease moved?); retrying")
        return None

    def run(self, runner: RoundRunner, index: int) -> RoundResult:
        r = RoundResult(index, "wedge", WEDGE_LOOP, "", None, t_fault=time.time())
        got = self._wedge(runner, r)
        if got is None:
            r.notes.append(f"no holder of {WEDGE_LOOP} wedged in {ATTEMPTS} attempts")
            return r
        victim, epoch, blocked = got
        r.victim, r.old_epoch, r.t_fault = victim.replica_id, epoch, blocked.ts
        ok = True
        try:
            ok = self._recover(runner, r, victim, blocked)
        finally:
            r.t_lift = time.time()
            (self.flag_dir / victim.replica_id).unlink(missing_ok=True)
        ok = self._late_write_refused(runner, r, victim, blocked) and ok
        r.recovered = ok
        return r

    def _recover(
        self, runner: RoundRunner, r: RoundResult, victim: Replica, blocked: LogLine
    ) -> bool:
        cluster, vid = runner.cluster, victim.replica_id
        bound = WEDGE_TIMEOUT + self.wedge_grace + 15.0
        ok = True

        def wedged(line: LogLine) -> bool:
            return line.action == "loop_wedged" and line.replica == vid and line.loop == WEDGE_LOOP

        if cluster.wait_line(wedged, since=blocked.ts, timeout=bound) is None:
            r.notes.append(f"no loop_wedged from {vid} within {bound:.0f}s")
            ok = False

        def released(line: LogLine) -> bool:
            return (
                line.action in ("lease_released", "lease_lost")
                and line.replica == vid
                and line.lease == WEDGE_LOOP
            )

        rel = cluster.wait_line(released, since=blocked.ts, timeout=5.0)
        if rel is not None:
            r.self_fence_s = rel.ts - r.t_fault
            r.notes.append(f"{vid} gave the lease up ({rel.action}: {rel.reason})")

        def acquired(line: LogLine) -> bool:
            return (
                line.action == "lease_acquired"
                and line.lease == WEDGE_LOOP
                and line.replica != vid
                and (r.old_epoch is None or (line.epoch or 0) > r.old_epoch)
            )

        acq = cluster.wait_line(acquired, since=blocked.ts, timeout=bound)
        if acq is None:
            r.notes.append(f"no other replica took {WEDGE_LOOP} within {bound:.0f}s")
            return False
        r.new_holder, r.new_epoch, r.takeover_s = acq.replica, acq.epoch, acq.ts - r.t_fault
        wedged_slot = _when(blocked.tick_at)

        def next_slot(line: LogLine) -> bool:
            return (
                line.action == "tick_finished"
                and line.loop == WEDGE_LOOP
                and line.outcome == "ok"
                and line.replica != vid
                and _when(line.tick_at) > wedged_slot
            )

        tick = cluster.wait_line(next_slot, since=acq.ts, timeout=30.0)
        if tick is None:
            r.notes.append("no other replica completed the loop's next slot within 30s")
            ok = False
        else:
            r.first_tick_s = tick.ts - r.t_fault
        # The replica reports the loop wedged in its row (what `leasectl status` shows).
        deadline = time.monotonic() + 10.0
        reported = False
        while time.monotonic() < deadline and not reported:
            reported = WEDGE_LOOP in _wedged_in_row(runner.admin_dsn, vid)
            if not reported:
                time.sleep(0.2)
        if reported:
            r.notes.append(f"leasectl_replicas.wedged of {vid} lists {WEDGE_LOOP}")
        else:
            r.notes.append(f"{vid} never reported {WEDGE_LOOP} wedged in leasectl_replicas")
            ok = False
        return ok

    def _late_write_refused(
        self, runner: RoundRunner, r: RoundResult, victim: Replica, blocked: LogLine
    ) -> bool:
        """After the flag is gone: the stuck tick's fenced write is refused; it campaigns again."""
        assert r.t_lift is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        vid = victim.replica_id

        def late(line: LogLine) -> bool:
            return (
                line.action == "tick_finished"
                and line.replica == vid
                and line.loop == WEDGE_LOOP
                and line.tick_at == blocked.tick_at
            )

        ok = True
        line = runner.cluster.wait_line(late, since=blocked.ts, timeout=10.0)
        if line is None:
            r.notes.append("the wedged tick did not finish within 10s of the flag's removal")
            ok = False
        elif line.outcome == "ok":
            r.notes.append(f"WEDGED TICK'S LATE WRITE ACCEPTED (epoch {line.epoch})")
            ok = False
        else:
            r.notes.append(f"the wedged tick's late write was refused ({line.outcome})")
        with psycopg.connect(runner.admin_dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                Q["wedge_writes_of"],
                {"replica": vid, "epoch": r.old_epoch, "slot": blocked.tick_at},
            ).fetchone()
        if row and row[0]:
            r.notes.append(f"LATE WRITE COMMITTED under the wedged epoch {r.old_epoch}")
            ok = False

        def unwedged(ln: LogLine) -> bool:
            return ln.action == "loop_unwedged" and ln.replica == vid and ln.loop == WEDGE_LOOP

        if runner.cluster.wait_line(unwedged, since=r.t_lift, timeout=10.0) is None:
            r.notes.append(f"{vid} did not report {WEDGE_LOOP} unwedged within 10s")
            ok = False
        return ok


def _when(tick_at: str | None) -> float:
    return datetime.fromisoformat(tick_at).timestamp() if tick_at else 0.0


def _wedged_in_row(dsn: str, replica: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(Q["replica_wedged"], {"replica": replica}).fetchone()
    return list(row[0] or []) if row else []
