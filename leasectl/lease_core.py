"""The lease manager's decisions, apart from its waiting: who tries which lease when, what a
heartbeat proved, when to hand a lease over, whom to evict.

Every decision the lease manager makes lives here, as plain methods over plain state: no
database, no threads, no clock, no randomness. The caller (the lock-session loop
:mod:`leasectl._lease_loop`, the watch ring :mod:`leasectl._watch_ring` and the standby
observer :mod:`leasectl._standby_observer`, under the manager's lock) does the waiting and the
statements, reads the monotonic clock and passes ``now`` in, and draws jitter itself. The
same inputs give the same answers, so the deterministic simulator (``tests/sim/``) and the
unit tests check the rules themselves, and a rule changes in one place:

* how long a replica of rank ``r`` waits for a free lease: :func:`leasectl.placement.turn_delay`
  (``r * placement_step``), read by :meth:`LeaseCore.try_delays` and the standbys' question;
* how long a rebalance's receiver has the lease to itself: :data:`RESERVE_STEPS`;
* when a holder is stale enough to evict: :meth:`LeaseCore.stale_holder`;
* when a held lease is handed over: :meth:`LeaseCore.plan_rebalance`.

Each wanted lease is, for this replica, in one of these states (kazoo's ``SetPartitioner``
draws its own the same way)::

                  step-down cooldown over, resume()
      SUSPENDED ------------------------------------> WATCHING <-----------------------+
         ^                                             |    ^                           |
         | step_down, abandon                 its turn |    | not got                   |
         | (from any state)                            v    |                           |
         |                                           TRYING +                           |
         |                                             | got (epoch bumped)             |
         |                           renewed           v                                |
         |                        +----------------> HELD --- expired, unproven, ------>+
         |                        +------------------+  |     connection lost           |
         |                                              |     (self-fence)              |
         |              a better replica settled here   v                               |
         |                                        HANDING_OVER --- released when no --->+
         |                                                          tick runs, naming
         |                                                          the receiver

* WATCHING: not held here; tried once ``turn_delay(rank)`` has passed since it was seen free
  (``free_since``), at once when placement ranks this replica first or a rebalance reserved
  it for this replica, never while a rebalance reserved it for another (``reserved``);
* HELD: valid until the last proving heartbeat's start + ``lease_ttl`` (``Lease``);
* HANDING_OVER: marked in ``handing_over``; released (naming the receiver, who alone tries it
  until it takes it, is gone, or the reservation lapses) when the loop's tick is not running.

And the replica as a whole, with ``leases.standby: pooled``: STANDBY (no lock session, it
polls through the pooler) until :meth:`LeaseCore.direct_reason` finds a reason (it holds, is
chosen, is a heir, or a free lease reached its turn), then DIRECT until nothing has needed
it for ``standby_after`` (:meth:`LeaseCore.idle_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from leasectl import control, placement
from leasectl.settings import LeaseSettings

if TYPE_CHECKING:
    from leasectl.leases import Lease
    from leasectl.locks import Contender, Drain

#: A rebalance hand-over reserves the lease for its receiver this many placement steps (+1 s).
RESERVE_STEPS = 3

#: A campaign right after a peer was heard gone that finds its lease still locked (the
#: server frees a dead session's locks one by one) tries again this soon, for this long.
GONE_RETRY = 0.02
GONE_WINDOW = 0.5

#: A standby far from the top of every lease's order asks for a changed live view about this
#: often (each time 0.5 to 1.5 times it, at random: the standbys' asks stay spread out).
VIEW_REFRESH = 10.0


def _never(bug: str) -> bool:
    return False


@dataclass(frozen=True)
class CoreConfig:
    """What the decisions depend on that does not change while the replica runs."""

    replica_id: str
    #: the leases it may campaign for (declared, its labels allow them)
    wanted: Sequence[str]
    #: those whose ``preferred_holder`` names this replica or one of its labels
    preferred_for: Sequence[str]
    may_lead: bool
    #: ``leases.placement: spread`` (else pack: everyone tries at once)
    spread: bool
    #: ``leases.standby: pooled`` (a lock session only while needed)
    pooled: bool
    leases: LeaseSettings
    #: a fault point the simulator turns on (:meth:`leasectl.runtime.Runtime.planted`)
    planted: Callable[[str], bool] = _never

    @property
    def watched(self) -> bool:
        """Whether this replica is in the watch ring (holds a liveness lock, watches a peer):
        spread placement in direct mode. Pooled mode has no ring: it would double the direct
        sessions; heirs campaign every heir_interval instead."""
        return self.spread and self.may_lead and not self.pooled


@dataclass
class LeaseState:
    """Per lease, where this replica stands (see the module's state diagram)."""

    held: dict[str, Lease] = field(default_factory=dict)
    cooldown_until: dict[str, float] = field(default_factory=dict)
    mismatch_since: dict[str, float] = field(default_factory=dict)
    # not campaigned for: a wedged tick's loop, an on-demand lease no block wants now
    suspended: set[str] = field(default_factory=set)
    free_since: dict[str, float] = field(default_factory=dict)  # seen free (not ours) since
    acquired_at: dict[str, float] = field(default_factory=dict)  # monotonic, held leases
    handing_over: dict[str, str] = field(default_factory=dict)  # lease -> better replica
    ticking: set[str] = field(default_factory=set)  # leases whose loop is mid-tick here
    # lease -> (the replica a rebalance handed it to, monotonic deadline): until then only
    # that replica tries it, whatever the others' (possibly not yet converged) views say
    reserved: dict[str, tuple[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class CampaignPlan:
    """One campaign round: the leases to try now, and those only to look at."""

    tried: list[str]
    watched: list[str]
    delays: dict[str, float]


@dataclass(frozen=True)
class CampaignSeen:
    """What a campaign's rows changed: when the next watched lease becomes this replica's
    turn (None: none), and the watch targets of each view change they caused, in order."""

    due: float | None
    aims: list[str | None]


@dataclass(frozen=True)
class Eviction:
    """A holder whose renewal is older than ``lease_ttl + eviction_grace``: evict it."""

    name: str
    pid: int
    holder: str | None
    age: float | None


class LeaseCore:
    """The decisions of one replica's lease manager, over its :class:`LeaseState` and its
    view of the live replicas. Not thread-safe: the manager calls it under its lock."""

    def __init__(self, config: CoreConfig, *, suspended: Iterable[str] = ()) -> None:
        self.config = config
        self.state = LeaseState(suspended=set(suspended))
        self.replicas: list[placement.Replica] | None = None  # live, from the last heartbeat
        self.view_gen = 0  # bumped whenever what placement ranks by changes in replicas
        self._view_sig: tuple[Any, ...] | None = None  # that part of the view, to compare
        self.view_hash = ""  # the live view's fingerprint as the last standby poll saw it
        self.view_due = 0.0  # when a far standby next asks for a changed view
        self._plan: placement.Placement | None = None
        self._plan_key: tuple[int, tuple[str, ...]] | None = None
        # want_view's inputs from one placement view: (its _plan_key, this replica's best
        # HRW position over its leases, how many leases the view has)
        self._margin: tuple[Any, int, int] | None = None
        self._reason_key: tuple[Any, ...] | None = None  # direct_reason's inputs, last time
        self._reason: str | None = None
        self.holders: dict[str, str | None] = {}  # lease -> holder (None: free), last seen
        self.published: list[str] | None = None  # campaigns_for as last written
        self._gone_said: dict[str, float] = {}  # replica -> when its replica_gone was acted on
        self._idle_since: float | None = None  # direct but needed by nothing, since

    # -- candidacy and the placement view --------------------------------------------------

    def candidacy(self, now: float) -> list[str]:
        """The leases this replica campaigns for now (published as ``campaigns_for``)."""
        cfg, st = self.config, self.state
        if not cfg.may_lead:
            return []
        return sorted(
            n for n in cfg.wanted if n not in st.suspended and st.cooldown_until.get(n, 0.0) <= now
        )

    def plan(self, now: float) -> placement.Placement:
        """Placement over the last heartbeat's live replicas, with this replica's own entry
        as it knows it now (computed once per view or candidacy change)."""
        candidacy = self.candidacy(now)
        key = (self.view_gen, tuple(candidacy))
        if self._plan is None or self._plan_key != key:
            cfg = self.config
            view = placement.self_view(
                cfg.replica_id, candidacy, list(cfg.preferred_for), self.replicas or []
            )
            self._plan, self._plan_key = placement.Placement(view), key
        return self._plan

    def set_view(
        self, replicas: list[placement.Replica], observed_at: float | None = None
    ) -> str | None:
        """A new view of the live replicas (a heartbeat, a poll, a peer gone); returns the
        peer to watch in it.

        ``observed_at`` is when the statement that read it started: a peer whose
        ``replica_gone`` was heard since then is left out. The news can arrive while that
        statement runs (a NOTIFY is delivered with its result) and is newer than what the
        statement saw: putting the dead peer back would make its next candidate wait a
        placement step for a lease nobody else will take (seen: a rebalance's receiver
        killed right after it acquired, taken over 0.9 s later instead of milliseconds).
        """
        if observed_at is not None:
            newer = {r for r, t in self._gone_said.items() if t >= observed_at}
            if newer:
                replicas = [r for r in replicas if r.id not in newer]
        self.replicas = replicas
        # Only what placement ranks by counts as a change: every heartbeat brings fresh
        # live_for values, and rebuilding placement over hundreds of replicas each second
        # (and again for every heir question) is what made a heir slow to act under load.
        sig = tuple(
            sorted((r.id, r.campaigns_for, r.preferred_for, r.wedged, r.labels) for r in replicas)
        )
        if sig != self._view_sig:
            self._view_sig = sig
            self.view_hash = ""  # a standby poll then sends the whole view again
            self.view_gen += 1
        return self.watch_target()

    def watch_target(self) -> str | None:
        """The peer this replica watches: its successor in the sorted ring of live replicas
        (every live replica is watched by exactly one other; None when alone)."""
        if not self.config.watched or self.replicas is None:
            return None
        me = self.config.replica_id
        ring = sorted({r.id for r in self.replicas} | {me})
        if len(ring) < 2:
            return None
        return ring[(ring.index(me) + 1) % len(ring)]

    def drop_from_view(self, gone: str) -> bool:
        """Remove ``gone`` from the view until the next heartbeat; True if it was in (the
        caller then re-aims the watch at :meth:`watch_target`)."""
        view = self.replicas
        if gone == self.config.replica_id or view is None or not any(r.id == gone for r in view):
            return False
        self.set_view([r for r in view if r.id != gone])
        return True

    def try_delays(self, names: list[str], now: float) -> dict[str, float]:
        """Per lease, how long after seeing it free this replica waits (0: try at once)."""
        if not self.config.spread or self.replicas is None:
            return {n: 0.0 for n in names}
        plan = self.plan(now)
        step = self.config.leases.placement_step
        return {n: plan.try_delay(n, self.config.replica_id, step) for n in names}

    def receiver(self, name: str, now: float) -> str | None:
        """Who should take ``name`` once this replica gives it up (spread placement): the
        best-ranked live candidate other than this replica (None: nobody, or pack)."""
        if not self.config.spread or self.replicas is None:
            return None
        me = self.config.replica_id
        ranking = [r.id for r in self.plan(now).ranking(name) if r.id != me]
        return ranking[0] if ranking else None

    # -- reservations and control messages -------------------------------------------------

    def reserve(self, names: Iterable[str], target: str, now: float) -> None:
        """Only ``target`` tries these leases for a while (a rebalance handed them to it).

        Long enough for the target to take them (a few placement steps); if it does not (it
        died meanwhile), the reservation lapses and placement decides again.
        """
        until = now + RESERVE_STEPS * self.config.leases.placement_step + 1.0
        for name in names:
            self.state.reserved[name] = (target, until)

    def end_reservations(self, receiver: str, names: Iterable[str] | None = None) -> bool:
        """A reservation ends when its receiver took the lease or is gone: honouring it any
        longer only delays the next candidate (a receiver killed right after it acquired
        kept every peer away for the whole reservation). True if one ended."""
        if self.config.planted("reservation_outlives_receiver"):
            return False
        wanted = None if names is None else set(names)
        reserved = self.state.reserved
        ended = [
            n for n, (t, _) in reserved.items() if t == receiver and (wanted is None or n in wanted)
        ]
        for n in ended:
            del reserved[n]
        return bool(ended)

    def replica_gone(self, gone: str, now: float) -> tuple[bool, bool]:
        """A peer's lock session ended (its watcher said so) or it is stopping (it said so).

        Drop it from the view until the next heartbeat confirms it, so the next candidate of
        each of its leases is rank 0 now and tries at once. Returns (campaign now, the view
        changed: re-aim the watch).
        """
        if gone == self.config.replica_id:
            return False, False
        dropped = self.drop_from_view(gone)
        self.end_reservations(gone)
        ttl = self.config.leases.lease_ttl
        # Pooled standbys repeat a crash at every poll until its lease is taken (or lease_ttl
        # has passed): the first word campaigns, the repeats change nothing.
        self._gone_said = {r: t for r, t in self._gone_said.items() if now - t < ttl}
        if gone in self._gone_said:
            return False, dropped
        self._gone_said[gone] = now
        return bool(self.config.may_lead), dropped

    def hand_over_heard(self, msg: control.HandOver, now: float) -> bool:
        """A peer's rebalance handed leases to ``msg.to``; True: it is this replica (try now)."""
        self.reserve(list(msg.leases), msg.to, now)
        return msg.to == self.config.replica_id

    def release_heard(self, name: str, now: float) -> bool:
        """A lease was released (NOTIFY); True: campaign now (one this replica wants)."""
        if name not in self.config.wanted:
            return False
        if name not in self.state.held:
            self.state.free_since.setdefault(name, now)
        return True

    def step_down_asked(self, msg: control.StepDown, now: float) -> list[str]:
        """``leasectl step-down`` for a lease, a replica (this one?) or everything: start the
        cooldowns; returns the held leases to release."""
        cfg, st = self.config, self.state
        if msg.replica and msg.replica != cfg.replica_id:
            return []
        names = [msg.lease] if msg.lease else list(st.held)
        cooldown = msg.cooldown or cfg.leases.step_down_cooldown
        mine = [n for n in names if n in st.held]
        # `step-down --replica <this one>` drains the replica: it stays away from every
        # lease for the cooldown, not only those it held (with spread placement it would
        # otherwise be handed others meanwhile).
        away = cfg.wanted if msg.replica and not msg.lease else mine
        for n in away:
            st.cooldown_until[n] = now + cooldown
        return mine

    def drain(self, drain: Drain, now: float) -> float | None:
        """``step-down --replica`` <this one>, read from its row some time after it was asked:
        stay away from every lease for what is left of the cooldown. Returns that time when
        the request is new (not the same one read again), else None."""
        cfg, st = self.config, self.state
        left = (drain.cooldown or cfg.leases.step_down_cooldown) - drain.age_s
        if left <= 0:
            return None
        until = now + left
        before = max(st.cooldown_until.values(), default=0.0)
        for name in cfg.wanted:
            st.cooldown_until[name] = max(st.cooldown_until.get(name, 0.0), until)
        return left if until > before + 1.0 else None

    # -- campaign ---------------------------------------------------------------------------

    def campaign_plan(self, now: float) -> CampaignPlan | None:
        """The leases it is this replica's turn for, and those it only watches (None: no
        campaign: it may not lead, or holds or stays away from every lease it wants)."""
        cfg, st = self.config, self.state
        if not cfg.may_lead:
            return None
        todo = [
            n
            for n in cfg.wanted
            if n not in st.held and n not in st.suspended and st.cooldown_until.get(n, 0.0) <= now
        ]
        if not todo:
            return None
        delays = self.try_delays(todo, now)
        free_since = st.free_since
        reserved = {n: r for n, r in st.reserved.items() if r[1] > now}
        st.reserved = reserved
        me = cfg.replica_id
        tried = [
            n
            for n in todo
            if (n in reserved and reserved[n][0] == me)
            or (
                n not in reserved
                and (delays[n] <= 0 or (n in free_since and now >= free_since[n] + delays[n]))
            )
        ]
        return CampaignPlan(tried, [n for n in todo if n not in tried], delays)

    def campaign_seen(
        self, plan: CampaignPlan, rows: Sequence[Contender], now: float, later: float
    ) -> CampaignSeen:
        """What the campaign's rows say about each lease: seen free or held (and by whom),
        a reservation's receiver took its lease, a holder crashed (free, never released, its
        session gone: dropped from the view now, as a watcher's replica_gone would, so the
        lease's next candidate is rank 0 at once). ``now``: when the campaign began;
        ``later``: the time its answer came back."""
        st, me = self.state, self.config.replica_id
        aims: list[str | None] = []
        changed = False  # a holder's crash changed the view or ended a reservation
        for r in rows:
            if r.got or r.holder_pid is not None:
                st.free_since.pop(r.name, None)
            else:
                st.free_since.setdefault(r.name, now)
            held_by = r.row_holder or "?"
            self.holders[r.name] = me if r.got else None if r.holder_pid is None else held_by
            if r.holder_pid is not None and r.row_holder and r.row_pid == r.holder_pid:
                self.end_reservations(r.row_holder, [r.name])  # the receiver took it
            if r.holder_gone and r.row_holder and not r.got:
                if self.drop_from_view(r.row_holder):
                    aims.append(self.watch_target())
                    changed = True
                changed = self.end_reservations(r.row_holder) or changed
        delays = self.try_delays(plan.watched, later) if changed else plan.delays
        due = self._due(plan.watched, delays, now)
        if self._release_in_flight(rows, plan.tried, delays, later):
            due = later + GONE_RETRY if due is None else min(due, later + GONE_RETRY)
        return CampaignSeen(due, aims)

    def _release_in_flight(
        self,
        rows: Sequence[Contender],
        tried: Sequence[str],
        delays: Mapping[str, float],
        now: float,
    ) -> bool:
        """A lease this replica would take at once is still locked by a peer just heard gone.

        The server wakes the peer's watcher as it frees the session's locks, one by one: a
        campaign sent on that ``replica_gone`` can still find the lease locked for a moment.
        Waiting for the next poll (a second) let a lower-ranked peer, whose campaign came a
        little later, take it one placement step after the crash instead of milliseconds.
        """
        for r in rows:
            said = self._gone_said.get(r.row_holder or "")
            if (
                said is not None
                and now - said < GONE_WINDOW
                and not r.got
                and r.holder_pid is not None
                and (r.name in tried or delays.get(r.name) == 0.0)
            ):
                return True
        return False

    def _due(self, watched: list[str], delays: Mapping[str, float], now: float) -> float | None:
        """When the first watched lease becomes this replica's turn (None: none)."""
        free_since = self.state.free_since
        reserved = {n: r for n, r in self.state.reserved.items() if r[1] > now}
        due = [free_since[n] + delays[n] for n in watched if n in free_since and n not in reserved]
        due += [reserved[n][1] for n in watched if n in reserved]
        return min(due) if due else None

    def stale_holder(self, row: Contender, now: float) -> Eviction | None:
        """After a campaign: whether the holder of ``row``'s lease is stale enough to evict
        (its last renewal older than ``lease_ttl + eviction_grace``, DB clock)."""
        ls, mismatch = self.config.leases, self.state.mismatch_since
        name, ok, age, holder_pid, row_pid, row_holder, _gone = row
        if ok:
            mismatch.pop(name, None)
            return None
        if holder_pid is None:
            return None  # free: tried next round if it is our turn; nothing to evict
        threshold = ls.lease_ttl + ls.eviction_grace
        if row_pid != holder_pid:
            # The row does not describe the lock's holder (it may be between lock and
            # epoch bump). Evict only if that persists past the threshold.
            first = mismatch.setdefault(name, now)
            stale = now - first > threshold
        else:
            mismatch.pop(name, None)
            stale = age is not None and age > threshold
        return Eviction(name, holder_pid, row_holder, age) if stale else None

    def evicted(self, name: str) -> None:
        self.state.mismatch_since.pop(name, None)

    def acquired(self, name: str, lease: Lease, now: float) -> None:
        """This replica took ``name`` (its epoch bumped)."""
        st = self.state
        st.held[name] = lease
        st.acquired_at[name] = now
        st.free_since.pop(name, None)
        st.reserved.pop(name, None)

    # -- holding ---------------------------------------------------------------------------

    def expired(self, now: float) -> list[Lease]:
        """Held leases whose validity ran out (heartbeats failing or stuck): self-fence."""
        return [lease for lease in self.state.held.values() if not lease._valid_at(now)]

    def heartbeat_proved(
        self, held: list[Lease], unproven: Iterable[str], valid_until: float
    ) -> list[Lease]:
        """A heartbeat proved every lock and epoch of ``held`` but ``unproven``: renew those
        until ``valid_until``; returns the others, to drop."""
        missing = set(unproven)
        gone = []
        for lease in held:
            if lease.name not in missing:
                lease._renew(valid_until)
            else:
                gone.append(lease)
        return gone

    def forget(self, lease: Lease) -> None:
        """``lease`` is no longer held here (lost or dropped)."""
        if self.state.held.get(lease.name) is lease:
            del self.state.held[lease.name]

    def take(self, names: Iterable[str]) -> list[Lease]:
        """Stop holding ``names`` (being released); returns those that were held."""
        held = self.state.held
        return [held.pop(n) for n in names if n in held]

    def tick_begin(self, name: str, lease: Lease, now: float) -> bool:
        """A tick of ``name`` may run under ``lease``: no hand-over pending, still the held,
        valid one. Until :meth:`tick_end` the lease is not handed over."""
        st = self.state
        if name in st.handing_over or st.held.get(name) is not lease or not lease._valid_at(now):
            return False
        st.ticking.add(name)
        return True

    def tick_end(self, name: str) -> bool:
        """The tick of ``name`` returned; True: a hand-over waited for it (do it now)."""
        self.state.ticking.discard(name)
        return name in self.state.handing_over

    # -- rebalance --------------------------------------------------------------------------

    def plan_rebalance(self, now: float) -> list[tuple[str, str]]:
        """After a heartbeat: mark held leases a better, settled replica should hold; returns
        the newly marked (lease, receiver) pairs.

        A lease is handed over only once it has stayed here ``rebalance_cooldown`` and the
        best-ranked candidate has been live ``rebalance_after`` (both: no ping-pong, one move
        per rebalance); the release itself waits for the loop's running tick to end.
        """
        cfg, st = self.config, self.state
        if not cfg.spread or self.replicas is None:
            return []
        ls = cfg.leases
        plan = self.plan(now)
        live_for = {r.id: r.live_for for r in self.replicas}  # fresher than the cached plan's
        marked = []
        for name in list(st.held):
            target = None
            if now - st.acquired_at.get(name, now) >= ls.rebalance_cooldown:
                target = plan.rebalance_target(
                    name, cfg.replica_id, settle=ls.rebalance_after, live_for=live_for
                )
            before = st.handing_over.get(name)
            if target is None:
                st.handing_over.pop(name, None)
            else:
                st.handing_over[name] = target
                if target != before:
                    marked.append((name, target))
        return marked

    def hand_over_ready(self) -> dict[str, str]:
        """The leases marked for hand-over whose loop is not mid-tick, with their receivers
        (marks of leases no longer held are dropped)."""
        st = self.state
        for name in [n for n in st.handing_over if n not in st.held]:
            del st.handing_over[name]
        return {n: t for n, t in st.handing_over.items() if n not in st.ticking}

    def handed_over(self, names: Iterable[str]) -> None:
        for name in names:
            self.state.handing_over.pop(name, None)

    # -- pooled standby ----------------------------------------------------------------------

    def direct_reason(self, now: float, *, commands: bool = False) -> str | None:
        """Why this replica needs its lock session now (None: it may be a standby).

        ``commands``: a command (step-down, abandon, wedged report) waits for a session.
        """
        st, me = self.state, self.config.replica_id
        if st.held:
            return f"holds {', '.join(sorted(st.held))}"
        if st.handing_over or commands:
            return "a hand-over or command is pending"
        for name, (target, until) in st.reserved.items():
            if target == me and until > now:
                return f"a rebalance hands it {name}"
        free_for = {n: now - t for n, t in st.free_since.items()}
        candidacy = self.candidacy(now)
        holders = dict(self.holders)
        # The same view, candidacy and holders give the same answer: a standby asks once a
        # second and its view rarely changes. A free lease's answer depends on time: not cached.
        key = (self.view_gen, tuple(candidacy), tuple(sorted(holders.items(), key=str)))
        if key == self._reason_key and not free_for:
            return self._reason
        plan = self.plan(now)  # built over self_view: this replica as it knows itself
        step = self.config.leases.placement_step
        reason = placement.direct_reason(
            me, candidacy, plan.replicas, holders, free_for, step, base=plan
        )
        self._reason_key, self._reason = key, reason
        return reason

    def idle_for(self, since: float, now: float, *, commands: bool = False) -> float:
        """How long this direct replica has been needed by nothing (0 while it is needed), at
        the round that began at ``since``; ``now``: the time the question is asked."""
        if self.direct_reason(now, commands=commands) is not None:
            self._idle_since = None
            return 0.0
        if self._idle_since is None:
            self._idle_since = since
        return since - self._idle_since

    def demoted(self) -> None:
        """The lock session was closed: a standby again."""
        self._idle_since = None

    def want_view(self, candidacy: list[str], now: float) -> bool:
        """Whether this standby's poll should bring a changed live view now.

        Every membership change changes the view, and with hundreds of standbys re-reading
        hundreds of rows at once that is seconds of server and client CPU, at the moment a
        heir needs the server. A standby at least ``M + 3`` places from the top of every
        lease's HRW order (M leases) cannot become a choice or a heir through one or two
        replicas leaving, so it asks only when its own ``view_due`` comes (about every
        :data:`VIEW_REFRESH` seconds, each standby at its own moment: not all at the first
        change after a quiet spell). One near the top takes a change at once; so does every
        standby once a lease has stayed free for ``M + 2`` placement steps (the replicas
        ranked before it did not take it).
        """
        if self.replicas is None or not self.view_hash:
            return True
        if now >= self.view_due:
            return True
        view = self.plan(now).replicas  # this view, with this replica's own candidacy
        if self._margin is None or self._margin[0] != self._plan_key:
            me = self.config.replica_id
            positions = [placement.hrw_position(n, me, view) for n in candidacy]
            best = min((p for p in positions if p is not None), default=1 << 30)
            self._margin = (self._plan_key, best, len({n for r in view for n in r.campaigns_for}))
        _, best, leases = self._margin
        long_free = placement.turn_delay(leases + 2, self.config.leases.placement_step)
        if any(now - t >= long_free for t in list(self.state.free_since.values())):
            return True
        return best <= leases + 2

    def polled(self, holders: Mapping[str, str | None], now: float) -> None:
        """A standby poll's holders: each lease free (since when) or held, and by whom."""
        for name, holder in holders.items():
            self.holders[name] = holder
            if holder is None:
                self.state.free_since.setdefault(name, now)
            else:
                self.state.free_since.pop(name, None)

    def view_asked(self, now: float, jitter: float) -> None:
        """A standby poll asked for the view: ask again about ``VIEW_REFRESH * jitter`` later."""
        self.view_due = now + VIEW_REFRESH * jitter

    # -- self-check --------------------------------------------------------------------------

    def cache_problem(self, now: float, *, commands: bool = False) -> str | None:
        """Whether a placement cache that is current (``plan``'s placement, ``want_view``'s
        margin, ``direct_reason``'s answer) differs from a fresh computation from the same
        inputs: what went wrong, or None. Reads only; the simulator asks it every 0.5
        simulated seconds (invariant C1 in docs/testing.md)."""
        cfg = self.config
        me, candidacy = cfg.replica_id, self.candidacy(now)
        key = (self.view_gen, tuple(candidacy))
        own = list(cfg.preferred_for)
        fresh = placement.Placement(placement.self_view(me, candidacy, own, self.replicas or []))
        plan = self._plan if self._plan_key == key else None
        if plan is not None and (
            _ranked_by(plan.replicas) != _ranked_by(fresh.replicas)
            or plan.assignment != fresh.assignment
        ):
            return (
                f"{me}: the placement cache differs from its recomputation: cached "
                f"{plan.assignment}, fresh {fresh.assignment} (key {key})"
            )
        margin = self._margin
        if margin is not None and self._plan_key == key and margin[0] == key:
            view = fresh.replicas
            positions = [placement.hrw_position(n, me, view) for n in candidacy]
            best = min((p for p in positions if p is not None), default=1 << 30)
            leases = len({n for r in view for n in r.campaigns_for})
            if (margin[1], margin[2]) != (best, leases):
                return f"{me}: want_view's margin {margin[1:]} != recomputed {(best, leases)}"
        return self._reason_problem(now, candidacy, fresh, commands=commands)

    def _reason_problem(
        self, now: float, candidacy: list[str], fresh: placement.Placement, *, commands: bool
    ) -> str | None:
        st, me = self.state, self.config.replica_id
        early = bool(st.held or st.handing_over or commands) or any(
            t == me and u > now for t, u in st.reserved.values()
        )
        holders = dict(self.holders)
        rkey = (self.view_gen, tuple(candidacy), tuple(sorted(holders.items(), key=str)))
        if early or st.free_since or self._reason_key != rkey:
            return None  # the cached answer would not be used now
        step = self.config.leases.placement_step
        again = placement.direct_reason(me, candidacy, fresh.replicas, holders, {}, step)
        if again != self._reason:
            return f"{me}: direct_reason cached {self._reason!r}, recomputed {again!r}"
        return None


def _ranked_by(view: Iterable[placement.Replica]) -> list[tuple[Any, ...]]:
    """What placement ranks by in a view (not ``live_for``: the rebalance reads it fresh)."""
    return sorted((r.id, r.campaigns_for, r.preferred_for, r.wedged) for r in view)
