"""The invariants a drill checks over its whole run, and the per-kind summary.

- ``recovered``: every round saw a takeover and a completed tick by the new holder in time.
- ``no_overlap``: no two replica processes believed they held the same lease at once, with
  the one exception docs/safety.md states: when a fault ended a live holder's lock session
  from outside (``terminate``, ``db-restart``, ``db-failover``), only "at most one believer
  with the lease's current epoch" is promised. There an overlap in which the later holder
  has a higher epoch (the earlier one's is superseded) and the earlier belief ended within
  ``lease_ttl`` of the fault is tolerated and counted (:func:`split_overlaps`); any other
  overlap fails the check.
- ``no_lost_notification``: every notification the drill inserted is ``sent`` (and reached
  the sink with a valid signature) or ``dead`` with a reason. Lost is only what can no longer
  be delivered: a row the loops will still deliver (pending, left ``sending`` by a tick that
  ended, ``failed`` with a retry due) is waited for by the drain up to its delivery bound
  (:mod:`leasectl.tools.drill.delivery`) and lost only past it. Each fault kind's summary
  row gives the notifications' delivery delay (insert to first delivery).
- ``no_lost_job``: every job the drill inserted reached a final state.
- ``no_duplicate_outside_crash_window``: a notification delivered by two different holders
  (replica, epoch) only in the documented crash window: the earlier holder lost its lease
  abnormally (not a graceful release) and made the delivery at most ``lease_ttl +
  crash_window`` before its belief ended, or before it logged the loss itself (a stopped
  zombie's call already past its ``check()``) plus ``crash_window``. Receivers dedup on
  ``Idempotency-Key``; see docs/safety.md, "External calls cannot be fenced".
- ``signatures``: every delivery carried a valid HMAC signature.
- ``crl_numbers_increase``: per issuer, CRL numbers strictly increase in generation order.
- ``ticks_unique``: no leased slot ``(loop, tick_at)`` completed twice by holders that each
  still believed they held the lease (a slot re-run after a mid-tick loss is reported only).
- ``epochs_increase``: per lease, the acquisitions the database kept carry strictly increasing
  epochs (a failover's re-acquisitions are also checked against every epoch any replica
  logged, replicated or not, in the round itself).

Lost work after a ``db-failover`` is split in two. With asynchronous replication the old
primary may have acknowledged commits its standby never received: a feed row acknowledged
at most :data:`REPLICATION_WINDOW_S` before a crash that lost commits (or while the crashing
primary was still going down) is the replication
mode's loss, reported but not held against leasectl. Everything else is leasectl's loss. With
``remote_apply`` nothing acknowledged can be lost, so there every missing row is leasectl's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from leasectl import sql
from leasectl.tools.drill.cluster import LogLine
from leasectl.tools.drill.delivery import delays_by_kind, first_deliveries
from leasectl.tools.drill.feed import Feed
from leasectl.tools.drill.rounds import NO_FLAP, RoundResult
from leasectl.tools.drill.stats import (
    Cap,
    Holding,
    LeaseLogEvent,
    Overlap,
    holdings,
    overlaps,
    summarize,
)
from leasectl.tools.webhook_sink import Delivery

Q = sql.load("drill", package="leasectl.tools.drill")

#: Faults that end live holders' lock sessions from outside: the lock is free on the server
#: before the holder can see its session end, so a peer may take the lease (with a higher
#: epoch) a few milliseconds before the old holder stops believing (docs/safety.md, "What
#: exactly is guaranteed"). ``terminate`` ends the victim's session; the others every one.
SESSION_ENDING = ("terminate", "db-restart", "db-failover")
#: Clock slack between the drill's fault timestamps and the replicas' log lines.
OVERLAP_SLACK_S = 0.05

#: How long before an asynchronous failover's crash an acknowledged row may have been lost
#: with it (the embedded server acknowledges before flushing: synchronous_commit=off).
REPLICATION_WINDOW_S = 2.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    examples: list[str] = field(default_factory=list)


@dataclass
class Analysis:
    checks: list[Check]
    holdings: list[Holding]
    overlaps: list[Overlap]
    duplicates: dict[str, Any]
    summary: list[dict[str, Any]]
    totals: dict[str, int]
    liveness: list[dict[str, Any]] = field(default_factory=list)  # per leased loop (liveness.py)
    skipped_checks: dict[str, str] = field(default_factory=dict)  # check -> why not run
    #: per fault kind (and "none": before the first fault): delivery delay percentiles (s)
    notification_delay: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def open_counts(dsn: str, prefix: str) -> tuple[int, int]:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            like = {"prefix": prefix + "%"}
            n = conn.execute(Q["notifications_open"], like).fetchone()
            j = conn.execute(Q["jobs_open"], like).fetchone()
    except psycopg.OperationalError:
        return -1, -1
    return int(n[0]) if n else 0, int(j[0]) if j else 0


def lease_events(lines: Sequence[LogLine]) -> list[LeaseLogEvent]:
    actions = ("lease_acquired", "lease_released", "lease_lost")
    return [
        LeaseLogEvent(ln.ts, ln.replica, ln.action, ln.lease, ln.epoch, ln.reason)
        for ln in lines
        if ln.action in actions and ln.lease
    ]


def classify_duplicates(
    deliveries: Sequence[Delivery],
    hs: Sequence[Holding],
    *,
    lease_ttl: float,
    window: float,
    work_faults: Sequence[tuple[float, float]] = (),
) -> dict[str, Any]:
    """Keys delivered by more than one (replica, epoch); split into allowed and violations.

    ``work_faults`` are intervals in which work connections were cut (a pooler restart, a
    backend-kill storm): a delivery whose "sent" mark died with its connection is re-delivered
    by whoever holds the lease next, the same crash window with the lease kept.
    """
    by_key: dict[str, list[Delivery]] = {}
    for d in deliveries:
        if d.status == 200 and d.key:
            by_key.setdefault(d.key, []).append(d)
    by_holder: dict[tuple[str, int | None], list[Holding]] = {}
    for h in hs:
        by_holder.setdefault((h.replica, h.epoch), []).append(h)
    allowed: list[dict[str, Any]] = []
    violations: list[dict[str, Any]] = []
    for key, ds in by_key.items():
        senders = {(d.replica or "", d.epoch) for d in ds}
        if len(senders) < 2:
            continue
        ds = sorted(ds, key=lambda d: d.at)

        def began(d: Delivery) -> float:
            held = by_holder.get((d.replica or "", d.epoch), [])
            return max((h.start for h in held), default=d.at)

        # The holder that began last is the legitimate sender; the others must be in its
        # predecessors' crash windows (a zombie's late call arrives after the successor's).
        last = max(ds, key=began)
        bad = []
        for d in ds:
            if (d.replica, d.epoch) == (last.replica, last.epoch):
                continue
            held = by_holder.get((d.replica or "", d.epoch), [])
            in_window = any(
                not h.end_reason.startswith("released")
                and h.end - lease_ttl - window <= d.at <= max(h.end, h.logged_end or 0) + window
                for h in held
            ) or any(a - window <= d.at <= b + window for a, b in work_faults)
            if not in_window:
                bad.append(f"{d.replica}@{d.epoch} at {d.at:.3f}")
        desc = f"{key}: " + ", ".join(f"{d.replica}@{d.epoch}" for d in ds)
        if bad:
            desc += f" (outside the window: {'; '.join(bad)})"
        (violations if bad else allowed).append({"key": key, "at": ds[-1].at, "desc": desc})
    return {"allowed": allowed, "violations": violations}


def unique_slots(
    lines: Sequence[LogLine],
    hs: Sequence[Holding],
    leased_loops: Sequence[str],
    lost_with_primary: Callable[[float], bool] = lambda ts: False,
) -> tuple[list[str], list[str], int]:
    """Slots completed twice while each completer believed it held the lease.

    A tick whose holder lost its lease mid-tick cannot record its slot as done (the ledger
    update is fenced), so the next holder runs the slot again: that is by design, and the
    old holder's ``tick_finished`` line, written after its belief ended, is not a second
    completion. Two completions of one slot each within its holder's belief are.
    A completion that an asynchronous failover lost with the old primary
    (``lost_with_primary``) is run again by design too: the new primary never saw it.
    Returns (violations, re-runs, number of slots).
    """
    belief: dict[tuple[str, str, int | None], list[Holding]] = {}
    for h in hs:
        belief.setdefault((h.lease, h.replica, h.epoch), []).append(h)
    slots: dict[tuple[str, str], dict[tuple[str, int | None], bool]] = {}
    for ln in lines:
        if ln.action == "tick_finished" and ln.outcome == "ok" and ln.loop in leased_loops:
            held = belief.get((ln.loop or "", ln.replica, ln.epoch), [])
            believed = any(h.start <= ln.ts <= h.end for h in held)
            believed = believed and not lost_with_primary(ln.ts)
            slot = slots.setdefault((ln.loop or "", ln.tick_at or ""), {})
            slot[(ln.replica, ln.epoch)] = slot.get((ln.replica, ln.epoch), False) or believed
    twice: list[str] = []
    reruns: list[str] = []
    for (loop, tick_at), by in slots.items():
        if len(by) < 2:
            continue
        desc = f"{loop} {tick_at}: " + ", ".join(
            f"{r}@{e}{'' if ok else ' (after its lease was lost)'}"
            for (r, e), ok in sorted(by.items(), key=lambda kv: str(kv[0]))
        )
        (twice if sum(by.values()) > 1 else reruns).append(desc)
    return twice, reruns, len(slots)


def analyze(
    *,
    admin_dsn: str,
    feed: Feed,
    deliveries: Sequence[Delivery],
    lines: Sequence[LogLine],
    rounds: Sequence[RoundResult],
    caps: Sequence[Cap],
    process_ends: dict[str, float],
    run_end: float,
    lease_ttl: float,
    crash_window_s: float,
    leased_loops: Sequence[str],
    same_clock: bool,
    replication: str | None = None,
    still_due: Collection[str] = (),
    cluster_up: float = 0.0,
) -> Analysis:
    """Check every invariant over the drained run.

    ``still_due``: notifications the drain stopped waiting for while still within their
    delivery bound (an interrupted drill): reported, not judged lost. ``cluster_up``: when
    every replica had started (notification delays of earlier rows count from then).
    """
    like = {"prefix": feed.prefix + "%"}
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        notes = conn.execute(Q["notifications_state"], like).fetchall()
        jobs = conn.execute(Q["jobs_state"], like).fetchall()
        crl = conn.execute(Q["crl_events"]).fetchall()
        events = conn.execute(Q["lease_events"]).fetchall()
        acquired = conn.execute(Q["acquired_epochs"]).fetchall()
    # The database's clock is this machine's only for the embedded server.
    releases = (
        {
            (lease, replica, epoch): at
            for lease, epoch, replica, ev, _r, at in events
            if ev == "released"
        }
        if same_clock
        else {}
    )
    hs = holdings(
        lease_events(lines),
        caps,
        process_ends=process_ends,
        release_times=releases,
        run_end=run_end,
    )
    ovs = overlaps(hs)
    bad_ovs, superseded = split_overlaps(ovs, rounds, lease_ttl)
    checks: list[Check] = []

    bad_rounds = [f"#{r.index} {r.kind}: {'; '.join(r.notes)}" for r in rounds if not r.recovered]
    checks.append(
        Check(
            "recovered",
            not bad_rounds,
            f"{len(rounds) - len(bad_rounds)}/{len(rounds)} rounds recovered",
            bad_rounds[:10],
        )
    )
    checks.append(
        Check(
            "no_overlap",
            not bad_ovs,
            f"{len(bad_ovs)} overlapping leadership interval(s) over {len(hs)} holdings"
            + (
                f"; {len(superseded)} tolerated: a superseded epoch still believed for at most "
                f"{max(o.seconds for o in superseded) * 1000:.1f} ms after a fault ended its "
                "lock session from outside (only one believer of the current epoch is promised)"
                if superseded
                else ""
            ),
            [
                f"{o.lease}: {o.first.replica}@{o.first.epoch} and "
                f"{o.second.replica}@{o.second.epoch} for {o.seconds * 1000:.1f} ms"
                for o in bad_ovs[:10]
            ],
        )
    )

    first = first_deliveries(deliveries)
    missing = [nid for nid in feed.notifications if nid not in {row[0] for row in notes}]
    repl_lost = replication_losses(missing, feed.inserted_at, rounds, replication)
    verdict = judge_notifications(
        notes, set(first), [nid for nid in missing if nid not in repl_lost], still_due
    )
    dead = [row for row in notes if row[1] == "dead" and row[2]]
    checks.append(
        Check(
            "no_lost_notification",
            not verdict.lost,
            f"{len(notes)} notifications: {verdict.delivered} delivered, "
            f"{len(dead)} dead-lettered with a reason, {len(verdict.lost)} lost"
            + (f" ({verdict.why})" if verdict.lost else "")
            + (f"; {len(verdict.still_due)} still due, not judged" if verdict.still_due else "")
            + (f"; {len(repl_lost)} lost by async replication" if repl_lost else ""),
            sorted(verdict.lost)[:10],
        )
    )
    lost = verdict.lost
    jobs_in_db = {row[0] for row in jobs}
    final = ("Completed", "Cancelled")
    lost_jobs = [
        row[0]
        for row in jobs
        if not (row[1] in final or (row[1] == "Failed" and row[3] >= row[4] and row[2]))
    ]
    missing_jobs = [jid for jid in feed.jobs if jid not in jobs_in_db]
    repl_lost_jobs = replication_losses(missing_jobs, feed.inserted_at, rounds, replication)
    lost_jobs += [jid for jid in missing_jobs if jid not in repl_lost_jobs]
    completed = sum(1 for row in jobs if row[1] == "Completed")
    failed_for_good = sum(1 for row in jobs if row[1] == "Failed" and row[3] >= row[4] and row[2])
    checks.append(
        Check(
            "no_lost_job",
            not lost_jobs,
            f"{len(jobs)} jobs: {completed} completed, {failed_for_good} "
            f"failed for good with a reason, {len(lost_jobs)} lost"
            + (f"; {len(repl_lost_jobs)} lost by async replication" if repl_lost_jobs else ""),
            sorted(lost_jobs)[:10],
        )
    )

    cut = [(r.t_fault, r.t_lift or r.t_fault) for r in rounds if r.kind in NO_FLAP]
    dups = classify_duplicates(
        deliveries, hs, lease_ttl=lease_ttl, window=crash_window_s, work_faults=cut
    )
    checks.append(
        Check(
            "no_duplicate_outside_crash_window",
            not dups["violations"],
            f"{len(dups['allowed'])} duplicate key(s) in the crash window, "
            f"{len(dups['violations'])} outside it",
            [v["desc"] for v in dups["violations"][:10]],
        )
    )
    unsigned = [d.key for d in deliveries if not d.verified]
    checks.append(
        Check(
            "signatures",
            not unsigned,
            f"{len(deliveries)} deliveries, {len(unsigned)} bad signature(s)",
            unsigned[:10],
        )
    )

    crl_bad: list[str] = []
    last: dict[str, int] = {}
    for issuer, number, epoch, replica, _at, _ok in crl:
        if issuer in last and number <= last[issuer]:
            crl_bad.append(
                f"{issuer}: CRL {number} after {last[issuer]} (epoch {epoch}, {replica})"
            )
        last[issuer] = max(number, last.get(issuer, number))
    checks.append(
        Check("crl_numbers_increase", not crl_bad, f"{len(crl)} CRLs generated", crl_bad[:10])
    )

    crashes = lossy_failovers(rounds, replication)
    twice, reruns, n_slots = unique_slots(
        lines,
        hs,
        leased_loops,
        lambda ts: any(a <= ts <= b for a, b in crashes),
    )
    checks.append(
        Check(
            "ticks_unique",
            not twice,
            f"{n_slots} leased slots completed, {len(twice)} twice under a believed lease; "
            f"{len(reruns)} re-run after the first attempt's holder lost its lease mid-tick",
            twice[:10],
        )
    )

    backwards = epoch_regressions(acquired)
    bad_epoch_rounds = [
        f"#{r.index} {r.kind}: {n}" for r in rounds for n in r.notes if n.startswith("EPOCH")
    ]
    checks.append(
        Check(
            "epochs_increase",
            not backwards and not bad_epoch_rounds,
            f"{len(acquired)} acquisitions kept by the database, {len(backwards)} out of order; "
            f"{len(bad_epoch_rounds)} failover re-acquisition(s) not above every issued epoch",
            (backwards + bad_epoch_rounds)[:10],
        )
    )

    _attribute(rounds, ovs, dups)
    summary = summarize_rounds(rounds)
    faults = [(r.t_fault, r.kind) for r in rounds]
    delays = delays_by_kind(feed.inserted_at, first, faults, since=cluster_up)
    for row in summary:
        row["notification_delay"] = delays.get(row["kind"])
    return Analysis(
        checks=checks,
        holdings=hs,
        overlaps=ovs,
        duplicates=dups,
        summary=summary,
        totals={
            "notifications": len(notes),
            "deliveries": len(deliveries),
            "jobs": len(jobs),
            "lost_notifications": len(lost),
            "lost_jobs": len(lost_jobs),
            "replication_lost_notifications": len(repl_lost),
            "replication_lost_jobs": len(repl_lost_jobs),
            "replication_lost_commits": sum(r.lost_commits or 0 for r in rounds),
            "notifications_still_due": len(verdict.still_due),
        },
        notification_delay=delays,
    )


@dataclass
class NotificationVerdict:
    delivered: int
    lost: list[str]
    why: str  # the lost rows by cause, e.g. "1 marked sent, never received"
    still_due: list[str]


def judge_notifications(
    notes: Sequence[Sequence[Any]],
    received: Collection[str],
    missing: Sequence[str],
    still_due: Collection[str] = (),
) -> NotificationVerdict:
    """Lost: only what can no longer be delivered, once the drain has waited.

    ``notes`` are ``notifications_state`` rows (id, status, last_error, ...) after the drain;
    ``received`` the keys the sink accepted with a valid signature; ``missing`` rows the
    database no longer has (replication's losses already taken out). An open row the drain
    waited for past its bound is lost (the loops broke their bound); one in ``still_due``
    (the drain was cut short) is reported, not judged.
    """
    causes: dict[str, list[str]] = {}
    due: list[str] = []
    delivered = 0
    for row in notes:
        nid, status, error = row[0], row[1], row[2]
        if status == "sent":
            if nid in received:
                delivered += 1
            else:
                causes.setdefault("marked sent, never received", []).append(nid)
        elif status == "dead":
            if not error:
                causes.setdefault("dead without a reason", []).append(nid)
        elif nid in still_due:
            due.append(nid)
        else:
            causes.setdefault(f"{status} past its delivery bound", []).append(nid)
    if missing:
        causes["missing from the database"] = list(missing)
    lost = [nid for ids in causes.values() for nid in ids]
    why = ", ".join(f"{len(ids)} {cause}" for cause, ids in causes.items())
    return NotificationVerdict(delivered, lost, why, due)


def replication_losses(
    missing: Sequence[str],
    inserted_at: dict[str, float],
    rounds: Sequence[RoundResult],
    replication: str | None,
) -> set[str]:
    """The missing rows that asynchronous replication lost: acknowledged shortly before a
    failover whose promotion lacked commits of the old primary. None under ``sync``."""
    crashes = lossy_failovers(rounds, replication)
    out = set()
    for key in missing:
        at = inserted_at.get(key)
        if at is not None and any(a <= at <= b for a, b in crashes):
            out.add(key)
    return out


def lossy_failovers(
    rounds: Sequence[RoundResult], replication: str | None
) -> list[tuple[float, float]]:
    """When asynchronous failovers whose promotion lacked commits could lose an acknowledged
    commit: from the first lost commit's commit time (``first_lost_at``, from the old
    primary's WAL; without it, :data:`REPLICATION_WINDOW_S` before the crash) until the old
    primary was gone (``t_down``: it acknowledges commits while ``pg_ctl stop -m immediate``
    is still on its way, so the last lost commit's acknowledgement often comes after
    ``t_fault``). A loaded standby can lag by more than a few seconds: the WAL says how far."""
    if replication != "async":
        return []
    return [
        (
            min(r.first_lost_at, r.t_fault)
            if r.first_lost_at is not None
            else r.t_fault - REPLICATION_WINDOW_S,
            max(r.t_fault, r.t_down or r.t_fault),
        )
        for r in rounds
        if r.kind == "db-failover" and (r.lost_commits or 0) > 0
    ]


def epoch_regressions(acquired: Sequence[tuple[Any, ...]]) -> list[str]:
    """Acquisitions (in commit order) whose epoch is not above the lease's previous one."""
    last: dict[str, int] = {}
    bad = []
    for lease, epoch, replica in acquired:
        if lease in last and int(epoch) <= last[lease]:
            bad.append(f"{lease}: epoch {epoch} ({replica}) after {last[lease]}")
        last[lease] = max(int(epoch), last.get(lease, int(epoch)))
    return bad


def split_overlaps(
    ovs: Sequence[Overlap], rounds: Sequence[RoundResult], lease_ttl: float
) -> tuple[list[Overlap], list[Overlap]]:
    """Split overlaps into violations and those of a superseded epoch after a session end.

    An overlap is tolerated only when all of these hold, which is exactly docs/safety.md's
    "always" guarantee for a lock session ended from outside: a round of a
    :data:`SESSION_ENDING` kind ended the earlier holder's session (its victim's for
    ``terminate``, everyone's for a server fault) while it held the lease; the later holder
    acquired after that fault with a strictly higher epoch (so the earlier belief was of a
    superseded epoch, whose fenced writes are refused); and the earlier belief ended within
    ``lease_ttl`` of the fault (the documented bound). Anything else, e.g. two believers of
    one epoch, or an overlap after a crash, stop or partition, is a violation.
    """
    bad: list[Overlap] = []
    tolerated: list[Overlap] = []
    for o in ovs:
        a, b = o.first, o.second
        ok = (
            a.epoch is not None
            and b.epoch is not None
            and b.epoch > a.epoch
            and any(
                r.kind in SESSION_ENDING
                and (r.kind != "terminate" or r.victim == a.replica)
                and a.start <= r.t_fault + OVERLAP_SLACK_S
                and b.start >= r.t_fault - OVERLAP_SLACK_S
                and a.end <= r.t_fault + lease_ttl
                for r in rounds
            )
        )
        (tolerated if ok else bad).append(o)
    return bad, tolerated


def _attribute(rounds: Sequence[RoundResult], ovs: Sequence[Overlap], dups: dict[str, Any]) -> None:
    """Charge each overlap and duplicate to the round during which it happened."""
    ordered = sorted(rounds, key=lambda r: r.t_fault)

    def owner(at: float) -> RoundResult | None:
        found = None
        for r in ordered:
            if r.t_fault <= at + 1e-6:
                found = r
        return found

    for o in ovs:
        r = owner(o.start)
        if r is not None:
            r.overlap_s += o.seconds
    for d in dups["allowed"] + dups["violations"]:
        r = owner(d["at"])
        if r is not None:
            r.duplicates += 1


def summarize_rounds(rounds: Sequence[RoundResult]) -> list[dict[str, Any]]:
    """One row per fault kind: counts and takeover percentiles (seconds)."""
    kinds: list[str] = []
    for r in rounds:
        if r.kind not in kinds:
            kinds.append(r.kind)
    rows = []
    for kind in kinds:
        rs = [r for r in rounds if r.kind == kind]
        take = [r.takeover_s for r in rs if r.takeover_s is not None]
        fence = [r.self_fence_s for r in rs if r.self_fence_s is not None]
        tick = [r.first_tick_s for r in rs if r.first_tick_s is not None]
        back = [r.leases_back_s for r in rs if r.leases_back_s is not None]
        lost_commits = [r.lost_commits for r in rs if r.lost_commits is not None]
        rows.append(
            {
                "kind": kind,
                "rounds": len(rs),
                "recovered": sum(1 for r in rs if r.recovered),
                "takeover": summarize(take),
                "self_fence": summarize(fence),
                "first_tick": summarize(tick),
                "leases_back": summarize(back),
                "overlaps": sum(1 for r in rs if r.overlap_s > 0),
                "overlap_s": sum(r.overlap_s for r in rs),
                "duplicates": sum(r.duplicates for r in rs),
                "rebalance": summarize([r.rebalance_s for r in rs if r.rebalance_s is not None]),
                "rebalance_back": summarize(
                    [r.rebalance_back_s for r in rs if r.rebalance_back_s is not None]
                ),
                "lost_commits": sum(lost_commits) if lost_commits else None,
            }
        )
    return rows
