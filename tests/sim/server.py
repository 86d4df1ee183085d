"""A simulated PostgreSQL for the lease protocol, and the clients' links to it.

What ``leasectl/sql/{locks,leases,standby}.sql`` and the migrations promise, kept in Python
(the conformance test compares the two): server sessions (backends) that end on a client's
close, a kill, ``pg_terminate_backend``, a restart, or D_srv after their link went silent;
session advisory locks with re-entrant counts; the lease, replica and event rows; NOTIFY
delivered in commit order; the fence (``leasectl_fence``'s FOR KEY SHARE) against the epoch
bump's FOR UPDATE; the timeline floor of ``bump_epoch``; the standby poll.

A statement is a round trip over a :class:`Link`: latency each way, sometimes a clog
(0.2-2 s), and partitions (the request waits for the link to heal, or fails after the client's
TCP timeout). The server executes each statement atomically when its request arrives.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from leasectl.errors import ConfigError, DatabaseUnavailable, RowLockTimeout
from leasectl.locks import (
    Contender,
    Drain,
    Heartbeat,
    Registered,
    TcpBound,
    gone_payload,
    id_in_use,
)
from leasectl.placement import Replica
from leasectl.standby import StandbyView
from tests.sim.world import TIMEOUT, Proc, SimWaker, Waiter, World

T = TypeVar("T")

RELEASED = "leasectl_released"
CONTROL = "leasectl_control"


class Violation(AssertionError):
    """An invariant of the lease protocol failed."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code


@dataclass
class Link:
    """A process's network path to the server for one connection kind."""

    latency: float = 0.001  # one way, mean
    clog_p: float = 0.0
    down_since: float | None = None  # partitioned since
    down_until: float = 0.0
    waiters: list[Waiter] = field(default_factory=list)

    def up(self, now: float) -> bool:
        return self.down_since is None or now >= self.down_until


@dataclass
class LeaseRow:
    epoch: int
    key: int
    holder: str
    holder_pid: int
    acquired_at: float
    renewed_at: float
    released_at: float | None = None


@dataclass
class ReplicaRow:
    host: str
    pid: int
    backend_pid: int | None
    last_seen: float
    campaigns_for: list[str]
    preferred_for: list[str]
    labels: list[str]
    connected_at: float
    may_lead: bool = True
    stopped_at: float | None = None
    standby: bool = False
    wedged: list[str] = field(default_factory=list)
    drain_at: float | None = None
    drain_cooldown: float | None = None


@dataclass
class Backend:
    """One server session."""

    pid: int
    proc: Proc
    kind: str  # lock | watch | standby | work
    app: str
    link: Link
    alive: bool = True
    listening: set[str] = field(default_factory=set)
    inbox: list[str] = field(default_factory=list)  # delivered to the client, unread
    waiters: list[Waiter] = field(default_factory=list)  # wait_notify / watch
    last_packet: float = 0.0


@dataclass
class Durable:
    """What survives a restart (and is copied for a failover's lag)."""

    leases: dict[str, LeaseRow] = field(default_factory=dict)
    replicas: dict[str, ReplicaRow] = field(default_factory=dict)


class Server:
    """The simulated PostgreSQL: one primary, with restart and failover."""

    def __init__(self, world: World, *, d_srv: float, fence_check: bool = True) -> None:
        self.world = world
        self.d_srv = d_srv
        self.fence_check = fence_check
        self.epoch_floor = True  # bump_epoch's timeline floor
        self.data = Durable()
        self.history: list[tuple[float, Durable]] = []  # snapshots for a failover's lag
        self.backends: dict[int, Backend] = {}
        self.locks: dict[str, tuple[int, int]] = {}  # lock key -> (pid, count)
        self.key_share: dict[str, set[int]] = {}  # lease -> backends in a fenced transaction
        self.timeline = 1
        self.down_until = 0.0
        self.next_pid = 100
        self.max_connections = 10_000
        self.issued: dict[str, int] = {}  # lease -> highest epoch ever returned (S3)
        self.events: list[tuple[float, str, str, int | None, str]] = []
        self.terminations = 0  # pg_terminate_backend by an operator or DBA (S1's precondition)
        self.trace: Callable[[str], None] = lambda _s: None
        self.on_evict: Callable[[str, int, str], None] = lambda _l, _p, _r: None
        self.idle_tx_timeout = 4.0  # database.work_idle_in_transaction_timeout_ms
        self.violation: Violation | None = None  # the first, even if the caller swallowed it
        self.clock_offset = 0.0  # the server's wall clock minus real time (clock steps)
        self.closed_clients: set[int] = set()  # backends whose client closed while cut off
        self.stamps: dict[int, list[float]] = {}  # backend -> its renewals (S4)

    # -- sessions --------------------------------------------------------------------

    def up(self) -> bool:
        return self.world.now >= self.down_until

    def db_now(self) -> float:
        """``now()``: the server's wall clock, which an operator or NTP may step."""
        return self.world.now + self.clock_offset

    def violate(self, code: str, text: str) -> Violation:
        """Record an invariant's failure (the manager may catch what is raised into it)."""
        v = Violation(code, text)
        if self.violation is None:
            self.violation = v
        return v

    def connect(self, proc: Proc, kind: str, app: str, link: Link) -> Backend:
        live = sum(1 for b in self.backends.values() if b.alive)
        if not self.up() or live >= self.max_connections:
            raise DatabaseUnavailable("connection refused: the server is down or full")
        self.next_pid += 1
        b = Backend(self.next_pid, proc, kind, app, link, last_packet=self.world.now)
        self.backends[b.pid] = b
        return b

    def end(self, b: Backend, why: str) -> None:
        """The backend exits: its session locks go, its waits end (EOF for the client)."""
        if not b.alive:
            return
        b.alive = False
        self.trace(f"backend {b.pid} ({b.app}) ended: {why}")
        for key in [k for k, (pid, _) in self.locks.items() if pid == b.pid]:
            del self.locks[key]
            self._lock_freed(key)
        self.backends.pop(b.pid, None)
        for holders in self.key_share.values():
            holders.discard(b.pid)  # its open transaction rolls back
        for w in b.waiters:
            w.fire()
        b.waiters.clear()

    def _lock_freed(self, key: str) -> None:
        """A session lock went: watchers waiting on a liveness lock wake."""
        for b in list(self.backends.values()):
            if b.kind == "watch":
                for w in list(b.waiters):
                    w.fire(("freed", key))

    def terminate(self, pid: int) -> bool:
        b = self.backends.get(pid)
        if b is None or not b.alive:
            return False
        self.terminations += 1
        self.end(b, "pg_terminate_backend")
        return True

    def evict(self, lease: str, pid: int, replica: str) -> None:
        """``evict``: :attr:`on_evict` checks S4 first, then pg_terminate_backend."""
        self.on_evict(lease, pid, replica)
        b = self.backends.get(pid)
        if b is not None:  # not counted in terminations: S1 must hold across evictions
            self.end(b, f"evicted by {replica}")
        self.events.append((self.world.now, "evicted", lease, None, replica))

    def partition_started(self, link: Link) -> None:
        """D_srv after a link went silent the server drops each backend on it."""
        since = link.down_since

        def drop() -> None:
            if link.down_since != since or link.up(self.world.now):
                return
            for b in [b for b in self.backends.values() if b.link is link]:
                if b.last_packet <= (since or 0.0) + 1e-9:
                    self.end(b, f"silent for D_srv = {self.d_srv}s")

        self.world.at((since or 0.0) + self.d_srv, drop)

    def notify(self, channel: str, payload: str) -> None:
        """Delivered in commit order: each listener's link adds its own latency."""
        for b in list(self.backends.values()):
            if channel in b.listening:
                self._deliver(b, payload)

    def _deliver(self, b: Backend, payload: str) -> None:
        link = b.link
        delay = link.latency * (0.5 + self.world.rng.random())
        at = max(self.world.now, link.down_until if not link.up(self.world.now) else 0.0)

        def arrive() -> None:
            if not b.alive:
                return
            b.inbox.append(payload)
            for w in list(b.waiters):
                w.fire()

        self.world.at(at + delay, arrive)

    # -- restarts and failover ------------------------------------------------------

    def snapshot(self) -> None:
        self.history.append((self.world.now, copy.deepcopy(self.data)))
        self.history = [(t, d) for t, d in self.history if t >= self.world.now - 10.0]

    def restart(self, down_for: float, *, failover_lag: float | None = None) -> None:
        """Every backend ends; with ``failover_lag`` a standby that lagged takes over: the
        last ``lag`` seconds of commits are lost and the timeline goes up."""
        for b in list(self.backends.values()):
            self.end(b, "server restart")
        self.locks.clear()
        self.key_share.clear()
        if failover_lag is not None:
            self.timeline += 1
            keep = [d for t, d in self.history if t <= self.world.now - failover_lag]
            if keep:
                self.data = copy.deepcopy(keep[-1])
        self.down_until = self.world.now + down_for

    # -- helpers for statements ------------------------------------------------------

    def lease_key(self, name: str) -> str:
        return f"lease:{name}"

    def try_lock(self, b: Backend, key: str) -> bool:
        held = self.locks.get(key)
        if held is None:
            self.locks[key] = (b.pid, 1)
            return True
        pid, count = held
        if pid != b.pid:
            return False
        if key.startswith("lease:"):
            raise self.violate("S5", f"re-entrant grant of {key} on backend {pid}")
        self.locks[key] = (pid, count + 1)
        return True

    def unlock(self, b: Backend, key: str) -> bool:
        held = self.locks.get(key)
        if held is None or held[0] != b.pid:
            return False
        if held[1] > 1:
            self.locks[key] = (held[0], held[1] - 1)
        else:
            del self.locks[key]
            self._lock_freed(key)
        return True

    def holder_pid(self, key: str) -> int | None:
        held = self.locks.get(key)
        return held[0] if held else None

    def live_view(self, me: str, live_s: float) -> list[Replica]:
        """leasectl_live_replicas(me, live_s)."""
        now = self.db_now()
        out = []
        for rid, r in sorted(self.data.replicas.items()):
            if r.stopped_at is not None or not r.may_lead or r.last_seen < now - live_s:
                continue
            connected = r.standby or (
                r.backend_pid is not None
                and r.backend_pid in self.backends
                and self.backends[r.backend_pid].alive
            )
            if not connected and rid != me:
                continue
            out.append(
                Replica(
                    rid,
                    frozenset(r.campaigns_for),
                    frozenset(r.preferred_for),
                    frozenset(r.wedged),
                    now - r.connected_at,
                    tuple(r.labels),
                )
            )
        return out

    def bump(self, b: Backend, names: Sequence[str], replica: str) -> list[tuple[str, int]]:
        if any(self.key_share.get(n) for n in names):
            raise RowLockTimeout("lock connection: waited too long for a row lock")
        floor = (self.timeline - 1) << 32 if self.epoch_floor else 0
        out = []
        for name in names:
            row = self.data.leases.get(name)
            epoch = max(row.epoch + 1 if row else 1, floor, 1)
            prev = self.issued.get(name, 0)
            if epoch <= prev:
                raise self.violate("S3", f"lease {name}: epoch {epoch} issued again (had {prev})")
            self.issued[name] = epoch
            now = self.db_now()
            self.data.leases[name] = LeaseRow(epoch, 0, replica, b.pid, now, now)
            self.stamps.setdefault(b.pid, []).append(self.world.now)  # S4: real time
            self.events.append((now, "acquired", name, epoch, replica))
            out.append((name, epoch))
        return out

    def renewed_age(self, name: str, holder_pid: int | None) -> float | None:
        row = self.data.leases.get(name)
        if row is None:
            return None
        renewed = row.renewed_at
        r = self.data.replicas.get(row.holder)
        if r is not None and r.backend_pid == holder_pid and holder_pid is not None:
            renewed = max(renewed, r.last_seen)
        return self.db_now() - renewed

    def register(
        self,
        b: Backend | None,
        replica: str,
        ident: dict[str, Any],
        *,
        standby: bool,
        live_s: float,
    ) -> ReplicaRow | None:
        now = self.db_now()
        old = self.data.replicas.get(replica)
        same = old is not None and (old.host, old.pid) == (ident["host"], ident["pid"])
        if (
            old is not None
            and not same
            and old.stopped_at is None
            and old.last_seen >= now - live_s
        ):
            other_alive = old.standby or (
                old.backend_pid is not None
                and old.backend_pid in self.backends
                and self.backends[old.backend_pid].alive
                and (b is None or old.backend_pid != b.pid)
            )
            if other_alive:
                return None
        row = ReplicaRow(
            ident["host"],
            ident["pid"],
            None if b is None else b.pid,
            now,
            list(ident["campaigns_for"]),
            list(ident["preferred_for"]),
            list(ident["labels"]),
            old.connected_at if (old is not None and standby and old.standby and same) else now,
            may_lead=ident["may_lead"],
            standby=standby,
            wedged=list(old.wedged) if old and same else [],
            drain_at=old.drain_at if old and same else None,
            drain_cooldown=old.drain_cooldown if old and same else None,
        )
        self.data.replicas[replica] = row
        return row


def _drain(row: ReplicaRow, now: float) -> Drain | None:
    if row.drain_at is None:
        return None
    return Drain(now - row.drain_at, row.drain_cooldown)


class Conn:
    """A client connection: each statement is a round trip over its link."""

    def __init__(
        self, server: Server, proc: Proc, kind: str, app: str, link: Link, client_timeout: float
    ) -> None:
        self.server = server
        self.world = server.world
        self.proc = proc
        self.link = link
        self.client_timeout = client_timeout
        self.closed = False
        self.b = self._open(kind, app)

    def _open(self, kind: str, app: str) -> Backend:
        self._traverse()
        b = self.server.connect(self.proc, kind, app, self.link)
        self._hop()
        return b

    def _hop(self) -> None:
        """One way over the link: latency, sometimes a clog."""
        rng = self.world.rng
        d = rng.expovariate(1.0 / self.link.latency) if self.link.latency > 0 else 0.0
        if self.link.clog_p and rng.random() < self.link.clog_p:
            d += rng.uniform(0.2, 2.0)
        self.world.sleep(d)

    def _traverse(self) -> None:
        """Wait for a partitioned link to heal, or fail after the client's TCP timeout."""
        if self.link.up(self.world.now):
            return
        give_up = self.world.now + self.client_timeout
        while not self.link.up(self.world.now):
            if self.world.now >= give_up:
                self.closed = True
                raise DatabaseUnavailable("connection lost: timed out (partition)")
            w = Waiter(self.world)
            self.link.waiters.append(w)
            self.world.park(w, min(give_up, self.link.down_until))

    def run(self, fn: Callable[[Backend], T]) -> T:
        """One statement: there, executed atomically, back."""
        if self.closed:
            raise DatabaseUnavailable("connection lost: already closed")
        self._traverse()
        self._hop()
        self._traverse()
        b = self.b
        if not b.alive or not self.server.up():
            self.closed = True
            raise DatabaseUnavailable("connection lost: server closed the connection")
        b.last_packet = self.world.now
        result = fn(b)
        self._hop()
        self._traverse()
        return result

    def wait(self, timeout: float, wake: SimWaker | None) -> list[str]:
        """Wait for a NOTIFY (already delivered), EOF, a wake-up or the timeout."""
        b = self.b
        if b.inbox:
            out, b.inbox = b.inbox, []
            return out
        if self.closed:
            raise DatabaseUnavailable("connection lost: already closed")
        if not b.alive and self.link.up(self.world.now):
            self.closed = True
            raise DatabaseUnavailable("connection lost: server closed the connection")
        if timeout <= 0 or (wake is not None and wake.ready):
            return []
        w = Waiter(self.world)
        b.waiters.append(w)
        if wake is not None:
            wake.waiters.append(w)
        self.world.park(w, self.world.now + timeout)
        if w in b.waiters:
            b.waiters.remove(w)
        out, b.inbox = b.inbox, []
        if not out and not b.alive and self.link.up(self.world.now):
            self.closed = True
            raise DatabaseUnavailable("connection lost: server closed the connection")
        return out

    def close(self) -> None:
        if self.closed and not self.b.alive:
            return
        self.closed = True
        if self.proc.dead:
            return
        b = self.b
        if self.link.up(self.world.now):
            self.server.end(b, "client closed")
        else:  # the server learns at D_srv (partition_started) or when the link heals
            self.server.closed_clients.add(b.pid)


class SimLockSession:
    """:class:`leasectl.locks.LeaseSession` against the simulated server."""

    def __init__(self, conn: Conn, *, tcp: TcpBound | None, wakers: dict[int, SimWaker]) -> None:
        self.conn = conn
        self.server = conn.server
        self._tcp = tcp
        self._wakers = wakers

    @property
    def tcp(self) -> TcpBound | None:
        return self._tcp

    @property
    def via_pooler(self) -> bool:
        return False

    @property
    def backend_pid(self) -> int:
        return self.conn.b.pid

    def listen(self) -> None:
        self.conn.run(lambda b: b.listening.add(RELEASED))

    def listen_control(self) -> None:
        self.conn.run(lambda b: b.listening.add(CONTROL))

    def hold_replica(self, replica: str) -> bool:
        return self.conn.run(lambda b: self.server.try_lock(b, f"replica:{replica}"))

    def register_replica(
        self,
        replica: str,
        *,
        host: str,
        pid: int,
        version: str,
        may_lead: bool,
        loops: list[str],
        labels: Sequence[str] = (),
        campaigns_for: Sequence[str] = (),
        preferred_for: Sequence[str] = (),
        declared_leases: Sequence[str] = (),
    ) -> Registered | None:
        ident = {
            "host": host,
            "pid": pid,
            "may_lead": may_lead,
            "labels": labels,
            "campaigns_for": campaigns_for,
            "preferred_for": preferred_for,
        }

        def go(b: Backend) -> Registered | None:
            row = self.server.register(b, replica, ident, standby=False, live_s=5.0)
            if row is None:
                return None
            return Registered(_drain(row, self.server.db_now()))

        return self.conn.run(go)

    def refused(self, replica: str) -> ConfigError:
        return id_in_use(replica, None)

    def replica_candidacy(
        self, replica: str, campaigns_for: Sequence[str], preferred_for: Sequence[str]
    ) -> None:
        def go(b: Backend) -> None:
            row = self.server.data.replicas.get(replica)
            if row is not None:
                row.campaigns_for, row.preferred_for = list(campaigns_for), list(preferred_for)

        self.conn.run(go)

    def replica_stopped(self, replica: str) -> None:
        def go(b: Backend) -> None:
            row = self.server.data.replicas.get(replica)
            if row is not None:
                row.stopped_at = row.last_seen = self.server.db_now()
            self.server.notify(CONTROL, gone_payload(replica, "stop"))

        self.conn.run(go)

    def replica_wedged(self, replica: str, loops: Sequence[str]) -> None:
        def go(b: Backend) -> None:
            row = self.server.data.replicas.get(replica)
            if row is not None:
                row.wedged = list(loops)

        self.conn.run(go)

    def key_collision(self, names: Sequence[str]) -> tuple[str, str, int] | None:
        return self.conn.run(lambda b: None)

    def announce(self, payload: str) -> None:
        self.conn.run(lambda b: self.server.notify(CONTROL, payload))

    def wait_notify(self, timeout: float, wake: int | None = None) -> list[str]:
        return self.conn.wait(timeout, self._wakers.get(wake) if wake is not None else None)

    def campaign(self, names: Sequence[str], watch: Sequence[str] = ()) -> list[Contender]:
        srv = self.server

        def go(b: Backend) -> list[Contender]:
            got = {n for n in names if srv.try_lock(b, srv.lease_key(n))}
            out = []
            for n in [*names, *[w for w in watch if w not in names]]:
                row = srv.data.leases.get(n)
                hp = srv.holder_pid(srv.lease_key(n))
                if hp == b.pid:
                    hp = None  # pg_locks excludes our own backend
                gone = (
                    hp is None
                    and row is not None
                    and row.released_at is None
                    and row.holder_pid not in srv.backends
                )
                out.append(
                    Contender(
                        n,
                        n in got,
                        srv.renewed_age(n, hp),
                        hp,
                        row.holder_pid if row else None,
                        row.holder if row else None,
                        gone,
                    )
                )
            return out

        return self.conn.run(go)

    def bump_epoch(self, names: Sequence[str], replica: str, reason: str) -> list[tuple[str, int]]:
        return self.conn.run(lambda b: self.server.bump(b, names, replica))

    def heartbeat(
        self,
        names: Sequence[str],
        epochs: Sequence[int],
        replica: str,
        *,
        live_s: float | None = None,
    ) -> Heartbeat:
        srv = self.server

        def go(b: Backend) -> Heartbeat:
            unproven = []
            for name, epoch in zip(names, epochs, strict=True):
                row = srv.data.leases.get(name)
                mine = srv.holder_pid(srv.lease_key(name)) == b.pid
                if not (mine and row and row.epoch == epoch and row.holder == replica):
                    unproven.append(name)
            r = srv.data.replicas.get(replica)
            if r is not None:
                r.last_seen = srv.db_now()
                r.backend_pid = b.pid
            srv.stamps.setdefault(b.pid, []).append(srv.world.now)
            view = srv.live_view(replica, live_s) if live_s is not None else None
            return Heartbeat(False, unproven, view)

        return self.conn.run(go)

    def hand_over(
        self,
        names: Sequence[str],
        epochs: Sequence[int],
        replica: str,
        reason: str,
        *,
        leaving: bool = False,
        announce: str | None = None,
    ) -> set[str]:
        srv = self.server

        def go(b: Backend) -> set[str]:
            now = srv.db_now()
            for name, epoch in zip(names, epochs, strict=True):
                row = srv.data.leases.get(name)
                if row and row.epoch == epoch and row.holder == replica:
                    row.released_at = now
                srv.events.append((now, "released", name, epoch, replica))
            if announce is not None:
                srv.notify(CONTROL, announce)
            if leaving:
                r = srv.data.replicas.get(replica)
                if r is not None:
                    r.stopped_at = r.last_seen = now
                srv.notify(CONTROL, gone_payload(replica, "stop"))
            return self._unlock(b, names, notify=True)

        if not names:
            if leaving:
                self.replica_stopped(replica)
            return set()
        return self.conn.run(go)

    def _unlock(self, b: Backend, names: Iterable[str], *, notify: bool) -> set[str]:
        out = set()
        for n in names:
            if self.server.unlock(b, self.server.lease_key(n)):
                out.add(n)
                if notify:
                    self.server.notify(RELEASED, n)
        return out

    def release(self, names: Iterable[str], *, notify: bool = True) -> set[str]:
        names = list(names)
        return self.conn.run(lambda b: self._unlock(b, names, notify=notify))

    def evict(self, lease: str, pid: int, *, replica: str, reason: str) -> None:
        self.conn.run(lambda b: self.server.evict(lease, pid, replica))

    def close(self) -> None:
        self.conn.close()


class SimWatchSession:
    """:class:`leasectl.locks.WatchSession`: waits on a peer's liveness lock."""

    def __init__(self, conn: Conn, lock_timeout: float) -> None:
        self.conn = conn
        self.server = conn.server
        self.lock_timeout = lock_timeout
        self._cancel: Waiter | None = None

    @property
    def backend_pid(self) -> int:
        return self.conn.b.pid

    def watch(self, replica: str, why: str = "session_ended") -> bool | None:
        key = f"replica:{replica}"
        srv = self.server
        world = srv.world
        conn = self.conn
        if conn.closed:
            raise DatabaseUnavailable("watch connection lost: already closed")
        conn._traverse()
        conn._hop()
        b = conn.b
        if not b.alive or not srv.up():
            conn.closed = True
            raise DatabaseUnavailable("watch connection lost: server closed the connection")
        b.last_packet = world.now
        if srv.holder_pid(key) is None:
            conn._hop()
            return False
        deadline = world.now + self.lock_timeout
        ended = False
        while True:
            w = Waiter(world)
            b.waiters.append(w)
            self._cancel = w
            got = world.park(w, deadline)
            self._cancel = None
            if w in b.waiters:
                b.waiters.remove(w)
            if not b.alive:
                break
            if srv.holder_pid(key) is None:
                ended = True
                srv.notify(CONTROL, gone_payload(replica, why))
                break
            if got is TIMEOUT or got == "cancel" or world.now >= deadline:
                break
        conn._hop()
        conn._traverse()
        if not b.alive:
            conn.closed = True
            raise DatabaseUnavailable("watch connection lost: server closed the connection")
        return True if ended else None

    def cancel(self) -> None:
        w = self._cancel
        if w is not None:
            w.fire("cancel")

    def close(self) -> None:
        self.conn.close()


class SimStandbySession:
    """:class:`leasectl.standby.StandbySession`: one poll statement through the pooler."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.server = conn.server

    def poll(
        self,
        replica: str,
        *,
        host: str,
        pid: int,
        version: str,
        may_lead: bool,
        loops: Sequence[str],
        labels: Sequence[str],
        campaigns_for: Sequence[str],
        preferred_for: Sequence[str],
        names: Sequence[str],
        live_s: float,
        seen: str = "",
        want_view: bool = True,
    ) -> StandbyView | None:
        srv = self.server
        ident = {
            "host": host,
            "pid": pid,
            "may_lead": may_lead,
            "labels": labels,
            "campaigns_for": campaigns_for,
            "preferred_for": preferred_for,
        }

        def go(b: Backend) -> StandbyView | None:
            row = srv.register(None, replica, ident, standby=True, live_s=live_s)
            if row is None:
                return None
            now = srv.db_now()
            view = srv.live_view(replica, live_s)
            digest = hashlib.sha256(
                json.dumps(
                    sorted(
                        [
                            r.id,
                            sorted(r.campaigns_for),
                            sorted(r.preferred_for),
                            sorted(r.wedged),
                            list(r.labels),
                        ]
                        for r in view
                    )
                ).encode()
            ).hexdigest()[:16]
            # held: the row names a lock session that has not released it and still exists
            holders: dict[str, str | None] = {}
            crashed: set[str] = set()
            for n in names:
                lr = srv.data.leases.get(n)
                if lr is None:
                    holders[n] = None
                    continue
                locked = lr.released_at is None and lr.holder_pid in srv.backends
                holders[n] = lr.holder if locked else None
                if lr.released_at is None and lr.renewed_at > now - live_s and not locked:
                    crashed.add(lr.holder)
            for c in sorted(crashed):  # a crash seen by a standby: told to every lock session
                srv.notify(
                    CONTROL,
                    json.dumps(
                        {"action": "replica_gone", "replica": c, "why": "crash seen by a standby"}
                    ),
                )
            send = want_view and digest != seen
            return StandbyView(
                view if send else None, holders, digest if send else seen, _drain(row, now)
            )

        return self.conn.run(go)

    def key_collision(self, names: Sequence[str]) -> tuple[str, str, int] | None:
        return self.conn.run(lambda b: None)

    def refused(self, replica: str) -> ConfigError:
        return id_in_use(replica, None)

    def stopped(self, replica: str) -> None:
        def go(b: Backend) -> None:
            r = self.server.data.replicas.get(replica)
            if r is not None and r.standby:
                r.stopped_at = r.last_seen = self.server.db_now()

        self.conn.run(go)

    def close(self) -> None:
        self.conn.close()


class Fenced:
    """A loop's work connection: the fenced write of a tick (``Lease.guard`` + a write)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.server = conn.server

    def write(self, lease: str, epoch: int, writer: str) -> bool:
        """``leasectl_fence`` (FOR KEY SHARE until commit), then the write commits."""
        srv = self.server

        def fence(b: Backend) -> bool:
            row = srv.data.leases.get(lease)
            ok = row is not None and row.epoch == epoch
            if ok or not srv.fence_check:
                srv.key_share.setdefault(lease, set()).add(b.pid)
                # idle_in_transaction_session_timeout ends a transaction left open
                srv.world.at(srv.world.now + srv.idle_tx_timeout, lambda: idle(b))
                return True
            return False

        def idle(b: Backend) -> None:
            if b.pid in srv.key_share.get(lease, set()):
                srv.end(b, "idle_in_transaction_session_timeout")

        if not self.conn.run(fence):
            return False

        def commit(b: Backend) -> None:
            srv.key_share.get(lease, set()).discard(b.pid)
            row = srv.data.leases.get(lease)
            if row is None or row.epoch != epoch:
                raise srv.violate(
                    "S2",
                    f"{writer}'s fenced write to {lease} committed under epoch {epoch}, "
                    f"current {row.epoch if row else None}",
                )

        self.conn.run(commit)
        return True

    def close(self) -> None:
        self.conn.close()
