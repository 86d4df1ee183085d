"""Pure arithmetic of a drill: percentiles, leadership intervals and their overlaps.

A *holding* is one replica process's interval of believed leadership of one lease, taken
from its logs: ``lease_acquired`` starts it; ``lease_released``, ``lease_lost`` or the end
of the process ends it. Where a process could not log its own end, a *cap* bounds it:

- SIGKILL: belief ends at the kill instant (the process is gone);
- SIGSTOP / partition: the holder's last successful heartbeat started before the fault,
  so its self-fence deadline (``heartbeat start + lease_ttl``) is at most ``fault + lease_ttl``;
  its own ``lease_lost`` line may come later (after SIGCONT) and is capped to that bound.

Ends taken from logs are conservative (the log line is written after belief stopped), so an
overlap reported here may be a few milliseconds too long but is never missed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class LeaseLogEvent:
    """The lease-transition fields of one log line of one replica process."""

    ts: float
    replica: str
    action: str  # lease_acquired | lease_released | lease_lost
    lease: str
    epoch: int | None
    reason: str = ""


@dataclass(frozen=True)
class Cap:
    """Belief of ``replica`` in any lease held at ``after`` cannot outlast ``until``."""

    replica: str
    after: float
    until: float
    why: str


@dataclass
class Holding:
    lease: str
    replica: str
    epoch: int | None
    start: float
    end: float
    end_reason: str
    logged_end: float | None = None  # the process's own end line, when a cap moved the end

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(frozen=True)
class Overlap:
    lease: str
    first: Holding
    second: Holding
    start: float
    seconds: float


def holdings(
    events: Iterable[LeaseLogEvent],
    caps: Iterable[Cap] = (),
    *,
    process_ends: dict[str, float] | None = None,
    release_times: dict[tuple[str, str, int | None], float] | None = None,
    run_end: float,
) -> list[Holding]:
    """Build every holding from lease log events (any order) and apply the caps.

    ``release_times`` maps ``(lease, replica, epoch)`` to the database's timestamp of the
    release statement: the holder stopped believing before it ran, so a graceful end is
    the earlier of that and the log line (the log line can lag under CPU contention).
    """
    ordered = sorted(events, key=lambda e: e.ts)
    open_: dict[tuple[str, str], Holding] = {}
    done: list[Holding] = []
    for ev in ordered:
        k = (ev.lease, ev.replica)
        if ev.action == "lease_acquired":
            if k in open_:  # acquired twice without an end line: close the first
                prev = open_.pop(k)
                prev.end, prev.end_reason = ev.ts, "reacquired"
                done.append(prev)
            open_[k] = Holding(ev.lease, ev.replica, ev.epoch, ev.ts, run_end, "open")
        elif ev.action in ("lease_released", "lease_lost") and k in open_:
            h = open_.pop(k)
            h.end = ev.ts
            h.end_reason = f"{ev.action.removeprefix('lease_')}: {ev.reason}".rstrip(": ")
            done.append(h)
    ends = process_ends or {}
    for h in open_.values():
        if h.replica in ends:
            h.end, h.end_reason = max(h.start, ends[h.replica]), "process_exit"
        done.append(h)
    releases = release_times or {}
    for h in done:
        at = releases.get((h.lease, h.replica, h.epoch))
        if at is not None and h.end_reason.startswith("released") and h.start <= at < h.end:
            h.end = at
    cap_list = list(caps)
    for h in done:
        for cap in cap_list:
            if cap.replica == h.replica and h.start <= cap.after and h.end > cap.until:
                h.logged_end = h.end
                h.end = max(h.start, cap.until)
                h.end_reason = f"{h.end_reason} (capped: {cap.why})"
    done.sort(key=lambda h: (h.lease, h.start))
    return done


def overlaps(items: Sequence[Holding], *, min_seconds: float = 0.0) -> list[Overlap]:
    """Pairs of holdings of the same lease by different processes that intersect in time."""
    found: list[Overlap] = []
    by_lease: dict[str, list[Holding]] = {}
    for h in items:
        by_lease.setdefault(h.lease, []).append(h)
    for lease, hs in by_lease.items():
        hs = sorted(hs, key=lambda h: h.start)
        for i, a in enumerate(hs):
            for b in hs[i + 1 :]:
                if b.start >= a.end:
                    break  # sorted by start: no later holding can intersect a
                if a.replica == b.replica:
                    continue
                start, end = max(a.start, b.start), min(a.end, b.end)
                if end - start > min_seconds:
                    found.append(Overlap(lease, a, b, start, end - start))
    return found


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }
