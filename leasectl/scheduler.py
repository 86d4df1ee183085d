"""The scheduler: one thread per loop, leased loops only while their lease is held.

A loop's fire times come from its :mod:`~leasectl.schedule` (every N seconds from a fixed
anchor, or cron in a time zone), so every replica agrees on them. A leased tick first claims
its slot (the fire instant) in ``leasectl_ticks`` with the fence check: a slot runs at most
once even in a split brain, and after a restart or failover the ledger says which slots still
need running. Misfires (slots that passed with nobody running them): ``coalesce`` runs the
latest once, ``skip`` only an on-time one, ``all`` catches up in order (at most ``catch_up``);
a slot later than ``max_delay`` is recorded ``missed`` instead of run.

Everywhere interval loops run on a monotonic timer with jitter; everywhere cron loops on the
wall clock. No loop's ticks overlap (a loop's ticks run on its own thread; slots that pass
during a long tick are counted as skipped). Errors back off exponentially (tenacity's
``wait_exponential``) and never kill the loop. ``async def`` loops run their tick body on the
App's event-loop thread (:mod:`leasectl.event_loop`) and are cancelled on lease loss,
shutdown and timeout.

The time arithmetic is pure (:func:`plan_leased`) so unit tests step a fake clock instead of
sleeping.
"""

from __future__ import annotations

import inspect
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import tenacity
from psycopg_pool import ConnectionPool

from leasectl import metrics, sql
from leasectl.errors import DatabaseUnavailable, FencingRejected, LeaseLost, TickCancelled
from leasectl.event_loop import EventLoopThread
from leasectl.lease_manager import LeaseManager
from leasectl.leases import Lease, LeaseEvent
from leasectl.limits import RateLimiter
from leasectl.loop import AsyncTickContext, LoopSpec, TickContext
from leasectl.loop_control import ALL, LoopControl, Trigger
from leasectl.settings import SchedulerSettings

log = logging.getLogger("leasectl.scheduler")

#: Longest single sleep of a loop thread. Wake-ups come from ``LoopState.wake``; this only
#: re-reads the wall clock now and then (a leased slot is a wall-clock time, and the clock
#: may be stepped).
_MAX_SLEEP = 30.0
#: How long before its start a leased slot is claimed in the ledger (at most a quarter of the
#: interval): the fenced claim's round trip then happens before the fire instant, not after.
_CLAIM_LEAD = 0.25
Q = sql.load("scheduler")


# -- pure time arithmetic ---------------------------------------------------------------------


def slot_of(now: float, interval: float) -> float:
    """Start (unix seconds) of the interval slot containing ``now`` (no offset)."""
    return (now // interval) * interval


def next_slot(now: float, interval: float) -> float:
    return slot_of(now, interval) + interval


def backoff_delay(failures: int, initial: float, cap: float) -> float:
    """Delay after ``failures`` consecutive failures: initial * 2^(n-1), capped."""
    strategy = tenacity.wait_exponential(multiplier=initial, max=cap)
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, failures)
    return float(strategy(state))


@dataclass(frozen=True)
class Plan:
    """What a leased loop does next: run ``slot`` now, or wait until ``wake_at``; first
    record every slot up to ``missed_through`` as missed (``missed`` of them) if given."""

    slot: float | None
    wake_at: float
    missed_through: float | None = None
    missed: int = 0  # slots passed over by this decision (metrics)


def _previous(spec: LoopSpec, t: float) -> float | None:
    """The fire strictly before the fire ``t``."""
    return spec.schedule.latest(t - min(0.001, spec.interval / 4))


def plan_leased(
    spec: LoopSpec, now: float, last_done: float | None, started: float | None = None
) -> Plan:
    """Decide, from the ledger's last handled slot (run or recorded missed), what to do now.

    - no history: run the current slot if ``run_on_start``; else wait for the first fire
      after ``started`` (when this replica's scheduler started) and run that one;
    - current slot handled: wait for the next fire;
    - missed slots: ``coalesce`` runs the current slot once (the older ones are counted as
      missed); ``skip`` likewise but only within its grace; ``all`` runs the oldest missed
      slot first, keeping at most the newest ``catch_up`` of them;
    - a slot that can only start more than ``spec.grace`` (``max_delay``) after its fire time
      is recorded as missed, not run.
    """
    sched = spec.schedule
    upcoming = sched.next_after(now)
    current = sched.latest(now)
    if current is None or (last_done is not None and last_done >= current):
        return Plan(None, upcoming)
    older = 0
    if last_done is None:
        if not spec.run_on_start:
            first = sched.next_after(now if started is None else started)
            if current < first:
                return Plan(None, first)
        due = current
    elif spec.misfire == "all":
        if sched.count_between(last_done, current, limit=spec.catch_up + 1) > spec.catch_up:
            pending = sched.count_between(last_done, current)  # once per outage: for metrics
            oldest_kept: float | None = current
            for _ in range(spec.catch_up - 1):
                oldest_kept = _previous(spec, oldest_kept) if oldest_kept is not None else None
            dropped = _previous(spec, oldest_kept) if oldest_kept is not None else None
            if dropped is not None and dropped > last_done:
                return Plan(None, now, missed_through=dropped, missed=pending - spec.catch_up)
        due = sched.next_after(last_done)
    else:
        due = current
        older = max(0, sched.count_between(last_done, current) - 1)
    grace = spec.grace
    if grace is not None and now - due > grace and (last_done is not None or not spec.run_on_start):
        return Plan(None, upcoming if due == current else now, missed_through=due, missed=older + 1)
    return Plan(due, now, missed=older)


# -- the runtime ------------------------------------------------------------------------------


@dataclass
class LoopState:
    spec: LoopSpec
    thread: threading.Thread | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    running_ctx: TickContext | AsyncTickContext | None = None
    tick_started: float | None = None  # monotonic start of the running tick
    failures: int = 0
    last_done: float | None = None
    ledger_known: bool = False
    ticks: int = 0
    skipped: int = 0
    pending_slot: float | None = None
    pending_start: float = 0.0
    started: float = 0.0
    paused: bool = False  # held back by leasectl.loop_control at its last turn
    counted_slot: float | None = None  # the slot whose passed-over slots were counted


class Scheduler:
    """Runs loop specs on their own threads; leased ones gated by a :class:`LeaseManager`."""

    def __init__(
        self,
        specs: Iterable[LoopSpec],
        *,
        replica_id: str,
        pool: ConnectionPool,
        config: Any,
        configs: Mapping[str, Any] | None = None,
        settings: SchedulerSettings | None = None,
        lease_manager: LeaseManager | None = None,
        limiter: RateLimiter | None = None,
        event_loop: EventLoopThread | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        control: LoopControl | None = None,
    ) -> None:
        """:param event_loop: the App's event-loop thread, needed when any loop is async."""
        self.replica_id = replica_id
        self.pool = pool
        self.config = config
        self.configs = dict(configs or {})  # per-loop ctx.config; ``config`` for the rest
        self.settings = settings or SchedulerSettings()
        self.manager = lease_manager
        self.limiter = limiter
        self.clock = clock
        self.wall = wall
        self.loops = {s.name: LoopState(s) for s in specs}
        self.event_loop = event_loop
        asyncs = [n for n, st in self.loops.items() if st.spec.is_async]
        if asyncs and event_loop is None:
            raise ValueError(f"async loops {', '.join(asyncs)} need an event_loop")
        self._stopping = threading.Event()
        self._cancel = threading.Event()
        if lease_manager is not None:
            lease_manager.add_listener(self._on_lease_event)
        self.control = control
        if control is not None:
            control.add_listener(self._on_control)

    @property
    def leased_names(self) -> list[str]:
        return [n for n, st in self.loops.items() if st.spec.placement == "leased"]

    def start(self) -> None:
        for state in self.loops.values():
            if state.spec.placement == "leased" and self.manager is None:
                continue  # a replica that never leads does not run leased loops
            target = self._run_leased if state.spec.placement == "leased" else self._run_everywhere
            state.thread = threading.Thread(
                target=self._supervised, args=(target, state), name=f"loop-{state.spec.name}"
            )
            state.thread.daemon = True
            state.thread.start()

    def dead_threads(self) -> list[str]:
        """Loops whose thread died while not stopping (a bug: the daemon should stop)."""
        if self._stopping.is_set():
            return []
        return [
            n for n, st in self.loops.items() if st.thread is not None and not st.thread.is_alive()
        ]

    def wedged(self, grace: float) -> list[str]:
        """Loops whose running tick has outlived ``timeout + grace``.

        Such a tick ignored ``ctx.check()`` and its cancellation (a call that never returns):
        its thread cannot be killed, so the replica must at least stop holding the loop's
        lease and say so. A loop leaves this list when its tick finally returns.
        """
        now = self.clock()
        out = []
        for name, st in self.loops.items():
            started = st.tick_started
            if started is not None and now - started > st.spec.timeout + grace:
                out.append(name)
        return out

    def stop(self, grace: float | None = None) -> bool:
        """No new ticks; wait for running ticks up to ``grace`` s, then cancel them.

        Returns True when every loop thread ended within the grace period.
        """
        grace = self.settings.shutdown_grace if grace is None else grace
        self._stopping.set()
        for st in self.loops.values():
            st.wake.set()
        deadline = time.monotonic() + grace
        for st in self.loops.values():
            if st.thread is not None:
                st.thread.join(max(0.0, deadline - time.monotonic()))
        drained = all(st.thread is None or not st.thread.is_alive() for st in self.loops.values())
        if not drained:
            self._cancel.set()
            for st in self.loops.values():
                if st.running_ctx is not None:
                    st.running_ctx.stop.set()
            for st in self.loops.values():
                if st.thread is not None:
                    st.thread.join(5.0)
        return drained

    # -- threads --------------------------------------------------------------------------

    def _supervised(self, target: Callable[[LoopState], None], state: LoopState) -> None:
        try:
            target(state)
        except BaseException:
            log.exception(
                "loop thread %s crashed",
                state.spec.name,
                extra={"action": "loop_crashed", "loop": state.spec.name},
            )
            raise

    def _sleep(self, state: LoopState, seconds: float) -> None:
        """Sleep until the loop's next due time; ``state.wake`` ends it early (a lease acquired,
        lost or released, and :meth:`stop`), so no sleep is sliced to notice those.
        ``_MAX_SLEEP`` only bounds a wall-clock step (the leased slots are wall-clock times)."""
        if seconds > 0:
            state.wake.wait(min(seconds, _MAX_SLEEP))
        state.wake.clear()

    def _run_everywhere(self, state: LoopState) -> None:
        if state.spec.cron is not None:
            self._run_everywhere_cron(state)
            return
        spec = state.spec
        due = self.clock() if spec.run_on_start else self.clock() + self._jittered(spec)
        while not self._stopping.is_set():
            if self._control_turn(state, None):
                due = max(due, self.clock() + self._jittered(spec))  # resumed: the next slot
                continue
            now = self.clock()
            if now < due:
                self._sleep(state, due - now)
                continue
            ok = self._tick(state, tick_at=self.wall(), lease=None)
            end = self.clock()
            if ok:
                missed = int((end - due) // spec.interval) if end - due > spec.interval else 0
                if missed:
                    self._count_skipped(state, missed)
                due = max(due + spec.interval, end) + self._jitter_offset(spec)
            else:
                due = end + self._backoff(state)

    def _run_everywhere_cron(self, state: LoopState) -> None:
        """An everywhere cron loop: each fire on the wall clock (plus jitter), per replica."""
        spec = state.spec
        sched = spec.schedule
        now = self.wall()
        latest = sched.latest(now)
        fire = latest if spec.run_on_start and latest is not None else sched.next_after(now)
        start = fire + random.uniform(0, spec.jitter_s)  # noqa: S311 - jitter spreads timers; nothing secret depends on it
        while not self._stopping.is_set():
            if self._control_turn(state, None):  # paused, or a trigger ran: the next fire
                fire = sched.next_after(max(fire, self.wall()))
                start = max(start, fire + random.uniform(0, spec.jitter_s))  # noqa: S311 - as above
                continue
            now = self.wall()
            if now < start:
                self._sleep(state, start - now)
                continue
            ok = self._tick(state, tick_at=fire, lease=None)
            end = self.wall()
            if ok:
                passed = sched.count_between(fire, end)
                if passed:
                    self._count_skipped(state, passed)
                fire = sched.next_after(max(fire, end))
                start = fire + random.uniform(0, spec.jitter_s)  # noqa: S311 - as above
            else:
                start = end + self._backoff(state)

    def _run_leased(self, state: LoopState) -> None:
        spec = state.spec
        assert self.manager is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        state.started = self.wall()
        while not self._stopping.is_set():
            lease = self.manager.lease(spec.name)
            if lease is None:
                state.ledger_known = False
                self._sleep(state, _MAX_SLEEP)  # an acquisition sets state.wake
                continue
            if not state.ledger_known:
                state.last_done = self._last_done(spec)
                state.ledger_known = True
                if self.control is not None:
                    # Just acquired: re-read the pauses before a first tick here, in case
                    # this replica missed the NOTIFY (a standby until now, or reconnecting).
                    self.control.refresh()
            if self._control_turn(state, lease):
                continue
            now = self.wall()
            plan = plan_leased(spec, now, state.last_done, state.started)
            if plan.missed_through is not None:
                self._record_missed(state, lease, plan)
                continue
            lead = min(_CLAIM_LEAD, spec.interval / 4)
            if plan.slot is None:
                # Draw the jittered start once per upcoming slot, then sleep towards it; the
                # slot is claimed ``lead`` early so the claim's round trip is not lateness.
                if state.pending_slot != plan.wake_at:
                    state.pending_slot = plan.wake_at
                    spread = spec.jitter_s if spec.grace is None else min(spec.jitter_s, spec.grace)
                    state.pending_start = plan.wake_at + random.uniform(0, spread)  # noqa: S311 - jitter spreads timers; nothing secret depends on it
                if now < state.pending_start - lead:
                    self._sleep(state, state.pending_start - lead - now)
                    continue
                slot: float = plan.wake_at
            else:
                if plan.slot == state.pending_slot and now < state.pending_start - lead:
                    self._sleep(state, state.pending_start - lead - now)
                    continue
                slot = plan.slot
            start_at = state.pending_start if slot == state.pending_slot else None
            # The manager hands a lease over (placement rebalance) only between ticks.
            if not self.manager.tick_begin(spec.name, lease):
                self._sleep(state, 0.1)
                continue
            try:
                ok = self._leased_tick(state, lease, slot, plan.missed, start_at)
            finally:
                self.manager.tick_end(spec.name)
            if ok is None:
                continue  # slot already done elsewhere, or not run (stopping, lease lost)
            if ok:
                state.last_done = slot
            else:
                self._sleep(state, self._backoff(state))

    def _wait_until(self, state: LoopState, lease: Lease, start_at: float) -> bool:
        """Sleep until the wall-clock ``start_at``; False if stopping or the lease went."""
        while (left := start_at - self.wall()) > 0:
            state.wake.wait(left)
            state.wake.clear()
            if self._stopping.is_set() or not lease.valid():
                return False
        return True

    def _record_missed(self, state: LoopState, lease: Lease, plan: Plan) -> None:
        """Record the slots through ``plan.missed_through`` as missed (fenced), count them."""
        spec = state.spec
        assert plan.missed_through is not None  # noqa: S101 - narrows a type for mypy
        params = {
            "loop": spec.name,
            "tick_at": datetime.fromtimestamp(plan.missed_through, UTC),
            "replica": self.replica_id,
            "error": f"{plan.missed} slot(s) missed: later than max_delay or beyond catch_up",
            **lease.fence_params(),
        }
        try:
            with self.pool.connection() as conn:
                row = conn.execute(Q["miss_tick"], params).fetchone()
        except psycopg.Error as exc:
            log.warning(
                "cannot record missed slots of %s: %s",
                spec.name,
                exc,
                extra={"action": "tick_claim_failed", "loop": spec.name},
            )
            self._sleep(state, self._backoff(state))
            return
        if row is None:  # done or recorded by another holder, or fenced off
            state.last_done = self._last_done(spec)
            if (state.last_done is None or state.last_done < plan.missed_through) and lease.valid():
                self._sleep(state, 0.2)
            return
        state.last_done = plan.missed_through
        self._count_missed(state, plan.missed)
        log.warning(
            "loop %s: %d slot(s) missed through %s (misfire=%s, max_delay=%s)",
            spec.name,
            plan.missed,
            params["tick_at"].isoformat(),
            spec.misfire,
            spec.max_delay,
            extra={"action": "slots_missed", "loop": spec.name, "missed": plan.missed},
        )

    def _leased_tick(
        self,
        state: LoopState,
        lease: Lease,
        slot: float,
        passed_over: int = 0,
        start_at: float | None = None,
    ) -> bool | None:
        spec = state.spec
        tick_at = datetime.fromtimestamp(slot, UTC)
        params = {
            "loop": spec.name,
            "tick_at": tick_at,
            "replica": self.replica_id,
            **lease.fence_params(),
        }
        try:
            with self.pool.connection() as conn:
                row = conn.execute(Q["claim_tick"], params).fetchone()
        except psycopg.Error as exc:
            log.warning(
                "cannot claim tick of %s: %s",
                spec.name,
                exc,
                extra={
                    "action": "tick_claim_failed",
                    "loop": spec.name,
                    "tick_at": tick_at.isoformat(),
                },
            )
            return False
        if row is None:
            # Done already (by us before a restart, or by a previous holder), or fenced off.
            state.last_done = self._last_done(spec)
            if (state.last_done is None or state.last_done < slot) and lease.valid():
                # Not done and not claimable: our epoch is stale; wait for the lease to go.
                self._sleep(state, 0.2)
            return None
        if start_at is not None and not self._wait_until(state, lease, start_at):
            # Claimed early but not run (stopping, lease lost): the row stays 'running' under
            # this epoch, which the next holder (a higher epoch) claims again.
            return None
        if passed_over and state.counted_slot != slot:
            state.counted_slot = slot  # a retried slot does not count its misses twice
            self._count_missed(state, passed_over)
        return self._tick(state, tick_at=slot, lease=lease, ledger_params=params)

    def _tick(
        self,
        state: LoopState,
        *,
        tick_at: float,
        lease: Lease | None,
        ledger_params: dict[str, Any] | None = None,
        trigger: Trigger | None = None,
    ) -> bool:
        spec = state.spec
        started = self.clock()
        ctx = self._context(spec, tick_at, lease, started)
        if self._cancel.is_set():
            ctx.stop.set()
        state.running_ctx = ctx
        state.tick_started = started
        extra: dict[str, Any] = {
            "loop": spec.name,
            "replica": self.replica_id,
            "epoch": lease.epoch if lease else None,
            "lease": spec.name if lease else None,
            "tick_at": ctx.tick_at.isoformat(),
        }
        if trigger is not None:
            extra.update(trigger=trigger.id, triggered_by=trigger.requested_by)
        log.debug("tick %s started", spec.name, extra={"action": "tick_started", **extra})
        error: str | None = None
        try:
            if isinstance(ctx, AsyncTickContext):
                assert self.event_loop is not None  # noqa: S101 - checked in __init__
                self.event_loop.run_tick(spec.run, ctx)
            else:
                _check_not_awaitable(spec, spec.run(ctx))
            outcome = "ok"
        except (LeaseLost, FencingRejected) as exc:
            outcome, error = "lost", str(exc)
        except TickCancelled as exc:
            outcome, error = "cancelled", str(exc)
        except Exception as exc:
            outcome, error = "failed", f"{type(exc).__name__}: {exc}"
            # A database outage fails every tick the same way: one line each, no traceback
            # (the cause is the connection, not the loop's code). Anything else is a bug in
            # the loop and gets its traceback.
            outage = isinstance(exc, psycopg.OperationalError | DatabaseUnavailable)
            log.error(
                "tick %s failed: %s",
                spec.name,
                error.strip(),
                exc_info=not outage or log.isEnabledFor(logging.DEBUG),
                extra={"action": "tick_failed", **extra},
            )
        finally:
            state.running_ctx = None
            state.tick_started = None
        seconds = self.clock() - started
        recorded = ledger_params is None or self._finish(ledger_params, outcome, error)
        if not recorded and outcome == "ok":
            # The fenced "slot done" update was refused (or failed): as far as the cluster
            # knows this slot did not complete here, and a newer holder may run it again.
            outcome, error = "lost", "tick completed but its ledger row was fenced off"
        self._record_run(spec, tick_at, seconds, outcome, error)
        state.ticks += 1
        metrics.LOOP_TICKS.labels(spec.name, outcome).inc()
        metrics.LOOP_TICK_SECONDS.labels(spec.name).observe(seconds)
        if outcome == "ok":
            state.failures = 0
            metrics.LOOP_LAST_SUCCESS.labels(spec.name).set(self.wall())
        elif outcome == "failed":
            state.failures += 1
        level = logging.INFO if outcome == "ok" and (lease or trigger) else logging.DEBUG
        if outcome not in ("ok",):
            level = logging.WARNING
        log.log(
            level,
            "tick %s %s in %.3fs",
            spec.name,
            outcome,
            seconds,
            extra={
                "action": "tick_finished",
                "outcome": outcome,
                "seconds": round(seconds, 4),
                **ctx.stats,
                **extra,
            },
        )
        return outcome == "ok"

    # -- operator control (leasectl.loop_control) -----------------------------------------------

    def _control_turn(self, state: LoopState, lease: Lease | None) -> bool:
        """Before a scheduled tick: run a pending trigger, or hold a paused loop back.

        True when this turn was taken (the caller loops again). A paused leased loop keeps
        its lease; its slots pass unrun, and after the resume it waits for the next slot.
        """
        control = self.control
        if control is None:
            return False
        if not control.loaded.is_set():  # pauses unknown yet (database down at start)
            self._sleep(state, 0.5)
            return True
        pending = control.pending_trigger(state.spec.name)
        if pending is not None:
            self._triggered_tick(state, lease, pending)
            return True
        pause = control.paused(state.spec.name)
        if pause is not None:
            if not state.paused:
                log.info(
                    "loop %s paused by %s%s",
                    state.spec.name,
                    pause.paused_by,
                    f": {pause.reason}" if pause.reason else "",
                    extra={"action": "loop_held", "loop": state.spec.name, "by": pause.paused_by},
                )
            state.paused = True
            self._sleep(state, _MAX_SLEEP)  # a resume or a trigger wakes it
            return True
        if state.paused:
            state.paused = False
            latest = state.spec.schedule.latest(self.wall())
            if lease is not None and latest is not None:
                # Slots that passed while paused are not run (nor recorded missed): the next.
                state.last_done = max(state.last_done or latest, latest)
            log.info(
                "loop %s resumed",
                state.spec.name,
                extra={"action": "loop_unheld", "loop": state.spec.name},
            )
            return lease is None  # everywhere: reschedule from now
        return False

    def _triggered_tick(self, state: LoopState, lease: Lease | None, pending: Trigger) -> None:
        """One extra tick: on every replica (everywhere loop) or, claimed under the fence and
        recorded in the ledger, on the holder (leased)."""
        assert self.control is not None  # noqa: S101 - only called with a control
        spec = state.spec
        if lease is None:
            self.control.done(pending)
            metrics.LOOP_TRIGGERED.labels(spec.name).inc()
            self._tick(state, tick_at=self.wall(), lease=None, trigger=pending)
            return
        assert self.manager is not None  # noqa: S101 - a lease comes from the manager
        if not self.manager.tick_begin(spec.name, lease):
            self._sleep(state, 0.1)
            return
        try:
            params: dict[str, Any] = {
                "loop": spec.name,
                "replica": self.replica_id,
                "trigger": pending.id,
                **lease.fence_params(),
            }
            try:
                with self.pool.connection() as conn:
                    row = conn.execute(Q["claim_trigger"], params).fetchone()
            except psycopg.Error as exc:
                log.warning(
                    "cannot claim trigger %d of %s: %s",
                    pending.id,
                    spec.name,
                    exc,
                    extra={"action": "trigger_claim_failed", "loop": spec.name},
                )
                self._sleep(state, self._backoff(state))
                return
            self.control.done(pending)  # ours now, or claimed elsewhere / fenced off
            if row is None:
                return
            metrics.LOOP_TRIGGERED.labels(spec.name).inc()
            params = {**params, "tick_at": row[0]}
            del params["trigger"]
            self._tick(
                state,
                tick_at=row[0].timestamp(),
                lease=lease,
                ledger_params=params,
                trigger=pending,
            )
        finally:
            self.manager.tick_end(spec.name)

    def _on_control(self, changed: set[str], stop_now: set[str]) -> None:
        """Pauses or triggers changed: wake the loops concerned; ``--now`` stops their ticks."""
        every = ALL in changed
        for name, state in self.loops.items():
            if every or name in changed:
                if (ALL in stop_now or name in stop_now) and state.running_ctx is not None:
                    state.running_ctx.stop.set()
                state.wake.set()

    def _context(
        self, spec: LoopSpec, tick_at: float, lease: Lease | None, started: float
    ) -> TickContext | AsyncTickContext:
        common: dict[str, Any] = {
            "loop": spec.name,
            "replica_id": self.replica_id,
            "config": self.configs.get(spec.name, self.config),
            "tick_at": datetime.fromtimestamp(tick_at, UTC),
            "deadline": started + spec.timeout,
            "lease": lease,
            # Not "loops.<name>": that reads like the shipped ``loops`` package.
            "log": logging.getLogger(f"leasectl.loop.{spec.name}"),
            "clock": self.clock,
            "limiter": self.limiter,
        }
        if spec.is_async:
            assert self.event_loop is not None and self.event_loop.pool is not None  # noqa: S101 - checked in __init__; the pool opens with the thread
            return AsyncTickContext(pool=self.event_loop.pool, **common)
        return TickContext(pool=self.pool, **common)

    def _record_run(
        self, spec: LoopSpec, tick_at: float, seconds: float, outcome: str, error: str | None
    ) -> None:
        """Upsert this replica's last run of the loop and its next fire (``leasectl status``)."""
        end = self.wall()
        if spec.placement == "leased" or spec.cron is not None:
            upcoming = spec.schedule.next_after(max(tick_at, end))
        else:
            upcoming = end + spec.interval
        params = {
            "loop": spec.name,
            "replica": self.replica_id,
            "placement": spec.placement,
            "schedule": spec.schedule.describe(),
            "tz": spec.schedule.zone,
            "tick_at": datetime.fromtimestamp(tick_at, UTC),
            "started_at": datetime.fromtimestamp(end - seconds, UTC),
            "finished_at": datetime.fromtimestamp(end, UTC),
            "seconds": seconds,
            "outcome": outcome,
            "error": error[:2000] if error else None,
            "next_fire_at": datetime.fromtimestamp(upcoming, UTC),
        }
        try:
            with self.pool.connection() as conn:
                conn.execute(Q["record_run"], params)
        except psycopg.Error as exc:  # history is a courtesy; the tick's outcome stands
            log.debug("cannot record the run of %s: %s", spec.name, exc)

    def _finish(self, params: dict[str, Any], outcome: str, error: str | None) -> bool:
        """Record the slot's outcome, fenced; False when it could not be recorded."""
        try:
            with self.pool.connection() as conn:
                cur = conn.execute(Q["finish_tick"], {**params, "outcome": outcome, "error": error})
                return cur.rowcount == 1
        except psycopg.Error as exc:
            log.warning(
                "cannot record tick outcome of %s: %s",
                params["loop"],
                exc,
                extra={"action": "tick_finish_failed", "loop": params["loop"]},
            )
            return False

    def _last_done(self, spec: LoopSpec) -> float | None:
        try:
            with self.pool.connection() as conn:
                row = conn.execute(Q["last_done"], {"loop": spec.name}).fetchone()
        except psycopg.Error:
            return None
        if row is None or row[0] is None:
            return None
        return float(row[0].timestamp())

    def _backoff(self, state: LoopState) -> float:
        s = self.settings
        return backoff_delay(max(1, state.failures), s.error_backoff_initial, s.error_backoff_max)

    def _count_missed(self, state: LoopState, n: int) -> None:
        if n > 0:
            metrics.LOOP_TICKS.labels(state.spec.name, "missed").inc(n)

    def _count_skipped(self, state: LoopState, n: int) -> None:
        state.skipped += n
        metrics.LOOP_TICKS.labels(state.spec.name, "skipped").inc(n)

    @staticmethod
    def _jitter_offset(spec: LoopSpec) -> float:
        return random.uniform(-spec.jitter_s, spec.jitter_s)  # noqa: S311 - jitter spreads timers; nothing secret depends on it

    def _jittered(self, spec: LoopSpec) -> float:
        return spec.interval + self._jitter_offset(spec)

    def _on_lease_event(self, event: LeaseEvent) -> None:
        state = self.loops.get(event.lease)
        if state is None:
            return
        if event.kind in ("lost", "released"):
            ctx = state.running_ctx
            if ctx is not None and ctx.lease is not None and ctx.lease.epoch == event.epoch:
                ctx.stop.set()
        state.wake.set()


def _check_not_awaitable(spec: LoopSpec, result: object) -> None:
    """A sync loop function that returned an awaitable ran nothing: fail its tick loudly."""
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if callable(close):
            close()  # no "coroutine was never awaited" warning on top of the real error
        raise TypeError(
            f"loop {spec.name}: its function returned an awaitable "
            f"({type(result).__name__}) instead of running; declare it `async def` so "
            "leasectl awaits it on the App's event loop"
        )
