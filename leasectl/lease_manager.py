"""The lease manager: one thread per replica that campaigns, heartbeats and evicts.

The contract it keeps (what a lease guarantees, and how writes are fenced) is in
:mod:`leasectl.leases`; every statement it sends goes through the lock connection's
:class:`~leasectl.locks.LeaseSession` interface, which also turns psycopg errors into
:class:`~leasectl.errors.DatabaseUnavailable`. The thread's timing:

* campaign every ``acquire_interval`` (with jitter), and at once when a release is NOTIFYed;
* heartbeat every ``heartbeat_interval``: one statement proves every held lock and epoch;
  each lease is then valid until the heartbeat's start + ``lease_ttl`` (monotonic clock);
* self-fence: a lease whose validity ran out is dropped (``ttl_expired``);
* evict a holder whose last renewal is older than ``lease_ttl + eviction_grace`` (DB clock);
* on any database error drop every lease, close the connection, reconnect with backoff;
* between those deadlines it sleeps in one ``select`` on the lock connection's socket and a
  wake-up pipe (:class:`Waker`): a NOTIFY, a command (step-down, abandon, a tick's end) or
  :meth:`LeaseManager.stop` wakes it at once, and an idle replica costs no CPU in between.

Crash takeover (spread placement): every replica holds a *liveness lock* on its lock
connection and watches one peer's, its successor in the sorted ring of live replicas, from a
second connection (:class:`leasectl.locks.WatchSession`, on the ``leasectl-watch`` thread).
The server wakes the watcher the instant the peer's session ends (a crash, a kill, an
eviction, a partition dropped at D_srv) and the same transaction NOTIFYs ``replica_gone`` to
every replica: each drops the peer from its placement view and campaigns at once, so the
next-ranked candidate of each of its leases takes it within milliseconds while the others keep
their placement delay. One wait per replica covers every lease of the watched peer; the
campaign poll stays as the fallback (docs/safety.md, "The watch connection").

Placement (``leases.placement: spread``, :mod:`leasectl.placement`): the heartbeat also
returns the live replicas; a replica that is not a lease's best-ranked candidate tries it
only ``rank * placement_step`` after it saw it free, and a holder hands a lease over (release +
NOTIFY, never while a tick of that loop runs: see :meth:`LeaseManager.tick_begin`) when a
better candidate has been live for ``rebalance_after`` and the lease has stayed here for
``rebalance_cooldown``. ``pack`` is the plain race: everyone tries at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from leasectl import control, placement, timing
from leasectl._version import __version__
from leasectl.errors import (
    DatabaseUnavailable,
    KeyCollision,
    LeasectlError,
    LeaseTimeout,
    RowLockTimeout,
    SafetyInequalityViolated,
)
from leasectl.keys import KeyRegistry
from leasectl.leases import Clock, Lease, LeaseEvent
from leasectl.locks import (
    REGISTER_LIVE_S,
    Drain,
    LeaseSession,
    LockSession,
    PeerWatch,
    WatchSession,
    notify_control,
    request_drain,
)
from leasectl.runtime import DEFAULT as DEFAULT_RUNTIME
from leasectl.runtime import Joinable, Runtime
from leasectl.settings import CoreSettings
from leasectl.standby import StandbyPoll, StandbySession, StandbyView

log = logging.getLogger("leasectl.leases")

#: A rebalance hand-over reserves the lease for its receiver this many placement steps (+1 s).
_RESERVE_STEPS = 3

#: A standby far from the top of every lease's order asks for a changed live view about this
#: often (each time 0.5 to 1.5 times it, at random: the standbys' asks stay spread out).
_VIEW_REFRESH = 10.0

#: The application_name of every standby's connection (no replica id: see _open_standby).
STANDBY_APPLICATION_NAME = "leasectl-standby"

#: The watch connection's lock_timeout: how long one server-side wait lasts before it is
#: re-issued. It bounds what the wait can cost others (a snapshot held, a CREATE INDEX
#: CONCURRENTLY kept waiting) and costs one statement per period: 0.5 statements/s.
WATCH_LOCK_TIMEOUT = 2.0


def make_replica_id(configured: str | None = None) -> str:
    """Unique per process: host + pid + random suffix, unless configured."""
    if configured:
        return configured
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


@dataclass
class _State:
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


class LeaseManager:
    """Campaigns for the wanted leases and keeps the held ones alive, on one thread.

    The thread owns the replica's single lock connection: it campaigns every
    ``acquire_interval`` (with jitter) and at once when a release is NOTIFYed, heartbeats every
    ``heartbeat_interval``, evicts holders whose renewal is older than ``lease_ttl +
    eviction_grace`` (DB clock), and on any error drops every lease, closes the connection
    and reconnects with backoff.
    """

    __module__ = "leasectl"

    def __init__(
        self,
        replica_id: str,
        wanted: Iterable[str],
        settings: CoreSettings,
        *,
        dsn: str,
        lock_dsn: str | None = None,
        may_lead: bool = True,
        loops: Iterable[str] = (),
        clock: Clock | None = None,
        check_pooler: bool = True,
        session_factory: Callable[[], LeaseSession] | None = None,
        labels: Iterable[str] = (),
        policies: Mapping[str, placement.LeasePolicy] | None = None,
        watch_factory: Callable[[], PeerWatch] | None = None,
        standby_factory: Callable[[], StandbyPoll] | None = None,
        runtime: Runtime | None = None,
        on_demand: Iterable[str] = (),
    ) -> None:
        """``session_factory`` opens the lock connection; the default is
        :meth:`LockSession.connect` with these settings (tests pass an in-memory one).
        ``labels``: this replica's ``replica.labels``; ``policies``: each lease's placement
        wishes as its loop declares them (``leases.loops`` in ``settings`` overrides them).
        A lease whose ``requires_labels`` this replica lacks is never campaigned for.
        ``runtime``: threads, time, randomness and identity (:mod:`leasectl.runtime`; the
        simulator passes its own); ``clock`` defaults to the runtime's.
        ``on_demand``: wanted leases campaigned for only between :meth:`resume` and
        :meth:`abandon` (``with app.lease()`` blocks); not declared as expected held."""
        self.runtime: Runtime = runtime or DEFAULT_RUNTIME
        self.replica_id = replica_id
        self.settings = settings
        self.dsn = dsn
        self.lock_dsn = lock_dsn or dsn
        self.may_lead = may_lead
        self.loops = list(loops)
        self.clock: Clock = clock or self.runtime.clock
        self.check_pooler = check_pooler
        self._session_factory = session_factory or self._open_lock_session
        self._watch_factory = watch_factory or self._open_watch_session
        self._standby_factory = standby_factory or self._open_standby
        self.registry = KeyRegistry()
        self.labels = tuple(labels)
        self.spread = settings.leases.placement == "spread"
        #: leases.standby: pooled: a lock session only while needed (holder, choice, heir)
        self.pooled = self.spread and settings.leases.standby == "pooled"
        names = list(wanted)
        idle = set(on_demand)
        #: every lease this replica's App declares (published for ``leasectl status``)
        self.declared = sorted(n for n in names if n not in idle)
        declared = policies or {}
        overrides = settings.leases.loops
        self.policies: dict[str, placement.LeasePolicy] = {}
        for name in names:
            own = declared.get(name, placement.LeasePolicy())
            cfg = overrides.get(name)
            self.policies[name] = placement.merge_policy(
                own.preferred_holder,
                own.requires_labels,
                cfg.preferred_holder if cfg else None,
                cfg.requires_labels if cfg else None,
            )
        #: leases this replica may not hold (their requires_labels are not all its labels)
        self.excluded = {
            n: p.requires_labels for n, p in self.policies.items() if not p.allows(self.labels)
        }
        self.wanted = [n for n in names if n not in self.excluded]
        self.preferred_for = [
            n for n in self.wanted if self.policies[n].prefers(replica_id, self.labels)
        ]
        for name in self.wanted:
            self.registry.register(name)
        self._replicas: list[placement.Replica] | None = None  # live, from the last heartbeat
        self._view_gen = 0  # bumped whenever what placement ranks by changes in _replicas
        self._view_sig: tuple[Any, ...] | None = None  # that part of the view, to compare
        self._reason_key: tuple[Any, ...] | None = None  # _direct_reason's inputs, last time
        self._reason: str | None = None
        self._published: list[str] | None = None  # campaigns_for as last written
        self._plan: placement.Placement | None = None
        self._plan_key: tuple[int, tuple[str, ...]] | None = None
        self._holds_liveness = False  # this lock session holds the replica's liveness lock
        # the watch thread: which peer to watch, and the session it is waiting on now
        self._watch_cv = self.runtime.condition()
        self._watch_for: str | None = None
        self._watch_gen = 0  # bumped with every new target or view
        self._watch_skip: tuple[str, int] | None = None  # (peer, gen): its lock was free
        self._watching: PeerWatch | None = None
        self._watch_thread: Joinable | None = None
        self._waker = self.runtime.waker()
        # pooled standby: the connection through the work DSN, and what the last look found
        self._standby: StandbyPoll | None = None
        self._want_direct = False  # the standby phase found a reason for a lock session
        self._holders: dict[str, str | None] = {}  # lease -> holder (None: free), last seen
        self._view_hash = ""  # the live view's fingerprint as the last standby poll saw it
        self._view_due = 0.0  # when a far standby next asks for a changed view
        # _want_view's inputs from one placement view: (its _plan_key, this replica's best
        # HRW position over its leases, how many leases the view has)
        self._margin: tuple[Any, int, int] | None = None
        self._idle_since: float | None = None  # direct but needed by nothing, since
        self._gone_said: dict[str, float] = {}  # replica -> when its replica_gone was acted on
        self._exit_listeners: list[Callable[[], None]] = []
        self._control_listeners: list[Callable[[control.LoopControlChanged], None]] = []
        self._state = _State(suspended=set(idle) & set(names))
        self._lock = threading.RLock()
        self._listeners: list[Callable[[LeaseEvent], None]] = []
        self._stop = self.runtime.event()
        self._release_on_stop = True
        self._stopped = self.runtime.event()
        self._thread: Joinable | None = None
        self._session: LeaseSession | None = None
        self._commands: list[Callable[[LeaseSession], None]] = []
        self.connected = self.runtime.event()
        self.fatal: BaseException | None = None
        self.d_srv: float | None = None
        self.last_heartbeat_ok: float | None = None

    # -- public surface -------------------------------------------------------------------

    def add_listener(self, fn: Callable[[LeaseEvent], None]) -> None:
        self._listeners.append(fn)

    def add_control_listener(self, fn: Callable[[control.LoopControlChanged], None]) -> None:
        """Call ``fn`` (on the manager thread) with each ``loop_control`` message of the
        control channel (:mod:`leasectl.loop_control`: pause, resume, trigger)."""
        self._control_listeners.append(fn)

    def add_exit_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (on the manager thread) when the thread ends, fatally or not: the
        daemon's supervisor waits on this instead of polling :attr:`fatal`."""
        self._exit_listeners.append(fn)

    def start(self) -> None:
        """Connect, verify topology and the safety inequality, then start the thread.

        :raises SafetyInequalityViolated, UnsupportedTopology, DatabaseUnavailable:
        """
        if self.pooled:
            self._standby_start()
        else:
            self._session = self._connect()
        self._thread = self.runtime.spawn(self._run, "leasectl-leases")
        if self.spread and self.may_lead and not self.pooled:
            self._watch_thread = self.runtime.spawn(self._watch_run, "leasectl-watch")

    def stop(self, *, release: bool = True, timeout: float = 10.0) -> None:
        """Stop campaigning; release held leases with NOTIFY (graceful hand-over).

        The manager thread is woken at once (its wait ends on the wake pipe), so the release
        starts within one round trip of this call.
        """
        self._release_on_stop = release
        self._stop.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop_watching()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout)

    def lease(self, name: str) -> Lease | None:
        """The valid lease handle for ``name``, or None."""
        with self._lock:
            lease = self._state.held.get(name)
        return lease if lease is not None and lease.valid() else None

    def held(self) -> dict[str, Lease]:
        with self._lock:
            return {n: lease for n, lease in self._state.held.items() if lease.valid()}

    def wait_for(self, name: str, timeout: float) -> Lease:
        """Block until ``name`` is held by this replica (tests and tools)."""
        deadline = self.runtime.clock() + timeout
        while self.runtime.clock() < deadline:
            lease = self.lease(name)
            if lease is not None:
                return lease
            if self.fatal is not None:
                raise self.fatal
            self.runtime.sleep(0.01)
        raise LeaseTimeout(name, timeout)

    def step_down(self, name: str, cooldown: float | None = None) -> None:
        """Release ``name`` and do not campaign for it for ``cooldown`` seconds."""
        cd = self.settings.leases.step_down_cooldown if cooldown is None else cooldown

        def command(session: LeaseSession) -> None:
            with self._lock:
                self._state.cooldown_until[name] = self.clock() + cd
            self._release(session, [name], "step_down")

        with self._lock:
            self._commands.append(command)
        self._waker.wake()

    def abandon(self, name: str, reason: str) -> None:
        """Give ``name`` up and stop campaigning for it until :meth:`resume`.

        For a wedged tick: its thread cannot be stopped, but another replica can run the
        loop; the stuck thread's late writes are refused by the fence once the new holder
        bumps the epoch.
        """

        def command(session: LeaseSession) -> None:
            to = (
                None if self.runtime.planted("wedge_release_names_nobody") else self._receiver(name)
            )
            self._release(session, [name], reason, to=to)

        with self._lock:
            self._state.suspended.add(name)  # at once: no campaign may take it back meanwhile
            self._commands.append(command)
        self._waker.wake()

    def resume(self, name: str) -> None:
        """Campaign for ``name`` again (its wedged tick returned)."""
        with self._lock:
            self._state.suspended.discard(name)
        self._waker.wake()  # publish the candidacy and campaign now, not at the next deadline

    def tick_begin(self, name: str, lease: Lease) -> bool:
        """The scheduler is about to run a tick of ``name`` under ``lease``: False refuses it.

        Refused while a rebalance hand-over of ``name`` is pending or once ``lease`` is no
        longer the held, valid one. Between ``tick_begin`` and :meth:`tick_end` the manager
        does not hand the lease over, so a rebalance never interrupts a tick (a step-down,
        a wedged tick, a lost lease or a shutdown still do: they are not placement's).
        """
        with self._lock:
            if (
                name in self._state.handing_over
                or self._state.held.get(name) is not lease
                or not lease.valid()
            ):
                return False
            self._state.ticking.add(name)
            return True

    def tick_end(self, name: str) -> None:
        """The tick of ``name`` started with :meth:`tick_begin` returned (its slot recorded)."""
        with self._lock:
            self._state.ticking.discard(name)
            pending = name in self._state.handing_over
        if pending:
            self._waker.wake()  # the hand-over waited for this tick: do it now

    def replicas(self) -> list[placement.Replica] | None:
        """The live replicas as of the last heartbeat (spread placement; None otherwise)."""
        return self._replicas

    def report_wedged(self, loops: Iterable[str]) -> None:
        """Record the loops wedged on this replica in its row, for ``leasectl status``."""
        names = sorted(loops)

        def command(session: LeaseSession) -> None:
            session.replica_wedged(self.replica_id, names)

        with self._lock:
            self._commands.append(command)
        self._waker.wake()

    # -- connection ---------------------------------------------------------------------------

    def _open_lock_session(self) -> LeaseSession:
        s = self.settings
        return LockSession.connect(
            self.lock_dsn,
            s.database,
            f"leasectl/{self.replica_id}",
            namespace=s.leases.namespace,
            registry=self.registry,
            check_pooler=self.check_pooler,
        )

    def _open_watch_session(self) -> WatchSession:
        s = self.settings
        return WatchSession.connect(
            self.lock_dsn,
            s.database,
            f"leasectl/{self.replica_id}/watch",
            namespace=s.leases.namespace,
            lock_timeout_ms=int(WATCH_LOCK_TIMEOUT * 1000),
        )

    def _connect(self) -> LeaseSession:
        session = self._session_factory()
        try:
            self._check_lock_session(session)
            collision = session.key_collision(self.wanted) if self.wanted else None
            if collision is not None:
                raise KeyCollision(*collision)
            session.listen()
            session.listen_control()
            candidacy = self._candidacy()
            drain = self._register(session, candidacy)
            if drain is not None:
                self._drain(drain)
                candidacy = self._candidacy()
                session.replica_candidacy(self.replica_id, candidacy, self.preferred_for)
            self._published = candidacy
            self._holds_liveness = False
            if self._watched:
                self._holds_liveness = session.hold_replica(self.replica_id)
        except BaseException:
            session.close()
            raise
        self.connected.set()
        return session

    def _register(self, session: LeaseSession, candidacy: list[str]) -> Drain | None:
        """Take this replica's row; returns a drain asked of it meanwhile (None: none).

        A crashed predecessor's session can outlive it by a moment (or until D_srv after a
        partition, while it no longer heartbeats): retry until it is gone or silent for
        ``REGISTER_LIVE_S``; a live duplicate keeps heartbeating and is refused.
        """
        deadline = self.clock() + REGISTER_LIVE_S + 1.0
        ident = self._identity(candidacy)
        while (
            got := session.register_replica(self.replica_id, **ident, declared_leases=self.declared)
        ) is None:
            if self.clock() >= deadline:
                raise session.refused(self.replica_id)
            self._stop.wait(0.2)
        return got.drain

    def _check_lock_session(self, session: LeaseSession) -> None:
        """The safety inequality on the lock session's TCP settings as read back, and a
        warning when it goes through a session-mode pooler (a transaction-mode one is refused
        when it connects)."""
        s = self.settings
        assert session.tcp is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        self.d_srv = session.tcp.d_srv
        problem = timing.inequality_violation(s.leases, session.tcp)
        if problem is not None:
            raise SafetyInequalityViolated(problem)
        if session.via_pooler:
            log.warning(
                "the lock connection goes through a (session-mode) pooler: the TCP settings "
                "read back bound the pooler's link to PostgreSQL, not this replica's; make "
                "sure the pooler drops a silent client within D_srv (see docs/safety.md)",
                extra={"action": "safety_check", "replica": self.replica_id},
            )
        if self.d_srv is None:
            log.info(
                "lock connection uses a Unix socket: no partition possible, D_srv check exempt",
                extra={"action": "safety_check", "replica": self.replica_id},
            )

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        try:
            while not self._stop.is_set():
                if self.pooled and self._session is None and not self._want_direct:
                    self._standby_phase()  # until a lock session is needed, or stop()
                    continue
                session = self._session
                if session is None:
                    try:
                        session = self._session = self._connect()
                        backoff = 0.1
                    except DatabaseUnavailable as exc:
                        log.warning(
                            "lock connection unavailable, retrying in %.1fs: %s",
                            backoff,
                            exc,
                            extra={"action": "reconnect_wait", "replica": self.replica_id},
                        )
                        self._stop.wait(backoff * self.runtime.uniform(0.8, 1.2))
                        backoff = min(backoff * 2, self.settings.leases.reconnect_max_backoff)
                        self._want_direct = False  # pooled: look again before retrying
                        continue
                try:
                    self._serve(session)
                except DatabaseUnavailable as exc:
                    self._lose_all(f"connection_lost: {exc}".splitlines()[0])
                    self.connected.clear()
                    try:
                        session.close()
                    except Exception:  # noqa: S110 - best effort cleanup of a connection already lost
                        pass
                    self._session = None
                    self._want_direct = False
                else:
                    if not self._stop.is_set():  # pooled: needed by nothing for standby_after
                        self._demote(session)
            self._shutdown()
        except LeasectlError as exc:
            self.fatal = exc
            self._lose_all(f"fatal: {exc}")
            log.error("lease manager stopped: %s", exc, extra={"action": "lease_manager_fatal"})
        except BaseException as exc:  # never die silently: a dead manager must drop its leases
            self.fatal = exc
            self._lose_all(f"fatal: {exc!r}")
            log.exception("lease manager crashed", extra={"action": "lease_manager_fatal"})
        finally:
            if self._session is not None and self.fatal is not None:
                self._session.close()
            self._stopped.set()
            self._stop_watching()
            for fn in self._exit_listeners:
                try:
                    fn()
                except Exception:
                    log.exception("exit listener failed", extra={"action": "listener_error"})

    def _serve(self, session: LeaseSession) -> None:
        ls = self.settings.leases
        next_hb = self.clock()
        next_campaign = self.clock()
        while not self._stop.is_set():
            self._run_commands(session)
            now = self.clock()
            self._expire(session, now)
            # Heartbeat and campaign share a wake-up when their deadlines are within the
            # campaign's own jitter of each other (either may run that much early): an idle
            # replica then wakes once a second, not twice (each wake-up costs about 1 ms of CPU).
            period = ls.heir_interval if self.pooled else ls.acquire_interval
            slack = ls.acquire_jitter * period
            beat = now >= next_hb or (now >= next_campaign and next_hb - now <= slack)
            if beat:
                self._publish_candidacy(session)
                self._heartbeat(session)
                self._plan_rebalance()
                next_hb = now + ls.heartbeat_interval
                if self.pooled and self._idle_for(now) >= ls.standby_after:
                    return  # nothing to hold or inherit here: back to watching via the pooler
            self._hand_over_idle(session)
            if now >= next_campaign or (beat and next_campaign - now <= slack):
                self._publish_candidacy(session)
                due = self._campaign(session)
                jitter = self.runtime.uniform(1 - ls.acquire_jitter, 1 + ls.acquire_jitter)
                next_campaign = self.clock() + period * jitter
                if due is not None:  # a watched free lease becomes this replica's turn
                    next_campaign = min(next_campaign, due)
            if self._stop.is_set():
                break
            wait = min(next_hb, next_campaign) - self.clock()
            # Sleep until the next deadline in one select() on the socket and the wake pipe: a
            # NOTIFY, a command or stop() ends it at once; nothing polls in between.
            self._waker.drain()
            if self._commands or self._stop.is_set():
                continue  # queued just before the drain: its wake-up was consumed
            for payload in session.wait_notify(max(wait, 0.0), self._waker.fd):
                if self._on_notify(session, payload):
                    next_campaign = self.clock()

    def _on_notify(self, session: LeaseSession, payload: str) -> bool:
        """Handle a notification; True when a campaign should run now."""
        if payload.startswith("{"):
            msg = control.parse(payload)
            if isinstance(msg, control.ReplicaGone):
                return self._replica_gone(msg.replica)
            if isinstance(msg, control.HandOver):
                self._reserve(list(msg.leases), msg.to)
                return msg.to == self.replica_id
            if isinstance(msg, control.LoopControlChanged):
                for fn in self._control_listeners:
                    fn(msg)
                return False
            if isinstance(msg, control.StepDown):
                self._step_down_asked(session, msg)
            return False
        if payload not in self.wanted:
            return False
        with self._lock:
            if payload not in self._state.held:
                self._state.free_since.setdefault(payload, self.clock())
        return True

    def _step_down_asked(self, session: LeaseSession, msg: control.StepDown) -> None:
        """``leasectl step-down`` for a lease, a replica (this one?) or everything."""
        if msg.replica and msg.replica != self.replica_id:
            return
        names = [msg.lease] if msg.lease else list(self._state.held)
        cooldown = msg.cooldown or self.settings.leases.step_down_cooldown
        with self._lock:
            mine = [n for n in names if n in self._state.held]
            # `step-down --replica <this one>` drains the replica: it stays away from every
            # lease for the cooldown, not only those it held (with spread placement it would
            # otherwise be handed others meanwhile).
            away = self.wanted if msg.replica and not msg.lease else mine
            for n in away:
                self._state.cooldown_until[n] = self.clock() + cooldown
        if mine:
            self._release(session, mine, "step_down")

    def _reserve(self, names: list[str], target: str) -> None:
        """Only ``target`` tries these leases for a while (a rebalance handed them to it).

        Long enough for the target to take them (a few placement steps); if it does not (it
        died meanwhile), the reservation lapses and placement decides again.
        """
        until = self.clock() + _RESERVE_STEPS * self.settings.leases.placement_step + 1.0
        with self._lock:
            for name in names:
                self._state.reserved[name] = (target, until)

    def _receiver(self, name: str) -> str | None:
        """Who should take ``name`` once this replica gives it up (spread placement): the
        best-ranked live candidate other than this replica (None: nobody, or pack)."""
        if not self.spread or self._replicas is None:
            return None
        ranking = [r.id for r in self._placement().ranking(name) if r.id != self.replica_id]
        return ranking[0] if ranking else None

    def _end_reservations(self, receiver: str, names: Iterable[str] | None = None) -> bool:
        """A reservation ends when its receiver took the lease or is gone: honouring it any
        longer only delays the next candidate (a receiver killed right after it acquired
        kept every peer away for the whole reservation). True if one ended."""
        if self.runtime.planted("reservation_outlives_receiver"):
            return False
        with self._lock:
            ended = [
                n
                for n, (target, _) in self._state.reserved.items()
                if target == receiver and (names is None or n in names)
            ]
            for n in ended:
                del self._state.reserved[n]
        return bool(ended)

    def _replica_gone(self, gone: object) -> bool:
        """A peer's lock session ended (its watcher said so) or it is stopping (it said so).

        Drop it from the placement view until the next heartbeat confirms it, so the next
        candidate of each of its leases is rank 0 now and tries at once; True: campaign now.
        """
        if not isinstance(gone, str) or gone == self.replica_id:
            return False
        self._drop_from_view(gone)
        self._end_reservations(gone)
        now, ttl = self.clock(), self.settings.leases.lease_ttl
        # Pooled standbys repeat a crash at every poll until its lease is taken (or lease_ttl
        # has passed): the first word campaigns, the repeats change nothing.
        self._gone_said = {r: t for r, t in self._gone_said.items() if now - t < ttl}
        if gone in self._gone_said:
            return False
        self._gone_said[gone] = now
        log.debug(
            "replica %s is gone; campaigning for its leases",
            gone,
            extra={"action": "replica_gone", "replica": self.replica_id, "holder": gone},
        )
        return bool(self.may_lead)

    def _drop_from_view(self, gone: str) -> bool:
        """Remove ``gone`` from the placement view until the next heartbeat; True if it was in."""
        view = self._replicas
        if gone == self.replica_id or view is None or not any(r.id == gone for r in view):
            return False
        self._set_view([r for r in view if r.id != gone])
        return True

    def _run_commands(self, session: LeaseSession) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for command in commands:
            command(session)

    def _expire(self, session: LeaseSession, now: float) -> None:
        """Self-fence leases whose validity ran out (heartbeats failing or stuck).

        Then give their locks back: the session may well still hold them (the process was
        stopped, or its heartbeats were slow, not lost), and the next campaign's try-lock
        would otherwise stack a second, re-entrant grant on top (one release later the lock
        would still be held, and the lease stuck here for as long as the session lives).
        """
        with self._lock:
            expired = [lease for lease in self._state.held.values() if not lease.valid()]
        for lease in expired:
            self._drop(lease, "ttl_expired")
        if expired and not self.runtime.planted("expired_lock_kept"):
            session.release([lease.name for lease in expired])

    def _heartbeat(self, session: LeaseSession) -> None:
        with self._lock:
            held = list(self._state.held.values())
        started = self.clock()
        live_s = self.settings.leases.lease_ttl if self.spread and self.may_lead else None
        in_recovery, unproven, replicas = session.heartbeat(
            [lease.name for lease in held],
            [lease.epoch for lease in held],
            self.replica_id,
            live_s=live_s,
        )
        elapsed = self.clock() - started
        if replicas is not None:
            self._set_view(replicas)
        if in_recovery:
            self._lose_all("server_in_recovery")
            raise DatabaseUnavailable("server is in recovery; refusing to hold leases")
        missing = set(unproven)
        valid_until = started + self.settings.leases.lease_ttl
        gone = []
        for lease in held:
            if lease.name not in missing:
                lease._renew(valid_until)
            else:
                self._drop(lease, "lock_missing_or_superseded")
                gone.append(lease.name)
        if gone:
            # Should the lock still be ours (the row moved under us), give it back: a later
            # try-lock would otherwise stack a second, re-entrant grant on top of it.
            session.release(gone)
        self.last_heartbeat_ok = self.clock()
        if self._watched and not self._holds_liveness:
            # Another session still held it at connect (a crashed predecessor's, not yet ended
            # by the server): retry, so this replica's own crash is seen at once again.
            self._holds_liveness = session.hold_replica(self.replica_id)
        self._emit(LeaseEvent("heartbeat", "*", None, "ok", elapsed))

    def _campaign(self, session: LeaseSession) -> float | None:
        """Try the leases it is this replica's turn for; watch the others.

        Returns when the next watched free lease becomes this replica's turn (None: none).
        """
        if not self.may_lead:
            return None
        now = self.clock()
        with self._lock:
            todo = [
                n
                for n in self.wanted
                if n not in self._state.held
                and n not in self._state.suspended
                and self._state.cooldown_until.get(n, 0.0) <= now
            ]
        if not todo:
            return None
        delays = self._try_delays(todo)
        free_since = self._state.free_since
        with self._lock:
            reserved = {n: r for n, r in self._state.reserved.items() if r[1] > now}
            self._state.reserved = reserved
        tried = [
            n
            for n in todo
            if (n in reserved and reserved[n][0] == self.replica_id)
            or (
                n not in reserved
                and (delays[n] <= 0 or (n in free_since and now >= free_since[n] + delays[n]))
            )
        ]
        watched = [n for n in todo if n not in tried]
        started = self.clock()
        rows = session.campaign(tried, watched)
        got = [r.name for r in rows if r.got]
        if got:
            self._acquired(session, got, started)
        gone = False
        for r in rows:
            if r.got or r.holder_pid is not None:
                free_since.pop(r.name, None)
            else:
                free_since.setdefault(r.name, now)
            self._holders[r.name] = (
                self.replica_id if r.got else None if r.holder_pid is None else r.row_holder or "?"
            )
            if r.holder_pid is None and not r.got and log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "lease %s seen free (holder %s, gone=%s)",
                    r.name,
                    r.row_holder,
                    r.holder_gone,
                    extra={"action": "lease_free", "replica": self.replica_id},
                )
            if r.holder_pid is not None and r.row_holder and r.row_pid == r.holder_pid:
                self._end_reservations(r.row_holder, [r.name])  # the receiver took it
            if r.holder_gone and r.row_holder and not r.got:
                # Free, never released, and its holder's lock session is gone: it crashed. Drop
                # it from the view now (as a watcher's replica_gone would): the lease's next
                # candidate is rank 0 at once instead of after a heartbeat and a placement step.
                gone = self._drop_from_view(r.row_holder) or gone
                gone = self._end_reservations(r.row_holder) or gone
        if gone:
            delays = self._try_delays(watched)
        with self._lock:  # the rows above may have ended a reservation
            reserved = {n: r for n, r in self._state.reserved.items() if r[1] > now}
        due = [free_since[n] + delays[n] for n in watched if n in free_since and n not in reserved]
        due += [reserved[n][1] for n in watched if n in reserved]
        threshold = self.settings.leases.lease_ttl + self.settings.leases.eviction_grace
        for name, ok, age, holder_pid, row_pid, row_holder, _gone in rows:
            if ok:
                self._state.mismatch_since.pop(name, None)
                continue
            if holder_pid is None:
                continue  # free: tried next round if it is our turn; nothing to evict
            if row_pid != holder_pid:
                # The row does not describe the lock's holder (it may be between lock and
                # epoch bump). Evict only if that persists past the threshold.
                first = self._state.mismatch_since.setdefault(name, now)
                stale = now - first > threshold
            else:
                self._state.mismatch_since.pop(name, None)
                stale = age is not None and age > threshold
            if stale:
                self._evict(session, name, holder_pid, row_holder, age)
        return min(due) if due else None

    # -- placement ------------------------------------------------------------------------

    def _identity(self, candidacy: list[str]) -> dict[str, Any]:
        """What this replica publishes in its row, as its lock session registers it and as a
        standby's poll stamps it: the same fields both ways."""
        return {
            "host": self.runtime.host,
            "pid": self.runtime.pid,
            "version": __version__,
            "may_lead": self.may_lead,
            "loops": self.loops,
            "labels": self.labels,
            "campaigns_for": candidacy,
            "preferred_for": self.preferred_for,
        }

    def _candidacy(self) -> list[str]:
        """The leases this replica campaigns for now (published as ``campaigns_for``)."""
        if not self.may_lead:
            return []
        now = self.clock()
        with self._lock:
            return sorted(
                n
                for n in self.wanted
                if n not in self._state.suspended and self._state.cooldown_until.get(n, 0.0) <= now
            )

    def _publish_candidacy(self, session: LeaseSession) -> None:
        """Rewrite the replica row's ``campaigns_for`` when it changed (a step-down cooldown
        began or ended, a tick wedged or returned), so peers stop ranking this replica for a
        lease it will not take: they would otherwise wait for it, or hand it the lease."""
        if not self.spread:
            return
        candidacy = self._candidacy()
        if candidacy != self._published:
            session.replica_candidacy(self.replica_id, candidacy, self.preferred_for)
            self._published = candidacy

    def _placement(self) -> placement.Placement:
        """Placement over the last heartbeat's live replicas, with this replica's own entry
        as it knows it now (computed once per heartbeat or candidacy change)."""
        candidacy = self._candidacy()
        key = (self._view_gen, tuple(candidacy))
        if self._plan is None or self._plan_key != key:
            view = placement.self_view(
                self.replica_id, candidacy, self.preferred_for, self._replicas or []
            )
            self._plan, self._plan_key = placement.Placement(view), key
        return self._plan

    # -- pooled standby (leases.standby: pooled) ------------------------------------------------

    @property
    def _watched(self) -> bool:
        """Whether this replica is in the watch ring (holds a liveness lock, watches a peer):
        spread placement in direct mode. Pooled mode has no ring: it would double the direct
        sessions; heirs campaign every heir_interval instead."""
        return self.spread and self.may_lead and not self.pooled

    @property
    def standby(self) -> bool:
        """True while this replica watches through the pooler with no lock session."""
        return self.pooled and self._session is None

    def _standby_start(self) -> None:
        """``start()`` in pooled mode: check the lock DSN once (a probe lock session, closed
        at once; if it cannot connect, the checks wait for the first real one), then open the
        standby connection, check the lease keys against the cluster's and take the replica
        row: a misconfiguration fails the start as it does in direct mode, not later, when
        the replica is first needed as a heir."""
        try:
            probe = self._session_factory()
        except DatabaseUnavailable as exc:
            # Not a misconfiguration for sure (a server at max_connections during a mass
            # start, a primary restarting): the checks run when the lock session first opens.
            log.warning(
                "could not open a probe lock session on database.lock_dsn at start; its checks "
                "run when this replica first needs its lock session: %s",
                str(exc).splitlines()[0],
                extra={"action": "safety_check", "replica": self.replica_id},
            )
        else:
            try:
                self._check_lock_session(probe)
            finally:
                probe.close()
        if self.dsn == self.lock_dsn:
            log.warning(
                "leases.standby: pooled, but database.dsn is also the lock DSN: a standby's "
                "polls then hold a server connection each; put a transaction-mode pooler in "
                "database.dsn and the direct server in database.lock_dsn",
                extra={"action": "config_warning", "replica": self.replica_id},
            )
        self._standby = self._standby_factory()
        try:
            collision = self._standby.key_collision(self.wanted) if self.wanted else None
            if collision is not None:
                raise KeyCollision(*collision)
            deadline = self.clock() + self.settings.leases.lease_ttl + 1.0
            while self._look() is None:
                if self.clock() >= deadline:
                    raise self._standby.refused(self.replica_id)
                self._stop.wait(0.2)
        except BaseException:
            self._standby.close()
            self._standby = None
            raise
        self.connected.set()

    def _open_standby(self) -> StandbySession:
        return StandbySession.connect(
            # One name for every standby: PgBouncer re-sends SET application_name whenever a
            # client's differs from its server connection's, which doubled each poll's cost.
            self.dsn,
            self.settings.database,
            STANDBY_APPLICATION_NAME,
        )

    def _look(self) -> StandbyView | None:
        """One standby poll: stamp the row, refresh the view and each lease's holder."""
        assert self._standby is not None  # noqa: S101 - narrows a type for mypy; set by the caller
        candidacy = self._candidacy()
        want = self._want_view(candidacy)
        found = self._standby.poll(
            self.replica_id,
            **self._identity(candidacy),
            names=self.wanted,
            live_s=self.settings.leases.lease_ttl,
            seen=self._view_hash,
            want_view=want,
        )
        if found is None:
            return None
        self._published = candidacy
        now = self.clock()
        if want:
            jitter = self.runtime.uniform(0.5, 1.5)
            self._view_due = now + _VIEW_REFRESH * jitter
        if found.replicas is not None:
            self._set_view(found.replicas)
            self._view_hash = found.view_hash
        # else: unchanged, or changed but skipped: keep the old fingerprint, so the next poll
        # that wants the view gets it
        if found.drain is not None:
            self._drain(found.drain)
        for name, holder in found.holders.items():
            self._holders[name] = holder
            if holder is None:
                self._state.free_since.setdefault(name, now)
            else:
                self._state.free_since.pop(name, None)
        self.last_heartbeat_ok = self.clock()
        return found

    def _drain(self, drain: Drain) -> None:
        """``step-down --replica`` <this one>, read from its row (by a standby's poll, or as
        its lock session registers) some time after it was asked: stay away from every lease
        for what is left of the cooldown (a lock session hears the request as a NOTIFY)."""
        left = (drain.cooldown or self.settings.leases.step_down_cooldown) - drain.age_s
        if left <= 0:
            return
        until = self.clock() + left
        with self._lock:
            before = max(self._state.cooldown_until.values(), default=0.0)
            for name in self.wanted:
                self._state.cooldown_until[name] = max(
                    self._state.cooldown_until.get(name, 0.0), until
                )
        if until > before + 1.0:  # a new request, not the same one read again
            log.info(
                "step-down requested for this replica: staying away from every lease for %.0fs",
                left,
                extra={"action": "step_down", "replica": self.replica_id},
            )

    def _want_view(self, candidacy: list[str]) -> bool:
        """Whether this standby's poll should bring a changed live view now.

        Every membership change changes the view, and with hundreds of standbys re-reading
        hundreds of rows at once that is seconds of server and client CPU, at the moment a
        heir needs the server. A standby at least ``M + 3`` places from the top of every
        lease's HRW order (M leases) cannot become a choice or a heir through one or two
        replicas leaving, so it asks only when its own ``_view_due`` comes (about every
        ``_VIEW_REFRESH`` seconds, each standby at its own moment: not all at the first change
        after a quiet spell). One near the top takes a change at once; so does every standby
        once a lease has stayed free for ``M + 2`` placement steps (the replicas ranked before
        it did not take it).
        """
        if self._replicas is None or not self._view_hash:
            return True
        now = self.clock()
        if now >= self._view_due:
            return True
        view = self._placement().replicas  # this view, with this replica's own candidacy
        if self._margin is None or self._margin[0] != self._plan_key:
            positions = [placement.hrw_position(n, self.replica_id, view) for n in candidacy]
            best = min((p for p in positions if p is not None), default=1 << 30)
            self._margin = (self._plan_key, best, len({n for r in view for n in r.campaigns_for}))
        _, best, leases = self._margin
        long_free = (leases + 2) * self.settings.leases.placement_step
        if any(now - t >= long_free for t in list(self._state.free_since.values())):
            return True
        return best <= leases + 2

    def _standby_phase(self) -> None:
        """Poll through the work DSN every heartbeat_interval until this replica needs a lock
        session (:meth:`_direct_reason`) or a command needs one, or stop() is called."""
        ls = self.settings.leases
        backoff = 0.1
        refused_since: float | None = None
        while not self._stop.is_set():
            if self._commands:
                self._want_direct = True  # a step-down, abandon or wedged report: run it there
                return
            try:
                if self._standby is None:
                    self._standby = self._standby_factory()
                found = self._look()
                backoff = 0.1
            except DatabaseUnavailable as exc:
                self.connected.clear()
                log.warning(
                    "standby connection unavailable, retrying in %.1fs: %s",
                    backoff,
                    str(exc).splitlines()[0],
                    extra={"action": "reconnect_wait", "replica": self.replica_id},
                )
                if self._standby is not None:
                    self._standby.close()
                    self._standby = None
                self._stop.wait(backoff * self.runtime.uniform(0.8, 1.2))
                backoff = min(backoff * 2, ls.reconnect_max_backoff)
                continue
            if found is None:  # our id, taken over meanwhile by a live process
                refused_since = refused_since if refused_since is not None else self.clock()
                if self.clock() - refused_since > ls.lease_ttl + 1.0:
                    assert self._standby is not None  # noqa: S101 - narrows a type for mypy; polled just now
                    raise self._standby.refused(self.replica_id)
            else:
                refused_since = None
                self.connected.set()
                reason = self._direct_reason()
                if reason is not None:
                    log.info(
                        "opening a lock session: %s",
                        reason,
                        extra={"action": "lock_session_open", "replica": self.replica_id},
                    )
                    self._want_direct = True
                    if self._standby is not None:  # a holder or heir needs only its lock session
                        self._standby.close()
                        self._standby = None
                    return
            self._waker.drain()
            if self._commands or self._stop.is_set():
                continue
            jitter = self.runtime.uniform(1 - ls.acquire_jitter, 1 + ls.acquire_jitter)
            self._waker.wait(ls.heartbeat_interval * jitter)

    def _direct_reason(self) -> str | None:
        """Why this replica needs its lock session now (None: it may be a standby)."""
        now = self.clock()
        with self._lock:
            if self._state.held:
                return f"holds {', '.join(sorted(self._state.held))}"
            if self._state.handing_over or self._commands:
                return "a hand-over or command is pending"
            for name, (target, until) in self._state.reserved.items():
                if target == self.replica_id and until > now:
                    return f"a rebalance hands it {name}"
            free_for = {n: now - t for n, t in self._state.free_since.items()}
        candidacy = self._candidacy()
        holders = dict(self._holders)
        # The same view, candidacy and holders give the same answer: a standby asks once a
        # second and its view rarely changes. A free lease's answer depends on time: not cached.
        key = (self._view_gen, tuple(candidacy), tuple(sorted(holders.items(), key=str)))
        if key == self._reason_key and not free_for:
            return self._reason
        plan = self._placement()  # built over self_view: this replica as it knows itself
        reason = placement.direct_reason(
            self.replica_id,
            candidacy,
            plan.replicas,
            holders,
            free_for,
            self.settings.leases.placement_step,
            base=plan,
        )
        self._reason_key, self._reason = key, reason
        return reason

    def _idle_for(self, now: float) -> float:
        """How long this direct replica has been needed by nothing (0 while it is needed)."""
        if self._direct_reason() is not None:
            self._idle_since = None
            return 0.0
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since

    def _demote(self, session: LeaseSession) -> None:
        """Close the lock session of a replica nothing needs it for (pooled); the next
        standby poll stamps its row as a standby again."""
        log.info(
            "closing the lock session: nothing to hold or inherit for %gs; watching through "
            "the pooler",
            self.settings.leases.standby_after,
            extra={"action": "lock_session_close", "replica": self.replica_id},
        )
        self._session = None
        self._want_direct = False
        self._idle_since = None
        session.close()

    # -- the watch ring --------------------------------------------------------------------------

    def _set_view(self, replicas: list[placement.Replica]) -> None:
        """A new view of the live replicas (a heartbeat, or a peer gone): re-aim the watch."""
        self._replicas = replicas
        # Only what placement ranks by counts as a change: every heartbeat brings fresh
        # live_for values, and rebuilding placement over hundreds of replicas each second
        # (and again for every heir question) is what made a heir slow to act under load.
        sig = tuple(
            sorted((r.id, r.campaigns_for, r.preferred_for, r.wedged, r.labels) for r in replicas)
        )
        if sig != self._view_sig:
            self._view_sig = sig
            self._view_hash = ""  # a standby poll then sends the whole view again
            self._view_gen += 1
        self._set_watch_target(self.watch_target())

    def watch_target(self) -> str | None:
        """The peer this replica watches: its successor in the sorted ring of live replicas
        (every live replica is watched by exactly one other; None when alone)."""
        if not self._watched or self._replicas is None:
            return None
        ring = sorted({r.id for r in self._replicas} | {self.replica_id})
        if len(ring) < 2:
            return None
        return ring[(ring.index(self.replica_id) + 1) % len(ring)]

    def _set_watch_target(self, target: str | None) -> None:
        with self._watch_cv:
            self._watch_gen += 1  # a new view: a peer whose lock was free is tried again
            if target == self._watch_for:
                self._watch_cv.notify_all()
                return
            self._watch_for = target
            busy = self._watching
            self._watch_cv.notify_all()
        if busy is not None:
            # Waiting on the old peer: re-aim now, not after lock_timeout. Off this thread:
            # cancel_safe opens a connection to the server, and the caller (the manager
            # thread, handling a peer's replica_gone) is about to campaign for its leases.
            self.runtime.spawn(busy.cancel, "leasectl-watch-cancel")

    def _stop_watching(self) -> None:
        with self._watch_cv:
            self._watch_for = None
            busy = self._watching
            self._watch_cv.notify_all()
        if busy is not None:
            busy.cancel()

    def _watch_run(self) -> None:
        """The ``leasectl-watch`` thread: wait on the target peer's liveness lock, re-issued
        every lock_timeout; the server wakes it when the peer's session ends, and the same
        statement tells every replica (``replica_gone``)."""
        backoff = 0.1
        watch: PeerWatch | None = None
        try:
            while not self._stop.is_set() and not self._stopped.is_set():
                with self._watch_cv:
                    # Checked again under the condition's lock: stop() sets _stop before it
                    # takes this lock to notify, so a stop between the loop test and here is
                    # seen now instead of leaving this thread in wait() for good (stop()
                    # then waited its whole join timeout before the process could exit).
                    if self._stop.is_set() or self._stopped.is_set():
                        break
                    target, gen = self._watch_for, self._watch_gen
                    if target is None or self._watch_skip == (target, gen):
                        if target is None and watch is not None:
                            watch.close()  # alone: no second connection
                            watch = None
                        self._watch_cv.wait()
                        continue
                if watch is None:
                    try:
                        watch = self._watch_factory()
                        backoff = 0.1
                    except LeasectlError as exc:
                        log.warning(
                            "watch connection unavailable, retrying in %.1fs: %s",
                            backoff,
                            str(exc).splitlines()[0],
                            extra={"action": "watch_reconnect", "replica": self.replica_id},
                        )
                        self._stop.wait(backoff * self.runtime.uniform(0.8, 1.2))
                        backoff = min(backoff * 2, self.settings.leases.reconnect_max_backoff)
                        continue
                with self._watch_cv:
                    if self._watch_for != target:
                        continue
                    self._watching = watch
                try:
                    ended = watch.watch(target)
                except LeasectlError as exc:
                    log.warning(
                        "watch connection lost: %s",
                        str(exc).splitlines()[0],
                        extra={"action": "watch_reconnect", "replica": self.replica_id},
                    )
                    watch.close()
                    watch = None
                    continue
                finally:
                    with self._watch_cv:
                        self._watching = None
                if ended is False:
                    with self._watch_cv:
                        self._watch_skip = (target, gen)  # not held: retry on the next view
                elif ended:
                    log.info(
                        "replica %s's lock session ended; told every replica",
                        target,
                        extra={
                            "action": "replica_gone",
                            "replica": self.replica_id,
                            "holder": target,
                        },
                    )
                    with self._watch_cv:
                        self._watch_skip = (target, gen)  # until a view without it
        except BaseException:
            log.exception("watch thread crashed", extra={"action": "watch_crashed"})
        finally:
            if watch is not None:
                watch.close()

    def _try_delays(self, names: list[str]) -> dict[str, float]:
        """Per lease, how long after seeing it free this replica waits (0: try at once)."""
        if not self.spread or self._replicas is None:
            return {n: 0.0 for n in names}
        plan = self._placement()
        step = self.settings.leases.placement_step
        return {n: plan.try_delay(n, self.replica_id, step) for n in names}

    def _plan_rebalance(self) -> None:
        """After a heartbeat: mark held leases a better, settled replica should hold.

        A lease is handed over only once it has stayed here ``rebalance_cooldown`` and the
        best-ranked candidate has been live ``rebalance_after`` (both: no ping-pong, one move
        per rebalance); the release itself waits for the loop's running tick to end.
        """
        if not self.spread or self._replicas is None:
            return
        ls = self.settings.leases
        plan = self._placement()
        live_for = {r.id: r.live_for for r in self._replicas}  # fresher than the cached plan's
        now = self.clock()
        with self._lock:
            held = list(self._state.held)
            acquired = dict(self._state.acquired_at)
        for name in held:
            target = None
            if now - acquired.get(name, now) >= ls.rebalance_cooldown:
                target = plan.rebalance_target(
                    name, self.replica_id, settle=ls.rebalance_after, live_for=live_for
                )
            with self._lock:
                before = self._state.handing_over.get(name)
                if target is None:
                    self._state.handing_over.pop(name, None)
                else:
                    self._state.handing_over[name] = target
            if target is not None and target != before:
                log.info(
                    "lease %s: %s ranks better and is settled; handing it over at the end of "
                    "the running tick",
                    name,
                    target,
                    extra={
                        "action": "lease_rebalance",
                        "lease": name,
                        "replica": self.replica_id,
                        "target": target,
                    },
                )

    def _hand_over_idle(self, session: LeaseSession) -> None:
        """Release the leases marked for hand-over whose loop is not mid-tick."""
        with self._lock:
            pending = self._state.handing_over
            for name in [n for n in pending if n not in self._state.held]:
                del pending[name]
            ready = {n: t for n, t in pending.items() if n not in self._state.ticking}
        if not ready:
            return
        for target in sorted(set(ready.values())):
            names = sorted(n for n, t in ready.items() if t == target)
            self._release(session, names, f"rebalance: to {target}", to=target)
        with self._lock:
            for name in ready:
                self._state.handing_over.pop(name, None)

    def _acquired(self, session: LeaseSession, names: list[str], started: float) -> None:
        try:
            rows = session.bump_epoch(names, self.replica_id, "campaign")
        except RowLockTimeout as exc:
            # A guarded transaction of the previous holder kept the lease rows locked past
            # lock_timeout: give the locks back and try again at the next campaign, keeping
            # the other leases of this session.
            session.release(names, notify=False)
            log.warning(
                "epoch bump for %s waited too long for the previous holder's guarded writes: %s",
                ", ".join(names),
                str(exc).splitlines()[0],
                extra={"action": "lease_bump_timeout", "replica": self.replica_id},
            )
            return
        except DatabaseUnavailable:
            # The locks are ours but un-fenced: give them back rather than hold them blind.
            try:
                session.release(names, notify=False)
            finally:
                raise
        valid_until = started + self.settings.leases.lease_ttl
        took = self.clock() - started
        for name, epoch in rows:
            lease = Lease(name, epoch, valid_until, self.clock)
            with self._lock:
                self._state.held[name] = lease
                self._state.acquired_at[name] = self.clock()
                self._state.free_since.pop(name, None)
                self._state.reserved.pop(name, None)
            log.info(
                "lease %s acquired (epoch %s)",
                name,
                epoch,
                extra={
                    "action": "lease_acquired",
                    "lease": name,
                    "epoch": epoch,
                    "replica": self.replica_id,
                    "reason": "campaign",
                },
            )
            self._emit(LeaseEvent("acquired", name, epoch, "campaign", took))

    def _evict(
        self, session: LeaseSession, name: str, pid: int, holder: str | None, age: float | None
    ) -> None:
        age_txt = f"{age:.1f}s" if age is not None else "unknown"
        log.warning(
            "EVICTING hung holder of lease %s: replica %s (backend pid %s) last renewed %s ago",
            name,
            holder,
            pid,
            age_txt,
            extra={
                "action": "lease_evicted",
                "lease": name,
                "replica": self.replica_id,
                "holder": holder,
                "backend_pid": pid,
                "reason": f"renewal_stale_{age_txt}",
            },
        )
        session.evict(
            name,
            pid,
            replica=self.replica_id,
            reason=f"holder {holder} (pid {pid}) renewal stale {age_txt}",
        )
        self._state.mismatch_since.pop(name, None)
        self._emit(LeaseEvent("evicted", name, None, f"holder {holder}"))

    def _release(
        self,
        session: LeaseSession,
        names: list[str],
        reason: str,
        *,
        leaving: bool = False,
        to: str | None = None,
    ) -> None:
        """Release held leases (record, unlock, NOTIFY: one round trip).

        ``to``: the receiver (a rebalance's better replica, a wedged tick's next candidate).
        The ``hand_over`` control message naming it goes in the same round trip, ahead of
        the release's NOTIFY: the receiver tries at once and everyone else, this replica
        included, stays away for a while (:meth:`_reserve`), so the lease moves once even
        while the replicas' views of each other still differ. Sent with the release, not a
        round trip before it, the reservation cannot run out while a slow release is still
        on its way (a third replica then took the lease, which moved again).
        """
        with self._lock:
            leases = [self._state.held.pop(n) for n in names if n in self._state.held]
        if not leases:
            if leaving:
                session.replica_stopped(self.replica_id)
            return
        for lease in leases:
            lease._lose(reason)  # stop believing before the lock is gone
        released = [lease.name for lease in leases]
        announce = None
        if to is not None:
            announce = control.encode(control.HandOver(tuple(released), to, self.replica_id))
        session.hand_over(
            released,
            [lease.epoch for lease in leases],
            self.replica_id,
            reason,
            leaving=leaving,
            announce=announce,
        )
        if to is not None:
            self._reserve(released, to)
        for lease in leases:
            log.info(
                "lease %s released (epoch %s): %s",
                lease.name,
                lease.epoch,
                reason,
                extra={
                    "action": "lease_released",
                    "lease": lease.name,
                    "epoch": lease.epoch,
                    "replica": self.replica_id,
                    "reason": reason,
                },
            )
            self._emit(LeaseEvent("released", lease.name, lease.epoch, reason))

    def _drop(self, lease: Lease, reason: str) -> None:
        with self._lock:
            if self._state.held.get(lease.name) is lease:
                del self._state.held[lease.name]
        lease._lose(reason)
        log.warning(
            "lease %s lost (epoch %s): %s",
            lease.name,
            lease.epoch,
            reason,
            extra={
                "action": "lease_lost",
                "lease": lease.name,
                "epoch": lease.epoch,
                "replica": self.replica_id,
                "reason": reason,
            },
        )
        self._emit(LeaseEvent("lost", lease.name, lease.epoch, reason))

    def _lose_all(self, reason: str) -> None:
        with self._lock:
            leases = list(self._state.held.values())
        for lease in leases:
            self._drop(lease, reason)

    def _shutdown(self) -> None:
        standby, self._standby = self._standby, None
        if standby is not None:
            try:
                if self._session is None:
                    standby.stopped(self.replica_id)
            except DatabaseUnavailable:
                pass  # its row ages out of every view within lease_ttl
            finally:
                standby.close()
        session = self._session
        if session is None:
            return
        try:
            # Say we are leaving (peers drop us from their placement view) in the same round
            # trip as the hand-over, before it: the next candidate takes each lease at once,
            # not a placement step later.
            if self._release_on_stop:
                with self._lock:
                    names = list(self._state.held)
                self._release(session, names, "shutdown", leaving=True)
            else:
                session.replica_stopped(self.replica_id)
        except DatabaseUnavailable as exc:
            self._lose_all(f"connection_lost_at_shutdown: {exc}")
        finally:
            session.close()
            self._session = None

    def _emit(self, event: LeaseEvent) -> None:
        for fn in self._listeners:
            try:
                fn(event)
            except Exception:
                log.exception("lease listener failed", extra={"action": "listener_error"})


def request_step_down(
    conn: psycopg.Connection[Any],
    *,
    lease: str | None = None,
    replica: str | None = None,
    cooldown: float | None = None,
) -> None:
    """Ask the holder(s) to release a lease and stay away for ``cooldown`` seconds (NOTIFY;
    for a whole replica also kept in its row, which a pooled standby reads at its next poll)."""
    payload = control.encode(control.StepDown(lease, replica, cooldown))
    if replica and not lease:
        request_drain(conn, replica, cooldown)
    notify_control(conn, payload)
