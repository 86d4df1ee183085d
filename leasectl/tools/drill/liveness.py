"""The ``liveness`` invariant: no leased slot left undone beyond a fault's takeover window.

"At most one holder" is half of what a leased loop promises; the other half is that its slots
keep running. For every leased loop the drill reads the tick ledger (``leasectl_ticks``, one
row per slot with its last attempt's outcome) and walks every slot between the first and the
last one it saw. Each slot is one of:

- **done**: its row says ``ok``;
- **failed**: it ran and the loop itself raised (the scheduler's problem is running slots,
  not the loop's errors, which its own metrics and logs report);
- **in a takeover window**: it fell inside the measured recovery window of a round's fault,
  from the fault to the loop's first completed tick after its lease was held again (capped,
  see :data:`WINDOW_CAP_INTERVALS`). That is the documented cost of a failover, tolerated and
  counted per round;
- **misfire**: the loop's previous tick was still running when the slot began, so the loop's
  misfire policy folded it into the next run (``coalesce``) or dropped it (``skip``);
- **error backoff**: the previous attempted slot failed and the scheduler was backing off
  (then the misfire policy coalesced or skipped it). An attempt whose ledger claim itself
  failed (a database error, e.g. on a work connection a fault had killed) leaves no row: the
  holder's ``tick_claim_failed`` log line, which names the slot, stands in for it (the slot
  and the ones its backoff passed over are in error backoff);
- **undone**: none of the above. That is a liveness violation: the lease was held (or should
  have been) and nobody ran the slot.

A ``join`` round moves leases gracefully; its only tolerated windows are the hand-over gaps
themselves (a release to the next acquisition of the same lease).

The classification is pure (:func:`classify_slots`, :func:`fault_windows`) and unit-tested;
:func:`check` reads the ledger and builds the :class:`~.invariants.Check`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from leasectl import sql
from leasectl.tools.drill.cluster import LogLine
from leasectl.tools.drill.invariants import REPLICATION_WINDOW_S, Check
from leasectl.tools.drill.rounds import RoundResult
from leasectl.tools.drill.stats import Holding

Q = sql.load("liveness", package="leasectl.tools.drill")

#: Faults that hit the whole server or every work connection: every lease is affected.
SERVER_WIDE = ("db-restart", "db-failover", "pooler-restart", "backend-kill-storm")
#: A round's window for a loop ends at its first completed tick after the lease is held
#: again, but never later than this many of its intervals (and 10 s) after that: a holder that
#: holds the lease and still runs nothing is a violation, not a takeover.
WINDOW_CAP_INTERVALS = 3.0
WINDOW_CAP_MIN_S = 10.0
#: Clock slack between the drill's clock, the replicas' logs and the server's ``now()``.
SLACK_S = 0.05


@dataclass(frozen=True)
class LoopPolicy:
    """What the classification needs to know about one leased loop."""

    name: str
    interval: float
    misfire: str = "coalesce"


@dataclass(frozen=True)
class LedgerRow:
    """One ``leasectl_ticks`` row (times in unix seconds, the server's clock)."""

    loop: str
    tick_at: float
    outcome: str
    started_at: float | None = None
    finished_at: float | None = None
    replica: str = ""
    epoch: int | None = None


@dataclass(frozen=True)
class Window:
    """Slots of ``lease`` that begin in [start, end) are tolerated; ``why`` names the round."""

    lease: str
    start: float
    end: float
    why: str


@dataclass
class LoopLiveness:
    """The slots of one leased loop between the first and the last observed one, classified."""

    loop: str
    interval: float
    misfire: str
    slots: int = 0
    done: int = 0
    failed: int = 0
    in_window: int = 0
    misfired: int = 0
    backoff: int = 0
    undone: list[float] = field(default_factory=list)  # slot starts (unix seconds)
    windows: dict[str, int] = field(default_factory=dict)  # round -> tolerated slots

    @property
    def ok(self) -> bool:
        return not self.undone

    def describe(self) -> str:
        tolerated = ", ".join(f"{why}: {n}" for why, n in self.windows.items())
        return (
            f"{self.loop} (every {self.interval:g}s, misfire={self.misfire}): {self.slots} slots, "
            f"{self.done} done, {self.failed} ran and failed, {self.in_window} in takeover "
            f"windows{f' ({tolerated})' if tolerated else ''}, {self.misfired} {self.misfire}d "
            f"by the misfire policy, {self.backoff} in error backoff, {len(self.undone)} undone"
        )


def classify_slots(
    policy: LoopPolicy,
    rows: Sequence[LedgerRow],
    windows: Sequence[Window] = (),
    *,
    backoff_max: float = 300.0,
    claim_failures: Sequence[LedgerRow] = (),
) -> LoopLiveness:
    """Walk every slot of ``policy.name`` from its first to its last row and classify it.

    Pure: ``rows`` are the loop's ledger rows (any order), ``windows`` the tolerated ones,
    ``claim_failures`` the attempts whose claim failed before a row existed
    (:func:`claim_failures`: outcome ``claim_failed``).
    """
    out = LoopLiveness(policy.name, policy.interval, policy.misfire)
    mine = sorted((r for r in rows if r.loop == policy.name), key=lambda r: r.tick_at)
    if not mine:
        return out
    step = policy.interval
    by_slot = {_key(r.tick_at, step): r for r in mine}
    claimed_not = {
        _key(r.tick_at, step): r
        for r in claim_failures
        if r.loop == policy.name and _key(r.tick_at, step) not in by_slot
    }
    own_windows = [w for w in windows if w.lease == policy.name]
    first, last = _key(mine[0].tick_at, step), _key(mine[-1].tick_at, step)
    previous: LedgerRow | None = None  # the latest attempted slot before this one
    for k in range(first, last + 1):
        s = k * step
        out.slots += 1
        row = by_slot.get(k) or claimed_not.get(k)
        if row is not None and row.outcome == "ok":
            out.done += 1
        elif row is not None and row.outcome == "failed":
            out.failed += 1
        elif (w := _window_of(s, step, own_windows)) is not None:
            out.in_window += 1
            out.windows[w.why] = out.windows.get(w.why, 0) + 1
        elif _busy_at(s, mine):
            out.misfired += 1
        elif row is not None and row.outcome == "claim_failed":
            out.backoff += 1  # attempted: the claim failed, the scheduler backed off
        elif (
            previous is not None
            and previous.outcome in ("failed", "claim_failed")
            and s <= (previous.finished_at or previous.tick_at) + backoff_max + step
        ):
            out.backoff += 1
        else:
            out.undone.append(s)
        if row is not None:
            previous = row
    return out


def _key(t: float, step: float) -> int:
    """The slot number of a slot start (slots are UTC-aligned multiples of the interval)."""
    return round(t / step)


def _window_of(s: float, step: float, windows: Sequence[Window]) -> Window | None:
    """The window a slot [s, s + step) intersects, if any (slots begun before it ended)."""
    for w in windows:
        if s < w.end + SLACK_S and s + step > w.start - SLACK_S:
            return w
    return None


def _busy_at(s: float, rows: Sequence[LedgerRow]) -> bool:
    """Was a tick of an earlier slot still running when slot ``s`` began (so the loop's misfire
    policy decided what became of ``s``)?"""
    for r in rows:
        if r.tick_at >= s - SLACK_S or r.started_at is None or r.finished_at is None:
            continue
        if r.started_at <= s + SLACK_S and r.finished_at >= s - SLACK_S:
            return True
    return False


def fault_windows(
    rounds: Sequence[RoundResult],
    holdings: Sequence[Holding],
    policies: Mapping[str, LoopPolicy],
    rows: Sequence[LedgerRow],
    run_end: float,
) -> list[Window]:
    """The measured recovery window of each round, per lease it affected.

    A round affects the leases its victim held at the fault (every lease for a server-wide
    fault; the wedged loop's for ``wedge``). For each, the window runs from the fault to the
    loop's first completed tick after the lease was held again (its first holding begun after
    the fault; for faults that move no lease, after the fault was lifted), capped at
    :data:`WINDOW_CAP_INTERVALS` intervals (at least :data:`WINDOW_CAP_MIN_S`) past that point.
    ``join`` rounds tolerate only their hand-over gaps. An asynchronous ``db-failover`` that
    lost commits also tolerates the slots of the :data:`REPLICATION_WINDOW_S` before the
    crash, whose completions may have been lost with the old primary.
    """
    out: list[Window] = []
    for r in rounds:
        label = f"#{r.index} {r.kind}"
        if r.kind == "join":
            out += _handover_gaps(r, holdings, policies, label)
            continue
        if r.kind in SERVER_WIDE:
            affected = set(policies)
        elif r.kind == "wedge":
            affected = {r.lease}
        else:
            affected = {
                h.lease for h in holdings if h.replica == r.victim and h.start <= r.t_fault <= h.end
            } | {r.lease}
        for lease in sorted(affected & set(policies)):
            interval = policies[lease].interval
            back = [h.start for h in holdings if h.lease == lease and h.start > r.t_fault]
            marks = [r.t_fault, r.t_lift, r.t_accept]
            if r.takeover_s is not None and lease == r.lease:
                marks.append(r.t_fault + r.takeover_s)
            lifted = max(m for m in marks if m is not None)
            if r.kind not in ("pooler-restart", "backend-kill-storm") and back:
                lifted = max(lifted, min(back))
            cap = lifted + max(WINDOW_CAP_MIN_S, WINDOW_CAP_INTERVALS * interval)
            done = [
                x.finished_at
                for x in rows
                if x.loop == lease
                and x.outcome == "ok"
                and x.started_at is not None
                and x.finished_at is not None
                and x.started_at >= lifted - SLACK_S
            ]
            end = min([*done, cap, run_end])
            start = r.t_fault
            if r.kind == "db-failover" and (r.lost_commits or 0) > 0:
                # Asynchronous replication lost the old primary's last commits: slots it had
                # recorded done just before the crash are gone with them (invariants.py):
                # from the first lost commit's time when the WAL told it (a loaded standby
                # lags by more than a few seconds), with the same slack before it.
                start = min(start, r.first_lost_at or start) - REPLICATION_WINDOW_S
            out.append(Window(lease, start, max(end, lifted), label))
    return out


def _handover_gaps(
    r: RoundResult,
    holdings: Sequence[Holding],
    policies: Mapping[str, LoopPolicy],
    label: str,
) -> list[Window]:
    """A join round's tolerated windows: each release to the next acquisition of that lease."""
    end = r.t_lift + (r.rebalance_back_s or 0.0) if r.t_lift is not None else None
    out = []
    for lease in policies:
        hs = sorted((h for h in holdings if h.lease == lease), key=lambda h: h.start)
        for a, b in zip(hs, hs[1:], strict=False):
            if a.end >= r.t_fault and (end is None or a.end <= end + 1.0) and b.start > a.end:
                out.append(Window(lease, a.end, b.start, f"{label} hand-over"))
    return out


def claim_failures(lines: Sequence[LogLine], loops: Sequence[str]) -> list[LedgerRow]:
    """The holders' failed claims (``tick_claim_failed`` log lines naming their slot) of
    ``loops``, as rows with outcome ``claim_failed`` (``finished_at``: when it was logged)."""
    out = []
    for line in lines:
        if line.action != "tick_claim_failed" or line.loop is None or not line.tick_at:
            continue
        if line.loop not in loops:
            continue
        try:
            at = datetime.fromisoformat(line.tick_at).timestamp()
        except ValueError:
            continue
        out.append(LedgerRow(line.loop, at, "claim_failed", None, line.ts, line.replica))
    return out


def read_ledger(dsn: str, loops: Sequence[str], since: float) -> list[LedgerRow]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(Q["leased_ticks"], {"loops": list(loops), "since": since}).fetchall()
    return [LedgerRow(*row) for row in rows]


def check(
    *,
    admin_dsn: str,
    rounds: Sequence[RoundResult],
    holdings: Sequence[Holding],
    policies: Mapping[str, LoopPolicy],
    since: float,
    run_end: float,
    backoff_max: float,
    lines: Sequence[LogLine] = (),
    stopping: float | None = None,
) -> tuple[Check, list[LoopLiveness]]:
    """The ``liveness`` check over the run, and the per-loop classification behind it.

    ``stopping``: when the drill began stopping the replicas at its end; a slot under way
    then was cut short by the drill, not by the product (a tick cancelled by the SIGTERM).
    """
    rows = read_ledger(admin_dsn, sorted(policies), since)
    windows = fault_windows(rounds, holdings, policies, rows, run_end)
    if stopping is not None:
        windows += [Window(lease, stopping, run_end, "the drill's end") for lease in policies]
    failed_claims = claim_failures(lines, sorted(policies))
    per_loop = [
        classify_slots(p, rows, windows, backoff_max=backoff_max, claim_failures=failed_claims)
        for p in sorted(policies.values(), key=lambda p: p.name)
    ]
    undone = [f"{lv.loop}: slot {_iso(s)} left undone" for lv in per_loop for s in lv.undone]
    slots = sum(lv.slots for lv in per_loop)
    tolerated = sum(lv.in_window for lv in per_loop)
    policies_txt = ", ".join(f"{lv.loop}: {lv.misfire}" for lv in per_loop)
    detail = (
        f"{slots} leased slots between each loop's first and last: "
        f"{sum(lv.done for lv in per_loop)} done, {sum(lv.failed for lv in per_loop)} ran and "
        f"failed, {tolerated} tolerated inside a fault's takeover window (fault → the loop's "
        f"first completed tick once its lease was held again), "
        f"{sum(lv.misfired for lv in per_loop)} coalesced/skipped by the misfire policy "
        f"({policies_txt or 'no leased loops'}), {sum(lv.backoff for lv in per_loop)} in error "
        f"backoff, {len(undone)} left undone"
    )
    return Check("liveness", not undone, detail, undone[:10]), per_loop


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def to_json(per_loop: Sequence[LoopLiveness]) -> list[dict[str, Any]]:
    return [
        {
            "loop": lv.loop,
            "interval": lv.interval,
            "misfire": lv.misfire,
            "slots": lv.slots,
            "done": lv.done,
            "failed": lv.failed,
            "in_window": lv.in_window,
            "windows": lv.windows,
            "misfired": lv.misfired,
            "backoff": lv.backoff,
            "undone": [_iso(s) for s in lv.undone],
        }
        for lv in per_loop
    ]
