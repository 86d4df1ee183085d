"""The lease manager: one replica's campaign for its leases, heartbeats and evictions.

The contract it keeps (what a lease guarantees, and how writes are fenced) is in
:mod:`leasectl.leases`. :class:`LeaseManager` is a facade over four parts, each a small
module:

* :mod:`leasectl.lease_core`: every decision (who tries which lease when, what a heartbeat
  proved, when to hand a lease over, whom to evict, whether a standby needs a lock session),
  as plain methods given the time, with its states drawn in its docstring;
* :mod:`leasectl._lease_loop`: the ``leasectl-leases`` thread on the lock connection
  (:class:`~leasectl.locks.LeaseSession`): commands, self-fence, heartbeat, hand-overs and
  campaign at their deadlines, asleep in one ``select`` on the socket and a wake-up pipe in
  between; reconnects with backoff after any database error, dropping every lease;
* :mod:`leasectl._watch_ring`: the ``leasectl-watch`` thread (spread placement, direct
  standby): it waits on its successor's liveness lock, so a crash is heard at once and
  ``replica_gone`` NOTIFYed to every replica (docs/safety.md, "The watch connection");
* :mod:`leasectl._standby_observer`: with ``leases.standby: pooled``, the polls through the
  pooler of a replica that has no lock session until it is needed.

The thread's timing: campaign every ``acquire_interval`` (with jitter) and at once when a
release is NOTIFYed; heartbeat every ``heartbeat_interval`` (one statement proves every held
lock and epoch; each lease is then valid until the heartbeat's start + ``lease_ttl``,
monotonic clock); self-fence a lease whose validity ran out; evict a holder whose last
renewal is older than ``lease_ttl + eviction_grace`` (DB clock).

Placement (``leases.placement: spread``, :mod:`leasectl.placement`): the heartbeat also
returns the live replicas; a replica that is not a lease's best-ranked candidate tries it
only ``rank * placement_step`` after it saw it free, and a holder hands a lease over (release +
NOTIFY, never while a tick of that loop runs: see :meth:`LeaseManager.tick_begin`) when a
better candidate has been live for ``rebalance_after`` and the lease has stayed here for
``rebalance_cooldown``. ``pack`` is the plain race: everyone tries at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg

from leasectl import control, placement
from leasectl._lease_context import Identity, Shared
from leasectl._lease_loop import LockLoop
from leasectl._standby_observer import StandbyObserver
from leasectl._watch_ring import WATCH_LOCK_TIMEOUT, WatchRing
from leasectl.errors import LeaseTimeout
from leasectl.keys import KeyRegistry
from leasectl.lease_core import CoreConfig, LeaseCore
from leasectl.leases import Clock, Lease, LeaseEvent
from leasectl.locks import (
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
from leasectl.standby import StandbyPoll, StandbySession

__all__ = [
    "STANDBY_APPLICATION_NAME",
    "WATCH_LOCK_TIMEOUT",
    "LeaseManager",
    "make_replica_id",
    "request_step_down",
]

#: The application_name of every standby's connection (no replica id: see _open_standby).
STANDBY_APPLICATION_NAME = "leasectl-standby"


def make_replica_id(configured: str | None = None) -> str:
    """Unique per process: host + pid + random suffix, unless configured."""
    if configured:
        return configured
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


def lease_policies(
    names: Iterable[str],
    declared: Mapping[str, placement.LeasePolicy],
    settings: CoreSettings,
) -> dict[str, placement.LeasePolicy]:
    """Each lease's placement wishes: as its loop declares them, ``leases.loops`` in the
    settings overriding them."""
    overrides = settings.leases.loops
    out: dict[str, placement.LeasePolicy] = {}
    for name in names:
        own = declared.get(name, placement.LeasePolicy())
        cfg = overrides.get(name)
        out[name] = placement.merge_policy(
            own.preferred_holder,
            own.requires_labels,
            cfg.preferred_holder if cfg else None,
            cfg.requires_labels if cfg else None,
        )
    return out


class LeaseManager:
    """Campaigns for the wanted leases and keeps the held ones alive, on one thread.

    The thread owns the replica's single lock connection: it campaigns every
    ``acquire_interval`` (with jitter) and at once when a release is NOTIFYed, heartbeats every
    ``heartbeat_interval``, evicts holders whose renewal is older than ``lease_ttl +
    eviction_grace`` (DB clock), and on any error drops every lease, closes the connection
    and reconnects with backoff. Its decisions are :attr:`core`'s
    (:class:`~leasectl.lease_core.LeaseCore`).
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
        self.registry = KeyRegistry()
        self.labels = tuple(labels)
        self.spread = settings.leases.placement == "spread"
        #: leases.standby: pooled: a lock session only while needed (holder, choice, heir)
        self.pooled = self.spread and settings.leases.standby == "pooled"
        names = list(wanted)
        idle = set(on_demand)
        #: every lease this replica's App declares (published for ``leasectl status``)
        self.declared = sorted(n for n in names if n not in idle)
        self.policies = lease_policies(names, policies or {}, settings)
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
        self._build(set(idle) & set(names), session_factory, watch_factory, standby_factory)

    def _build(
        self,
        suspended: set[str],
        session_factory: Callable[[], LeaseSession] | None,
        watch_factory: Callable[[], PeerWatch] | None,
        standby_factory: Callable[[], StandbyPoll] | None,
    ) -> None:
        """The decision core and the three shells around it, sharing one :class:`Shared`."""
        config = CoreConfig(
            self.replica_id,
            self.wanted,
            self.preferred_for,
            self.may_lead,
            self.spread,
            self.pooled,
            self.settings.leases,
            self.runtime.planted,
        )
        #: the decisions (:class:`~leasectl.lease_core.LeaseCore`); the manager thread
        #: changes it under the manager's lock: tests and tools only read it
        self.core = LeaseCore(config, suspended=suspended)
        identity = Identity(
            self.replica_id,
            self.may_lead,
            self.loops,
            self.labels,
            self.preferred_for,
            self.declared,
        )
        self._shared = s = Shared(identity, self.settings, self.runtime, self.clock, self.core)
        self.connected = s.connected
        self._thread: Joinable | None = None
        self._watch_thread: Joinable | None = None
        sessions = session_factory or self._open_lock_session
        self._ring = WatchRing(s, watch_factory or self._open_watch_session)
        self._observer = None
        if self.pooled:
            self._observer = StandbyObserver(
                s,
                standby_factory or self._open_standby,
                sessions,
                dsn=self.dsn,
                lock_dsn=self.lock_dsn,
            )
        self._loop = LockLoop(s, sessions, self._ring, self._observer)

    # -- status ---------------------------------------------------------------------------

    @property
    def fatal(self) -> BaseException | None:
        """What ended the manager thread (None: running, or stopped cleanly)."""
        return self._shared.fatal

    @property
    def d_srv(self) -> float | None:
        """D_srv of the lock session, as read back (None: a Unix socket, or not yet)."""
        return self._shared.d_srv

    @property
    def last_heartbeat_ok(self) -> float | None:
        """When (monotonic) the last heartbeat or standby poll succeeded."""
        return self._shared.last_heartbeat_ok

    @property
    def standby(self) -> bool:
        """True while this replica watches through the pooler with no lock session."""
        return self.pooled and self._loop.session is None

    # -- public surface -------------------------------------------------------------------

    def add_listener(self, fn: Callable[[LeaseEvent], None]) -> None:
        self._shared.listeners.append(fn)

    def add_control_listener(self, fn: Callable[[control.LoopControlChanged], None]) -> None:
        """Call ``fn`` (on the manager thread) with each ``loop_control`` message of the
        control channel (:mod:`leasectl.loop_control`: pause, resume, trigger)."""
        self._shared.control_listeners.append(fn)

    def add_exit_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (on the manager thread) when the thread ends, fatally or not: the
        daemon's supervisor waits on this instead of polling :attr:`fatal`."""
        self._shared.exit_listeners.append(fn)

    def start(self) -> None:
        """Connect, verify topology and the safety inequality, then start the thread.

        :raises SafetyInequalityViolated, UnsupportedTopology, DatabaseUnavailable:
        """
        if self._observer is not None:
            self._observer.start()
        else:
            self._loop.session = self._loop.connect()
        self._thread = self.runtime.spawn(self._loop.run, "leasectl-leases")
        if self.core.config.watched:
            self._watch_thread = self.runtime.spawn(self._ring.run, "leasectl-watch")

    def stop(self, *, release: bool = True, timeout: float = 10.0) -> None:
        """Stop campaigning; release held leases with NOTIFY (graceful hand-over).

        The manager thread is woken at once (its wait ends on the wake pipe), so the release
        starts within one round trip of this call.
        """
        self._loop.release_on_stop = release
        self._shared.stop.set()
        self._shared.waker.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._ring.stop()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (or the thread ended)."""
        return self._shared.stop.is_set()

    def lease(self, name: str) -> Lease | None:
        """The valid lease handle for ``name``, or None."""
        with self._shared.lock:
            lease = self.core.state.held.get(name)
        return lease if lease is not None and lease.valid() else None

    def held(self) -> dict[str, Lease]:
        with self._shared.lock:
            return {n: lease for n, lease in self.core.state.held.items() if lease.valid()}

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

    def candidacy(self) -> list[str]:
        """The leases this replica campaigns for now (its row's ``campaigns_for``)."""
        return self._shared.candidacy()

    def step_down(self, name: str, cooldown: float | None = None) -> None:
        """Release ``name`` and do not campaign for it for ``cooldown`` seconds."""
        cd = self.settings.leases.step_down_cooldown if cooldown is None else cooldown

        def command(session: LeaseSession) -> None:
            with self._shared.lock:
                self.core.state.cooldown_until[name] = self.clock() + cd
            self._loop.release(session, [name], "step_down")

        self._shared.command(command)

    def abandon(self, name: str, reason: str) -> None:
        """Give ``name`` up and stop campaigning for it until :meth:`resume`.

        For a wedged tick: its thread cannot be stopped, but another replica can run the
        loop; the stuck thread's late writes are refused by the fence once the new holder
        bumps the epoch. The release names the best-ranked other candidate as its receiver.
        """

        def command(session: LeaseSession) -> None:
            to = None
            if not self.runtime.planted("wedge_release_names_nobody"):
                with self._shared.lock:
                    to = self.core.receiver(name, self.clock())
            self._loop.release(session, [name], reason, to=to)

        with self._shared.lock:
            self.core.state.suspended.add(name)  # at once: no campaign may take it back meanwhile
            self._shared.commands.append(command)
        self._shared.waker.wake()

    def resume(self, name: str) -> None:
        """Campaign for ``name`` again (its wedged tick returned)."""
        with self._shared.lock:
            self.core.state.suspended.discard(name)
        self._shared.waker.wake()  # publish the candidacy and campaign now, not at a deadline

    def tick_begin(self, name: str, lease: Lease) -> bool:
        """The scheduler is about to run a tick of ``name`` under ``lease``: False refuses it.

        Refused while a rebalance hand-over of ``name`` is pending or once ``lease`` is no
        longer the held, valid one. Between ``tick_begin`` and :meth:`tick_end` the manager
        does not hand the lease over, so a rebalance never interrupts a tick (a step-down,
        a wedged tick, a lost lease or a shutdown still do: they are not placement's).
        """
        with self._shared.lock:
            return self.core.tick_begin(name, lease, self.clock())

    def tick_end(self, name: str) -> None:
        """The tick of ``name`` started with :meth:`tick_begin` returned (its slot recorded)."""
        with self._shared.lock:
            pending = self.core.tick_end(name)
        if pending:
            self._shared.waker.wake()  # the hand-over waited for this tick: do it now

    def replicas(self) -> list[placement.Replica] | None:
        """The live replicas as of the last heartbeat (spread placement; None otherwise)."""
        return self.core.replicas

    def watch_target(self) -> str | None:
        """The peer this replica watches: its successor in the sorted ring of live replicas
        (every live replica is watched by exactly one other; None when alone)."""
        return self.core.watch_target()

    def cache_problem(self) -> str | None:
        """The core's self-check of its placement caches (None: each equals a fresh
        computation); for the simulator's invariant C1."""
        with self._shared.lock:
            return self.core.cache_problem(self.clock(), commands=bool(self._shared.commands))

    def report_wedged(self, loops: Iterable[str]) -> None:
        """Record the loops wedged on this replica in its row, for ``leasectl status``."""
        names = sorted(loops)

        def command(session: LeaseSession) -> None:
            session.replica_wedged(self.replica_id, names)

        self._shared.command(command)

    # -- default connections ----------------------------------------------------------------

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

    def _open_standby(self) -> StandbySession:
        return StandbySession.connect(
            # One name for every standby: PgBouncer re-sends SET application_name whenever a
            # client's differs from its server connection's, which doubled each poll's cost.
            self.dsn,
            self.settings.database,
            STANDBY_APPLICATION_NAME,
        )


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
