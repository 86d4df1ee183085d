"""One simulated run: options drawn from a seed, replicas, faults, invariants, a verdict.

A run has two phases, as TigerBeetle's VOPR does: a *safety phase* in which faults from the
seed hit the replicas and the server while the invariants are checked after every step, then
a *quiet phase* with no faults in which every lease must be held again within the bound
``leasectl timing`` gives (liveness). A failure is a :class:`Failure` that prints the seed,
the options, the fault schedule, the last trace lines and the command that replays it.

Invariants (docs/testing.md):

* S1  at most one believer per lease, in histories without server faults or terminations;
* S1' at most one believer whose epoch is the lease row's current epoch (always);
* S2  no fenced write commits under a superseded epoch (checked by the server);
* S3  epochs strictly increase per lease, across failovers (checked by the server);
* S4  a lock session is evicted only when its stamp is older than lease_ttl + eviction_grace;
* S5  no re-entrant grant of a lease lock (checked by the server);
* L1  after the faults, every lease is held by one live replica within the timing bound;
* L2  at the end of the quiet phase (spread placement), every lease is held by the replica
      placement chooses over the server's live view;
* L3  one move per rebalance: in the quiet phase a lease is handed over by a rebalance at
      most once per placement view (the view its holder decided on), and once the membership
      has settled (from the L1 bound on) it is acquired at most once more;
* L4  ``stop()`` returns within its ``timeout`` (plus one round trip of slack);
* C1  every placement cache of every running manager's decision core (``plan()``'s
      placement, ``want_view``'s margin, ``direct_reason``'s answer) equals a fresh
      computation from the same inputs (``LeaseCore.cache_problem``), checked every 0.5
      simulated seconds whenever the cache is current.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from leasectl import placement
from leasectl.errors import DatabaseUnavailable, LeasectlError
from leasectl.lease_manager import WATCH_LOCK_TIMEOUT, LeaseManager
from leasectl.leases import LeaseEvent
from leasectl.locks import TcpBound
from leasectl.settings import CoreSettings, DatabaseSettings, LeaseSettings
from tests.sim.server import (
    Conn,
    Fenced,
    Link,
    Server,
    SimLockSession,
    SimStandbySession,
    SimWatchSession,
    Violation,
)
from tests.sim.world import Proc, SimRuntime, World

#: Added after the first soak, drawn from their own stream (the first kinds' seeds unchanged):
#: max_connections refusals for a while, a restart of the standbys' transaction pooler.
MORE_FAULTS = ("full", "pooler_restart")

#: The TCP settings the simulated lock sessions report (the defaults): D_srv = 9 s.
TCP = TcpBound(4, 1, 4, 9000, unix_socket=False)

#: The timeout the simulated graceful stops pass to ``LeaseManager.stop`` (L4's bound, with
#: STOP_SLACK for the last round trip of the join).
STOP_TIMEOUT = 10.0
STOP_SLACK = 0.5

FAULTS = (
    "crash",
    "stop",
    "pause",
    "freeze",
    "partition",
    "clog",
    "step_down",
    "drain",
    "terminate",
    "join",
    "leave",
    "duplicate",
    "wedge",
    "restart",
    "failover",
)


@dataclass
class Options:
    """Everything a seed decides before the run starts (printed on failure)."""

    seed: int
    replicas: int
    leases: int
    placement: str
    standby: str
    acquire_interval: float
    heartbeat_interval: float
    lease_ttl: float
    eviction_grace: float
    placement_step: float
    rebalance_after: float
    rebalance_cooldown: float
    heir_interval: float
    standby_after: float
    latency: float
    clog_p: float
    fault_mean: float
    faults_for: float
    kinds: tuple[str, ...]
    server_faults: bool
    drift: float = 0.0  # each process's monotonic clock runs at 1 +- up to this rate
    # planted bugs (the simulator must catch each): see tests/sim/test_planted.py
    fence_check: bool = True
    report_tcp: bool = True
    epoch_floor: bool = True
    bugs: tuple[str, ...] = ()  # fault points turned on through the runtime seam

    def settings(self) -> CoreSettings:
        ls = replace(
            LeaseSettings(),
            acquire_interval=self.acquire_interval,
            heartbeat_interval=self.heartbeat_interval,
            lease_ttl=self.lease_ttl,
            eviction_grace=self.eviction_grace,
            placement=self.placement,
            placement_step=self.placement_step,
            rebalance_after=self.rebalance_after,
            rebalance_cooldown=self.rebalance_cooldown,
            standby=self.standby,
            heir_interval=self.heir_interval,
            standby_after=self.standby_after,
            step_down_cooldown=5.0,
            reconnect_max_backoff=2.0,
        )
        return CoreSettings(database=DatabaseSettings(), leases=ls)


def draw_options(seed: int, *, replicas: tuple[int, int] = (2, 5), **over: Any) -> Options:
    """The swarm: settings within what ``leasectl timing`` accepts, faults and their mix."""
    rng = random.Random(f"options:{seed}")
    ttl = rng.choice([3.0, 4.0, 5.0, 6.0])
    kinds = tuple(k for k in FAULTS if rng.random() < 0.6) or ("crash",)
    more = random.Random(f"options-more:{seed}")  # drawn apart: older seeds keep their draws
    kinds += tuple(k for k in MORE_FAULTS if more.random() < 0.5)
    drift = 0.0 if more.random() < 0.6 else more.uniform(0.0, 0.002)
    step_clock = more.random() < 0.5
    server_faults = rng.random() < 0.3
    if server_faults and step_clock:
        kinds += ("clock_step",)
    if not server_faults:
        kinds = tuple(k for k in kinds if k not in ("terminate", "restart", "failover"))
    opts = Options(
        seed=seed,
        replicas=rng.randint(*replicas),
        leases=rng.randint(1, 8),
        placement=rng.choice(["spread", "spread", "spread", "pack"]),
        standby=rng.choice(["direct", "direct", "pooled"]),
        acquire_interval=rng.choice([0.5, 1.0]),
        heartbeat_interval=rng.choice([0.5, 1.0]),
        lease_ttl=ttl,
        eviction_grace=rng.choice([2.0, 3.0]),
        placement_step=rng.choice([0.2, 0.4]),
        rebalance_after=rng.choice([1.0, 3.0]),
        rebalance_cooldown=rng.choice([2.0, 5.0]),
        heir_interval=0.5,
        standby_after=rng.choice([2.0, 5.0]),
        latency=rng.choice([0.0005, 0.001, 0.003]),
        clog_p=rng.choice([0.0, 0.0, 0.01, 0.05]),
        fault_mean=rng.choice([3.0, 8.0, 15.0]),
        faults_for=120.0,
        kinds=kinds or ("crash",),
        server_faults=server_faults,
        drift=drift,
    )
    if opts.placement == "pack":
        opts = replace(opts, standby="direct")
    return replace(opts, **over)


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: when, what kind, and the seed of its own random choices."""

    t: float
    kind: str
    sub: int


def draw_schedule(opts: Options) -> list[Fault]:
    """The safety phase's faults: a Poisson process of ``fault_mean`` over ``faults_for``."""
    rng = random.Random(f"schedule:{opts.seed}")
    out = []
    t = rng.expovariate(1.0 / opts.fault_mean)
    while t < opts.faults_for and opts.kinds:
        out.append(Fault(round(t, 6), rng.choice(opts.kinds), rng.getrandbits(32)))
        t += rng.expovariate(1.0 / opts.fault_mean)
    return out


@dataclass
class Failure(AssertionError):
    code: str
    text: str
    options: Options
    schedule: list[Fault]
    applied: list[str]
    trace: list[str]
    at: float
    full: bool = True  # the seed's own schedule (False: a shrunk or hand-made one)

    def __str__(self) -> str:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            commit = "?"
        planted = {
            f.name: getattr(self.options, f.name)
            for f in dataclasses.fields(Options)
            if (
                f.name in ("fence_check", "report_tcp", "epoch_floor")
                and getattr(self.options, f.name) is False
            )
            or (f.name == "bugs" and self.options.bugs)
        }
        extra = "".join(f" --set {k}={json.dumps(v)}" for k, v in planted.items())
        return "\n".join(
            [
                f"{self.code} at t={self.at:.3f}: {self.text}",
                f"seed {self.options.seed}, commit {commit}",
                "options: " + json.dumps(dataclasses.asdict(self.options)),
                "faults: " + json.dumps(self.applied),
                "last trace lines:",
                *("  " + line for line in self.trace[-40:]),
                f"replay: .venv/bin/python -m tests.sim replay --seed {self.options.seed}{extra}"
                + ("" if self.full else f" --schedule '{schedule_json(self.schedule)}'"),
            ]
        )


@dataclass
class Replica:
    """One replica id and its current process (None: not running)."""

    rid: str
    labels: tuple[str, ...] = ()
    proc: Proc | None = None
    mgr: LeaseManager | None = None
    runtime: SimRuntime | None = None
    links: dict[str, Link] = field(default_factory=dict)
    wedged: set[str] = field(default_factory=set)
    left: bool = False  # stopped for good (a leave fault)


@dataclass
class Result:
    options: Options
    trace_hash: str
    events: int
    simulated: float
    faults: int
    acquisitions: int


class Sim:
    """The world for one seed: server, replicas, fault injector and checker."""

    def __init__(
        self, opts: Options, *, quiet: float | None = None, schedule: list[Fault] | None = None
    ) -> None:
        self.opts = opts
        self.world = World(opts.seed)
        self.settings = opts.settings()
        self.server = Server(self.world, d_srv=TCP.d_srv or 9.0, fence_check=opts.fence_check)
        self.server.epoch_floor = opts.epoch_floor
        self.server.trace = self.log
        self.server.on_evict = self._check_evict
        self.names = [f"loop-{i}" for i in range(opts.leases)]
        self.replicas = [Replica(f"r{i}") for i in range(opts.replicas)]
        self.trace: deque[str] = deque(maxlen=200)
        self._hash = hashlib.sha256()
        self.schedule: list[Fault] = list(schedule) if schedule is not None else draw_schedule(opts)
        self.applied: list[str] = []  # what each fault did, as text
        self.next_os_pid = 4000
        self.server_faulted = False
        self.acquisitions = 0
        self.procs: list[tuple[LeaseManager, Proc]] = []  # every process booted
        self.heals: list[tuple[Link, Any]] = []
        self.quiet_mode = False
        self.hooks: list[Callable[[str, Proc, LeaseEvent], None]] = []
        self.settled_at: float | None = None  # L3: acquisitions counted from here
        self.moves: dict[str, list[str]] = {}  # L3: lease -> acquirers since settled_at
        # L3: lease -> quiet-phase hand-overs, each with the placement view it was decided on
        self.rebalanced: dict[str, list[tuple[tuple[Any, ...], str]]] = {}
        ls = self.settings.leases
        a_max = ls.acquire_interval * (1 + ls.acquire_jitter)
        hang = ls.lease_ttl + ls.eviction_grace + 2 * a_max
        d_srv = self.server.d_srv
        self.bound = (
            max(hang, d_srv + a_max)
            + ls.reconnect_max_backoff * 1.2
            + len(self.replicas) * ls.placement_step
            + ls.rebalance_after
            + ls.standby_after
            + 5.0  # a server restart still down
            + 3.0
        )
        self.quiet = quiet if quiet is not None else self.bound + 10.0
        self.rng = random.Random(f"faults:{opts.seed}")

    # -- trace --------------------------------------------------------------------------

    def log(self, text: str) -> None:
        line = f"{self.world.now:9.3f} {text}"
        self.trace.append(line)
        self._hash.update(line.encode())

    def fail(self, code: str, text: str) -> Failure:
        return Failure(
            code, text, self.opts, self.schedule, self.applied, list(self.trace), self.world.now
        )

    # -- replicas -------------------------------------------------------------------------

    def link(self, r: Replica, kind: str) -> Link:
        if kind not in r.links:
            clog = 0.0 if self.quiet_mode else self.opts.clog_p
            r.links[kind] = Link(latency=self.opts.latency, clog_p=clog)
        return r.links[kind]

    def conn(self, r: Replica, proc: Proc, kind: str) -> Conn:
        timeout = self.settings.database.client_tcp_user_timeout_ms / 1000.0
        return Conn(self.server, proc, kind, f"leasectl/{r.rid}", self.link(r, kind), timeout)

    def boot(self, r: Replica, *, rid: str | None = None) -> None:
        """Start a process for replica ``r`` (its id may be borrowed: a duplicate)."""
        self.next_os_pid += 1
        proc = Proc(rid or r.rid, self.next_os_pid)
        rng = random.Random(f"{self.opts.seed}:{proc.os_pid}")
        rt = SimRuntime(self.world, proc, rng, "sim", frozenset(self.opts.bugs))
        if self.opts.drift:
            skew = random.Random(f"drift:{self.opts.seed}:{proc.os_pid}")
            rt.rate = 1.0 + skew.uniform(-self.opts.drift, self.opts.drift)
            rt.base = skew.uniform(0.0, 1e6)  # monotonic clocks of processes share no origin
        replica_id = rid or r.rid
        # planted: claim a Unix socket (no D_srv, the check exempt) while the links can drop
        tcp = TCP if self.opts.report_tcp else TcpBound(0, 0, 0, 0, unix_socket=True)

        def lock() -> SimLockSession:
            return SimLockSession(self.conn(r, proc, "lock"), tcp=tcp, wakers=rt.wakers)

        def watch() -> SimWatchSession:
            return SimWatchSession(self.conn(r, proc, "watch"), WATCH_LOCK_TIMEOUT)

        def standby() -> SimStandbySession:
            return SimStandbySession(self.conn(r, proc, "standby"))

        mgr = LeaseManager(
            replica_id,
            self.names,
            self.settings,
            dsn="sim://work",
            lock_dsn="sim://lock",
            loops=self.names,
            session_factory=lock,
            watch_factory=watch,
            standby_factory=standby,
            runtime=rt,
            labels=r.labels,
        )
        mgr.add_listener(lambda ev: self._on_event(replica_id, proc, ev))
        self.procs.append((mgr, proc))
        if rid is None:
            r.proc, r.mgr, r.runtime = proc, mgr, rt
        self.log(f"{replica_id} boot pid {proc.os_pid}")

        def main() -> None:
            backoff = 0.2
            while True:
                try:
                    mgr.start()
                    break
                except DatabaseUnavailable:
                    rt.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                except LeasectlError as exc:
                    self.log(f"{replica_id} refused to start: {str(exc).splitlines()[0]}")
                    self.world.at(self.world.now, lambda: self._exit(r, proc, rid is None))
                    return
            self._loops(r, proc, rt, mgr)

        self.world.spawn(proc, main, None)

    def _loops(self, r: Replica, proc: Proc, rt: SimRuntime, mgr: LeaseManager) -> None:
        """The scheduler's leased loops: a fenced write per tick while the lease is held."""
        work: Fenced | None = None
        while not mgr.stopping:
            rt.sleep(rt.uniform(0.3, 0.7))
            for name in self.names:
                lease = mgr.lease(name)
                if lease is None or not mgr.tick_begin(name, lease):
                    continue
                try:
                    if name in r.wedged and r.proc is proc:
                        self._wedged_tick(r, rt, mgr, name)
                    if work is None:
                        work = Fenced(self.conn(r, proc, "work"))
                    work.write(name, lease.epoch, mgr.replica_id)
                except DatabaseUnavailable:
                    if work is not None:
                        work.close()
                    work = None
                finally:
                    mgr.tick_end(name)

    def _exit(self, r: Replica, proc: Proc, supervised: bool) -> None:
        """The process exited (refused); a supervised one is restarted 2 s later (systemd)."""
        self.world.kill(proc)
        if supervised and r.proc is proc:
            self.world.at(self.world.now + 2.0, lambda: self._restart(r))

    def _wedged_tick(self, r: Replica, rt: SimRuntime, mgr: LeaseManager, name: str) -> None:
        """A tick that ignores cancellation: the daemon's watchdog abandons its lease."""
        self.log(f"{mgr.replica_id} tick of {name} wedged")
        stuck_for = self.rng.uniform(2.0, 20.0)
        rt.sleep(1.0)  # timeout + wedge_grace, shortened
        mgr.abandon(name, "wedged_tick")
        mgr.report_wedged([name])
        rt.sleep(stuck_for)
        r.wedged.discard(name)
        mgr.resume(name)
        mgr.report_wedged([])
        self.log(f"{mgr.replica_id} tick of {name} returned")

    def _on_event(self, rid: str, proc: Proc, ev: LeaseEvent) -> None:
        if ev.kind == "heartbeat" or proc.dead:
            return
        for hook in self.hooks:
            hook(rid, proc, ev)
        if ev.kind == "acquired":
            self.acquisitions += 1
            if self.settled_at is not None:
                self.moves.setdefault(ev.lease, []).append(f"{rid}@{self.world.now:.3f}")
        elif ev.kind == "released" and self.quiet_mode and ev.reason.startswith("rebalance"):
            move = f"{rid} {ev.reason}@{self.world.now:.3f}"
            view = self._decision_view(proc)
            self.rebalanced.setdefault(ev.lease, []).append((view, move))
        self.log(f"{rid} {ev.kind} {ev.lease} e{ev.epoch} {ev.reason}")

    # -- invariants -------------------------------------------------------------------------

    def check(self) -> None:
        v = self.server.violation
        if v is not None:
            raise self.fail(v.code, str(v))
        believers: dict[str, list[tuple[str, int]]] = {}
        for mgr, proc in self.procs:
            if proc.dead:
                continue
            for name, lease in list(mgr.core.state.held.items()):
                if lease.valid():
                    believers.setdefault(name, []).append((mgr.replica_id, lease.epoch))
        for name, who in believers.items():
            if len(who) < 2:
                continue
            row = self.server.data.leases.get(name)
            current = [w for w in who if row is not None and w[1] == row.epoch]
            if len(current) > 1:
                raise self.fail("S1'", f"{name}: two believers with the current epoch: {who}")
            if not self.server_faulted and self.server.terminations == 0:
                raise self.fail("S1", f"{name}: two believers {who}")

    def _check_evict(self, lease: str, pid: int, replica: str) -> None:
        """S4: the victim's renewals show a gap of at least lease_ttl + eviction_grace, either
        up to now or just before a renewal the evicter could not have seen yet (it read the
        age one round trip ago, and a stopped holder may resume meanwhile)."""
        srv = self.server
        if srv.clock_offset:
            return  # ages read on a stepped clock: not the protocol's promise
        limit = self.settings.leases.lease_ttl + self.settings.leases.eviction_grace
        row = srv.data.leases.get(lease)
        if row is None or row.holder_pid != pid:
            return  # the row does not describe the lock's holder: the mismatch rule
        now = self.world.now
        stamps = srv.stamps.get(pid, [])
        if not stamps or now - stamps[-1] >= limit:
            return
        recent = [t for t in stamps if t >= now - 10.0]
        older = [t for t in stamps if t < now - 10.0]
        gaps = [b - a for a, b in zip(older[-1:] + recent, recent, strict=False)]
        if any(g >= limit for g in gaps):
            return
        raise self.fail(
            "S4",
            f"{replica} evicted the holder of {lease} (backend {pid}) whose last renewal is "
            f"{now - stamps[-1]:.2f}s old < {limit}s",
        )

    # -- faults ------------------------------------------------------------------------------

    def _live(self) -> list[Replica]:
        return [r for r in self.replicas if r.proc is not None and not r.proc.dead]

    def inject(self, fault: Fault) -> None:
        """Apply one scheduled fault; its own random stream picks the target and durations,
        so removing another fault (the shrinker) does not change this one's draws."""
        self.rng = random.Random(f"fault:{fault.sub}")
        kind = fault.kind
        live = self._live()
        ls = self.settings.leases
        now = self.world.now
        if (
            kind in ("crash", "stop", "pause", "freeze", "partition", "drain", "leave", "wedge")
            and not live
        ):
            kind = "join"
        r = self.rng.choice(live) if live else None
        text = kind
        if kind == "crash" and r is not None:
            back = self.rng.uniform(0.5, 10.0)
            text = f"crash {r.rid}, back after {back:.1f}s"
            self._kill(r)
            self.world.at(now + back, lambda: self._restart(r))
        elif kind == "stop" and r is not None:
            back = self.rng.uniform(0.5, 10.0)
            text = f"stop {r.rid}, back after {back:.1f}s"
            self._stop(r)
            self.world.at(now + back, lambda: self._restart(r))
        elif kind == "leave" and r is not None and len(live) > 1:
            text = f"leave {r.rid}"
            r.left = True
            self._stop(r)
        elif kind == "pause" and r is not None and r.proc is not None:
            d = self.rng.uniform(0.1, 2 * ls.lease_ttl)
            text = f"pause {r.rid} {d:.1f}s"
            r.proc.paused_until = max(r.proc.paused_until, now + d)
        elif kind == "freeze" and r is not None and r.proc is not None:
            # the whole host stops (a VM paused or migrated): the process and its kernel,
            # which answers no keepalive, so the server drops its sessions after D_srv
            d = self.rng.uniform(1.0, 20.0)
            text = f"freeze {r.rid}'s host {d:.1f}s"
            r.proc.paused_until = max(r.proc.paused_until, now + d)
            for k in ("lock", "watch", "standby", "work"):
                self._partition(self.link(r, k), d)
        elif kind == "partition" and r is not None:
            which = self.rng.choice(["lock", "watch", "standby", "work", "all"])
            d = self.rng.uniform(1.0, 20.0)
            text = f"partition {r.rid} {which} {d:.1f}s"
            for k in ["lock", "watch", "standby", "work"] if which == "all" else [which]:
                self._partition(self.link(r, k), d)
        elif kind == "clog":
            d = self.rng.uniform(1.0, 10.0)
            text = f"clog all links {d:.1f}s"
            for rr in self.replicas:
                for k in ("lock", "watch", "standby", "work"):
                    link = self.link(rr, k)
                    before = link.clog_p
                    link.clog_p = 0.3

                    def unclog(link: Link = link, before: float = before) -> None:
                        link.clog_p = 0.0 if self.quiet_mode else before

                    self.world.at(now + d, unclog)
        elif kind == "step_down" and r is not None and r.mgr is not None:
            name = self.rng.choice(self.names)
            text = f"step-down {name}"
            for rr in live:
                if rr.mgr is not None and name in rr.mgr.core.state.held:
                    rr.mgr.step_down(name, cooldown=self.rng.uniform(0.5, 5.0))
        elif kind == "drain" and r is not None and r.mgr is not None:
            text = f"step-down --replica {r.rid}"
            for name in self.names:
                r.mgr.step_down(name, cooldown=self.rng.uniform(0.5, 5.0))
        elif kind == "wedge" and r is not None:
            name = self.rng.choice(self.names)
            text = f"wedge {r.rid} {name}"
            r.wedged.add(name)
        elif kind == "terminate" and r is not None and r.mgr is not None:
            b = [b for b in self.server.backends.values() if b.proc is r.proc and b.kind == "lock"]
            text = f"pg_terminate_backend {r.rid}'s lock session"
            for x in b:
                self.server.terminate(x.pid)
        elif kind == "join":
            text = self._join()
        elif kind == "duplicate" and r is not None:
            text = f"duplicate id {r.rid}"
            self._duplicate(r)
        elif kind == "full":
            d = self.rng.uniform(1.0, 10.0)
            text = f"max_connections reached for {d:.1f}s"
            srv = self.server
            srv.max_connections = sum(1 for b in srv.backends.values() if b.alive)

            def unfull() -> None:
                srv.max_connections = 10_000

            self.world.at(now + d, unfull)
        elif kind == "clock_step":
            # NTP or an operator steps the database server's wall clock: now() jumps, and
            # every renewal age read on it with it (a forward step past eviction_grace can
            # evict a live holder: docs/safety.md, "What exactly is guaranteed")
            step = self.rng.uniform(-10.0, 20.0)
            text = f"the server's clock steps {step:+.1f}s"
            self.server_faulted = True
            self.server.clock_offset += step
        elif kind == "pooler_restart":
            text = "the standbys' pooler restarts"
            for sb in [x for x in self.server.backends.values() if x.kind == "standby"]:
                self.server.end(sb, "pooler restart")
        elif kind == "restart":
            d = self.rng.uniform(0.5, 5.0)
            text = f"server restart, down {d:.1f}s"
            self.server_faulted = True
            self.server.restart(d)
        elif kind == "failover":
            lag = self.rng.uniform(0.0, 2.0)
            d = self.rng.uniform(0.5, 5.0)
            text = f"failover, lag {lag:.2f}s, down {d:.1f}s"
            self.server_faulted = True
            self.server.restart(d, failover_lag=lag)
        self.applied.append(f"{now:.3f} {text}")
        self.log(f"FAULT {text}")

    def _partition(self, link: Link, d: float) -> None:
        now = self.world.now
        link.down_since = now
        link.down_until = max(link.down_until, now + d)
        self.server.partition_started(link)

        def heal() -> None:
            if link.up(self.world.now):
                link.down_since = None
                waiters, link.waiters = link.waiters, []
                for w in waiters:
                    w.fire()
                # a backend whose client closed meanwhile: the RST ends it now
                for b in list(self.server.backends.values()):
                    if b.link is link and self._closed_client(b):
                        self.server.end(b, "client gone (RST after heal)")

        self.world.at(now + d, heal)
        self.heals.append((link, heal))

    def _closed_client(self, b: Any) -> bool:
        return bool(b.proc.dead) or b.pid in self.server.closed_clients

    def _kill(self, r: Replica) -> None:
        proc = r.proc
        if proc is None or proc.dead:
            return
        self.world.kill(proc)
        for b in [b for b in self.server.backends.values() if b.proc is proc]:
            if b.link.up(self.world.now):
                self.server.end(b, "client killed")
            # partitioned: ended at D_srv or at heal (RST)
        r.wedged.clear()

    def _stop(self, r: Replica) -> None:
        mgr, proc = r.mgr, r.proc
        if mgr is None or proc is None or proc.dead:
            return

        def stopper() -> None:
            began = self.world.now
            mgr.stop(timeout=STOP_TIMEOUT)
            took = self.world.now - began
            self.log(f"{r.rid} stopped")
            if took > STOP_TIMEOUT + STOP_SLACK:  # L4
                raise self.fail(
                    "L4", f"{r.rid}'s stop(timeout={STOP_TIMEOUT:g}) returned after {took:.2f}s"
                )
            self.world.at(self.world.now, lambda: self._kill(r))

        self.world.spawn(proc, stopper, None)

    def _restart(self, r: Replica) -> None:
        if r.left or (r.proc is not None and not r.proc.dead):
            return
        self.boot(r)

    def _join(self) -> str:
        r = Replica(f"r{len(self.replicas)}")
        self.replicas.append(r)
        self.boot(r)
        return f"join {r.rid}"

    def _duplicate(self, r: Replica) -> None:
        """A second process with the same id: it must be refused while r is live."""
        self.boot(r, rid=r.rid)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Result:
        """The seed's run: faults for ``faults_for`` seconds, then the quiet phase."""
        self.start(self.opts.faults_for + self.quiet)
        try:
            self.world.run_until(self.opts.faults_for)
        except Violation as v:
            raise self.fail(v.code, str(v)) from None
        return self.finish()

    def start(self, horizon: float) -> None:
        """Boot the replicas and schedule the seed's faults (none: a caller injects them)."""
        logging.getLogger("leasectl").setLevel(logging.CRITICAL)
        for r in self.replicas:
            self.boot(r)
        self.world.after_step = self.check
        if self.schedule:  # one at a time: a shrunk schedule leaves the earlier draws alone
            self.world.at(self.schedule[0].t, self._injector(0))
        snap = 0.0
        while snap < horizon:
            self.world.at(snap, self._snapshot)
            snap += 0.5

    def _snapshot(self) -> None:
        """The server's failover snapshot, and C1 at the same instants (no extra events: the
        seeds' traces stay what they were)."""
        self.server.snapshot()
        self.check_caches()

    def finish(self) -> Result:
        """The quiet phase from now: every lease held within the bound, and still at the end."""
        end_faults = self.world.now
        try:
            self._quiet_start()
            self.world.run_until(end_faults + self.bound)
            self.liveness(f"within the bound {self.bound:.1f}s after the last fault")
            self.settled_at = self.world.now
            self.world.run_until(end_faults + self.quiet)
            self.liveness("at the end of the quiet phase")
            self.converged()
            self.one_move()
        except Violation as v:
            raise self.fail(v.code, str(v)) from None
        return Result(
            self.opts,
            self._hash.hexdigest(),
            self.world.events,
            self.world.now,
            len(self.applied),
            self.acquisitions,
        )

    def _injector(self, i: int) -> Callable[[], None]:
        def fire() -> None:
            if i + 1 < len(self.schedule):
                self.world.at(self.schedule[i + 1].t, self._injector(i + 1))
            self.inject(self.schedule[i])

        return fire

    def _quiet_start(self) -> None:
        """No more faults: heal every link, restart every replica id that is not running."""
        self.log("QUIET")
        for r in self.replicas:
            for link in r.links.values():
                link.clog_p = 0.0
        self.quiet_mode = True
        for link, heal in self.heals:
            link.down_until = min(link.down_until, self.world.now)
            heal()
        for r in self.replicas:
            r.wedged.clear()
            if (r.proc is None or r.proc.dead) and not r.left:
                self.boot(r)
        if not self._live():
            self.boot(self.replicas[0])

    def liveness(self, when: str) -> None:
        """L1: every lease some live replica campaigns for is held by exactly one."""
        running = [m for m, p in self.procs if not p.dead]
        for name in self.names:
            if not any(name in m.candidacy() for m in running):
                continue  # nobody campaigns for it now (a wedged tick everywhere)
            holders = [m.replica_id for m in running if m.lease(name) is not None]
            if len(holders) != 1:
                raise self.fail("L1", f"{name} held by {holders or 'nobody'} {when}")

    def converged(self) -> None:
        """L2: in spread placement every lease ends held by the replica placement chooses
        over the live view as the server has it (what every replica's heartbeat reads)."""
        if self.opts.placement != "spread":
            return
        view = self.server.live_view("", self.settings.leases.lease_ttl)
        plan = placement.Placement(view)
        running = [m for m, p in self.procs if not p.dead]
        for name in self.names:
            chosen = plan.choose(name)
            if chosen is None:
                continue
            holders = [m.replica_id for m in running if m.lease(name) is not None]
            if holders != [chosen]:
                raise self.fail(
                    "L2", f"{name} held by {holders or 'nobody'}, placement chooses {chosen}"
                )

    def _decision_view(self, proc: Proc) -> tuple[Any, ...]:
        """What the manager of ``proc`` ranks by now: its last heartbeat's live view with its
        own entry as it knows it (what its rebalance plan was computed over)."""
        mgr = next(m for m, p in self.procs if p is proc)
        own = mgr.candidacy()
        view = placement.self_view(mgr.replica_id, own, mgr.preferred_for, mgr.replicas() or [])
        return tuple(sorted((r.id, r.campaigns_for, r.preferred_for, r.wedged) for r in view))

    def one_move(self) -> None:
        """L3: a rebalance hands a lease to its final holder directly: in the quiet phase a
        lease is handed over at most once per placement view (the quiet phase's restarts and
        the end of the faults' step-down cooldowns reach the live view over several
        heartbeats: each such change may move a lease once more; a second move decided on
        the same view is a ping-pong); from the L1 bound on (membership settled, every
        lease held) it is acquired at most once more."""
        for name, moves in sorted(self.rebalanced.items()):
            per_view: dict[tuple[Any, ...], list[str]] = {}
            for view, move in moves:
                per_view.setdefault(view, []).append(move)
            for who in per_view.values():
                if len(who) > 1:
                    raise self.fail(
                        "L3", f"{name} rebalanced {len(who)} times over one view when quiet: {who}"
                    )
        for name, who in sorted(self.moves.items()):
            if len(who) > 1:
                raise self.fail("L3", f"{name} moved {len(who)} times after settling: {who}")

    def check_caches(self) -> None:
        """C1: each current placement cache equals its recomputation from the same inputs."""
        for mgr, proc in self.procs:
            if proc.dead or mgr.stopping:
                continue
            self._check_caches(mgr)

    def _check_caches(self, mgr: LeaseManager) -> None:
        problem = mgr.cache_problem()
        if problem is not None:
            raise self.fail("C1", problem)


def schedule_json(schedule: list[Fault]) -> str:
    return json.dumps([[f.t, f.kind, f.sub] for f in schedule])


def parse_schedule(text: str) -> list[Fault]:
    return [Fault(float(t), str(k), int(sub)) for t, k, sub in json.loads(text)]


def run_seed(seed: int, *, schedule: list[Fault] | None = None, **over: Any) -> Result:
    """One run, bit for bit the same for the same arguments."""
    opts = draw_options(seed, **over)
    sim = Sim(opts, schedule=schedule)
    try:
        return sim.run()
    except Failure as f:
        if schedule is not None:
            raise replace(f, full=False) from None
        raise
