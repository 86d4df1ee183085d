"""Session advisory locks held on ONE dedicated connection per replica.

A :class:`LockSession` owns an autocommit connection that is never taken from the work pool.
Every lease of the replica is a session-level advisory lock on that connection, in the
two-int form ``(namespace, key)``. Taking many locks costs one round trip; nothing ever blocks
inside ``pg_advisory_lock`` on it: waiting is try-lock polling with jitter plus a LISTEN
wake-up, so the lock connection cannot deadlock with ``CREATE INDEX CONCURRENTLY`` or die on
``lock_timeout``, and it stays free for the heartbeat.

The one server-side wait lives on a second connection, :class:`WatchSession`: it waits for
one peer's lock session to end (the peer's *liveness lock*, :meth:`LockSession.hold_replica`)
in a one-statement transaction bounded by its own ``lock_timeout``, and NOTIFYs every replica
when it ends, so a crashed holder's leases are taken in milliseconds rather than at the next
poll (docs/safety.md, "The watch connection").

Session advisory locks survive the transaction that took them and vanish with the session.
That is exactly the property a lease needs: when the holder's process or link dies, the
server frees its locks, and nothing else does.

Every statement on the lock connection is a named method of :class:`LockSession`, and every
psycopg error it raises is translated here, once (:func:`translate_error`): the lease manager
deals in :class:`DatabaseUnavailable` and its subclasses only. :class:`LeaseSession` is the
interface the manager needs; tests drive the manager with an in-memory implementation of it.

Example::

    with LockSession.connect(dsn, settings.database, "leasectl/replica-a") as session:
        got = session.try_acquire(["digest", "crl_generation"])
        ...
        session.release(got)
"""

from __future__ import annotations

import random
import secrets
import selectors
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Self

import psycopg

from leasectl import control, sql
from leasectl.db import is_unix_socket, lock_connect
from leasectl.errors import (
    ConfigError,
    DatabaseUnavailable,
    LeasectlError,
    LeaseTimeout,
    NotMigrated,
    RowLockTimeout,
    UnsupportedTopology,
)
from leasectl.keys import KeyRegistry, as_oid, find_collision, from_oid, int4_hash, namespace_for
from leasectl.placement import Replica
from leasectl.settings import DatabaseSettings

Q = sql.load("locks")
L = sql.load("leases")  # the lease-table statements, run on the lock connection

_POOLER = "the lock connection goes through a transaction-mode pooler: "
_POOLER_FIX = (
    ". Session advisory locks need a direct or session-pooled connection; point "
    "database.lock_dsn (LEASECTL_LOCK_DSN) at PostgreSQL directly or at a "
    "session-mode pool (PgBouncer pool_mode=session)."
)


def replica_namespace(namespace: str | int) -> int:
    """The key space of the replicas' liveness locks: derived from the lease namespace, so
    deployments separated by namespace watch only their own replicas, and never a lease key."""
    return int4_hash(f"leasectl:replicas:{namespace_for(namespace)}")


def replica_key(replica: str) -> int:
    """The liveness-lock key of a replica id (in :func:`replica_namespace`)."""
    return int4_hash(replica)


def gone_payload(replica: str, why: str) -> str:
    """The control-channel message that says ``replica``'s lock session ended or is ending."""
    return control.encode(control.ReplicaGone(replica, why))


class Drain(NamedTuple):
    """A ``step-down --replica`` kept in the replica's row (for one that had no lock session
    to hear its NOTIFY): how long ago it was asked, and the cooldown asked (None: the
    replica's own ``leases.step_down_cooldown``)."""

    age_s: float
    cooldown: float | None


class Registered(NamedTuple):
    """A lock session's replica row taken (``register_replica``), with a drain asked of this
    process while it had no lock session (None: none)."""

    drain: Drain | None


#: How recently a replica id's other process must have heartbeated to keep its id: a lock
#: session registering retries for this long (+1 s) before it reports the id as in use.
REGISTER_LIVE_S = 5.0


@dataclass(frozen=True)
class Holder:
    """The backend holding a lock, from ``pg_locks`` joined with ``pg_stat_activity``."""

    name: str
    pid: int
    application_name: str | None
    client_addr: str | None
    connected_s: float | None

    def describe(self) -> str:
        addr = self.client_addr or "local socket"
        since = f", connected {self.connected_s:.0f}s" if self.connected_s is not None else ""
        return f"backend pid {self.pid} ({self.application_name or '?'} from {addr}{since})"


@dataclass(frozen=True)
class TcpBound:
    """TCP settings in force on the lock connection and the D_srv they imply (None: Unix socket)."""

    idle: int
    interval: int
    count: int
    user_timeout_ms: int
    unix_socket: bool

    @property
    def d_srv(self) -> float | None:
        """Earliest time (s) after the holder's last packet at which the server may drop it.

        Linux aborts an idle keepalive connection after ``count`` unanswered probes, unless
        ``TCP_USER_TIMEOUT`` is set, in which case it aborts at the first probe tick past the
        user timeout (and unacknowledged data aborts after the user timeout as well).
        """
        if self.unix_socket:
            return None
        if self.idle <= 0:
            return float(7200 + 75 * 9)  # kernel defaults: safe but slow
        if self.user_timeout_ms > 0:
            return max(self.user_timeout_ms / 1000.0, float(self.idle + self.interval))
        return float(self.idle + self.interval * self.count)


class Contender(NamedTuple):
    """One wanted lease after a campaign: got it, or who holds it and how stale they are."""

    name: str
    got: bool
    renewed_age_s: float | None  # the holder's last renewal, DB clock (None: never)
    holder_pid: int | None  # the backend holding the lock (None: free again, or ours)
    row_pid: int | None  # the lock session the lease row names
    row_holder: str | None  # the replica the lease row names
    holder_gone: bool = False  # free, never released, and row_holder's lock session is gone


class Heartbeat(NamedTuple):
    """What one heartbeat proved (and, with spread placement, who is live)."""

    in_recovery: bool
    unproven: list[str]  # held names whose lock or epoch is no longer ours
    replicas: list[Replica] | None = None  # live replicas; None: not asked (pack placement)


class LeaseSession(Protocol):
    """The lock connection as the lease manager uses it: one method per statement.

    Implementations raise only :class:`DatabaseUnavailable` (and subclasses) for database
    trouble. ``leasectl.locks.LockSession`` is the real one.
    """

    @property
    def tcp(self) -> TcpBound | None: ...
    @property
    def via_pooler(self) -> bool: ...
    @property
    def backend_pid(self) -> int: ...

    def listen(self) -> None: ...
    def listen_control(self) -> None: ...
    def hold_replica(self, replica: str) -> bool: ...
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
    ) -> Registered | None: ...
    def refused(self, replica: str) -> ConfigError: ...
    def replica_candidacy(
        self, replica: str, campaigns_for: Sequence[str], preferred_for: Sequence[str]
    ) -> None: ...
    def replica_stopped(self, replica: str) -> None: ...
    def replica_wedged(self, replica: str, loops: Sequence[str]) -> None: ...
    def key_collision(self, names: Sequence[str]) -> tuple[str, str, int] | None: ...
    def announce(self, payload: str) -> None: ...
    def wait_notify(self, timeout: float, wake: int | None = None) -> list[str]: ...
    def campaign(self, names: Sequence[str], watch: Sequence[str] = ()) -> list[Contender]: ...
    def bump_epoch(
        self, names: Sequence[str], replica: str, reason: str
    ) -> list[tuple[str, int]]: ...
    def heartbeat(
        self,
        names: Sequence[str],
        epochs: Sequence[int],
        replica: str,
        *,
        live_s: float | None = None,
    ) -> Heartbeat: ...
    def hand_over(
        self,
        names: Sequence[str],
        epochs: Sequence[int],
        replica: str,
        reason: str,
        *,
        leaving: bool = False,
        announce: str | None = None,
    ) -> set[str]: ...
    def release(self, names: Iterable[str], *, notify: bool = True) -> set[str]: ...
    def evict(self, lease: str, pid: int, *, replica: str, reason: str) -> None: ...
    def close(self) -> None: ...


class PeerWatch(Protocol):
    """The watch connection as the lease manager uses it (:class:`WatchSession` is the real
    one; the simulator has its own)."""

    def watch(self, replica: str, why: str = "session_ended") -> bool | None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


def id_in_use(replica: str, row: Sequence[Any] | None) -> ConfigError:
    """The error for a replica id a live process already uses; ``row``: leases.sql's
    ``replica_row`` for it (None when it vanished meanwhile)."""
    if row is None:
        who = "another process"
    else:
        host, pid, age, backend_pid = row
        session = f"lock session {backend_pid}" if backend_pid is not None else "standby"
        who = f"host {host}, pid {pid}, {session}, last seen {age:.1f}s ago"
    return ConfigError(
        f"replica.id / --replica-id: {replica!r} is already used by a live replica ({who}); "
        "give each replica its own id (or leave it empty for host-pid-random)"
    )


def translate_error(exc: psycopg.Error, what: str = "lock connection") -> LeasectlError:
    """The leasectl error for a psycopg error on ``what``; the one place this mapping lives.

    A lock wait past ``lock_timeout`` is :class:`RowLockTimeout`; a missing leasectl table is
    :class:`NotMigrated`; anything else (connection lost, server shutting down, a standby
    refusing writes) is :class:`DatabaseUnavailable`: the manager drops its leases and
    reconnects, as it must for any failure it cannot prove harmless.
    """
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return RowLockTimeout(f"{what}: waited too long for a row lock: {first}")
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return NotMigrated(f"{what}: the leasectl tables do not exist ({first}); run migrations")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailable(f"{what} lost: {exc}")
    return DatabaseUnavailable(f"{what}: statement failed: {first}")


class LockSession:
    """One dedicated lock connection and the advisory locks it holds."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        namespace: str | int = "leasectl",
        registry: KeyRegistry | None = None,
        unix_socket: bool = False,
    ) -> None:
        self.conn = conn
        self.namespace = namespace_for(namespace)
        self.registry = registry or KeyRegistry()
        self.unix_socket = unix_socket
        self.backend_pid: int = conn.info.backend_pid  # replaced by the server's own view
        self.tcp: TcpBound | None = None
        self._probe = ""
        #: True when something between us and PostgreSQL (a session-mode pooler) answered the
        #: connection: the server-side TCP settings then bound its link, not ours.
        self.via_pooler = False
        self._selector: selectors.BaseSelector | None = None
        self._wake_fd: int | None = None

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        dsn: str,
        db: DatabaseSettings,
        application_name: str,
        *,
        namespace: str | int = "leasectl",
        registry: KeyRegistry | None = None,
        check_pooler: bool = True,
        lock_timeout_ms: int = 5000,
    ) -> Self:
        """Open, configure and verify a lock connection.

        :raises UnsupportedTopology: the connection goes through a transaction pooler or
            reaches a standby.
        """
        conn = lock_connect(dsn, db, application_name)
        session = cls(conn, namespace=namespace, registry=registry, unix_socket=is_unix_socket(dsn))
        try:
            session._setup(db, lock_timeout_ms)
            if check_pooler:
                session._check_pooler(dsn, db, application_name)
        except BaseException:
            conn.close()
            raise
        return session

    def _setup(self, db: DatabaseSettings, lock_timeout_ms: int) -> None:
        self._probe = secrets.token_hex(8)
        params = {
            "lock_timeout": f"{lock_timeout_ms}ms",
            "idle": str(db.tcp_keepalives_idle),
            "interval": str(db.tcp_keepalives_interval),
            "count": str(db.tcp_keepalives_count),
            "user_timeout": str(db.tcp_user_timeout_ms),
            "probe": self._probe,
        }
        try:
            setup = self.conn.execute(Q["session_setup"], params).fetchone()
            row = self.conn.execute(Q["session_readback"]).fetchone()
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"lock connection setup failed: {exc}") from exc
        except psycopg.Error as exc:
            raise translate_error(exc, "lock connection setup") from exc
        assert setup is not None and row is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        # The pid the client was told at connect time is a pooler's invention when one sits
        # in between; the server's own pg_backend_pid() is the truth.
        self.backend_pid = int(setup[0])
        self.via_pooler = self.backend_pid != self.conn.info.backend_pid
        pid, got_probe, idle, interval, count, user_timeout, in_recovery = row
        if in_recovery:
            raise UnsupportedTopology(
                "the lock connection reached a server in recovery (a standby); advisory "
                "locks must be taken on the primary: point database.lock_dsn at it"
            )
        if pid != self.backend_pid or got_probe != self._probe:
            raise UnsupportedTopology(
                _POOLER
                + (
                    f"the backend pid changed between transactions ({self.backend_pid} -> {pid})"
                    if pid != self.backend_pid
                    else "a session SET did not persist to the next transaction"
                )
                + _POOLER_FIX
            )
        self.tcp = TcpBound(idle, interval, count, user_timeout, self.unix_socket)

    def _check_pooler(self, dsn: str, db: DatabaseSettings, application_name: str) -> None:
        """While a second client holds a transaction open, our session must stay ours.

        Through a transaction pooler it does not: the pooler hands the idle server
        connection we just used to the next transaction, whoever's it is, and sends our
        next statement to another server connection.
        """
        other = lock_connect(dsn, db, application_name + "/pooler-probe")
        try:
            other.autocommit = False
            row = other.execute(Q["probe_other"]).fetchone()
            mine = self.conn.execute(Q["session_readback"]).fetchone()
            other.rollback()
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"lock connection setup failed: {exc}") from exc
        except psycopg.Error as exc:
            raise translate_error(exc, "lock connection setup") from exc
        finally:
            other.close()
        assert row is not None and mine is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        other_pid, other_probe = row
        problem = None
        if other_pid == self.backend_pid or other_probe == self._probe:
            problem = (
                f"another client connection was served by our backend (pid {self.backend_pid})"
            )
        elif mine[0] != self.backend_pid or mine[1] != self._probe:
            problem = (
                f"our session moved to another backend (pid {self.backend_pid} -> {mine[0]}) "
                "while another client held a transaction open"
            )
        if problem is not None:
            raise UnsupportedTopology(_POOLER + problem + _POOLER_FIX)

    # -- locks ----------------------------------------------------------------------------

    def key(self, name: str) -> int:
        return self.registry.register(name)

    def try_acquire(self, names: Iterable[str]) -> set[str]:
        """Try to take every named lock in one round trip; return the names obtained.

        Callers must not pass names they already hold: session advisory locks are re-entrant
        and a second grant would need a second unlock.
        """
        names = list(names)
        if not names:
            return set()
        keys = [self.key(n) for n in names]
        by_key = dict(zip(keys, names, strict=True))
        rows = self._exec(Q["try_acquire"], {"ns": self.namespace, "keys": keys}).fetchall()
        return {by_key[k] for k, got in rows if got}

    def release(self, names: Iterable[str], *, notify: bool = True) -> set[str]:
        """Release the named locks; NOTIFY waiters so they take over at once."""
        names = list(names)
        if not names:
            return set()
        params = {"ns": self.namespace, "names": names, "keys": [self.key(n) for n in names]}
        rows = self._exec(Q["release"], {**params, "notify": notify}).fetchall()
        return {r[0] for r in rows}

    def held(self) -> set[str]:
        """Names whose locks this backend really holds, according to ``pg_locks``."""
        rows = self._exec(Q["held"], {"ns_oid": as_oid(self.namespace)}).fetchall()
        out = set()
        for (key_oid,) in rows:
            name = self.registry.name(from_oid(key_oid))
            if name is not None:
                out.add(name)
        return out

    def holders(self, names: Iterable[str]) -> dict[str, Holder]:
        """Who holds each of the named locks (absent: free)."""
        names = list(names)
        oids = {as_oid(self.key(n)): n for n in names}
        params = {"ns_oid": as_oid(self.namespace), "key_oids": list(oids)}
        out: dict[str, Holder] = {}
        for key_oid, pid, app, addr, connected_s, _state in self._exec(
            Q["holders"], params
        ).fetchall():
            name = oids[key_oid]
            out[name] = Holder(name, pid, app, addr, connected_s)
        return out

    def listen(self) -> None:
        """Subscribe to release notifications (consumed with :meth:`wait_notify`)."""
        self._exec(Q["listen_released"], None)

    def wait_notify(self, timeout: float, wake: int | None = None) -> list[str]:
        """Wait up to ``timeout`` seconds for notifications; return their payloads.

        ``wake``: a descriptor that ends the wait when it becomes readable (the caller drains
        it). The wait is one ``select`` on the connection's socket and ``wake`` together, for
        the whole ``timeout``: an idle replica sleeps in the kernel until a notification, a
        command or its next deadline, and a stop request is seen at once.
        """
        try:
            # Notifications that arrived with a query's results wait in psycopg's backlog:
            # drain them (and anything readable) first; the socket would not show them.
            got = [n.payload for n in self.conn.notifies(timeout=0.0)]
            if got or timeout <= 0:
                return got
            if wake is None:
                return [
                    n.payload for n in self.conn.notifies(timeout=max(0.0, timeout), stop_after=1)
                ]
            sel = self._wait_selector(wake)
            ready = sel.select(timeout)
            if any(key.data == "conn" for key, _ in ready):
                return [n.payload for n in self.conn.notifies(timeout=0.0)]
            return []
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"lock connection lost: {exc}") from exc

    def _wait_selector(self, wake: int) -> selectors.BaseSelector:
        """One selector per session: the socket and the wake descriptor, registered once."""
        if self._selector is None:
            self._selector = selectors.DefaultSelector()
            self._selector.register(self.conn.fileno(), selectors.EVENT_READ, "conn")
        if self._wake_fd != wake:
            if self._wake_fd is not None:
                self._selector.unregister(self._wake_fd)
            self._selector.register(wake, selectors.EVENT_READ, "wake")
            self._wake_fd = wake
        return self._selector

    def wait_acquire(
        self,
        name: str,
        timeout: float,
        *,
        poll: float = 0.5,
        jitter: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Poll and listen until ``name`` is ours; :class:`LeaseTimeout` names the holder."""
        self.listen()
        deadline = clock() + timeout
        while True:
            if self.try_acquire([name]):
                return
            remaining = deadline - clock()
            if remaining <= 0:
                holder = self.holders([name]).get(name)
                raise LeaseTimeout(name, timeout, holder.describe() if holder else None)
            wait = min(remaining, poll * random.uniform(1 - jitter, 1 + jitter))  # noqa: S311 - jitter spreads timers; nothing secret depends on it
            self.wait_notify(wait)

    # -- the lease tables (statements in leases.sql) -----------------------------------------

    def listen_control(self) -> None:
        """Subscribe to operator commands (``leasectl step-down``) and replica departures,
        also via :meth:`wait_notify`."""
        self._exec(L["listen_control"], None)

    def hold_replica(self, replica: str) -> bool:
        """Take this replica's liveness lock on the lock connection (False: another session
        still holds it, e.g. a crashed predecessor's that the server has not ended yet).

        It lives exactly as long as this session, like the leases: a peer waiting on it
        (:class:`WatchSession`) learns the instant the session ends.
        """
        params = {"ns": replica_namespace(self.namespace), "key": replica_key(replica)}
        row = self._exec(Q["hold_replica"], params).fetchone()
        return bool(row and row[0])

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
        live_s: float = REGISTER_LIVE_S,
        declared_leases: Sequence[str] = (),
    ) -> Registered | None:
        """Announce this replica (and this lock session's backend pid) in ``leasectl_replicas``,
        with what placement ranks it by (its labels and the leases it campaigns for) and the
        leases its App declares (what ``leasectl status`` expects); the answer carries a
        ``step-down --replica`` asked of this process while it had no lock session.

        One attempt: None when the id belongs to another process that is live (its lock
        session exists and it heartbeated within ``live_s``). The caller retries for a while
        (a crashed predecessor's session can outlive it by a moment) and then reports
        :meth:`refused`; the lease manager does, on its runtime.
        """
        params = {
            "id": replica,
            "host": host,
            "pid": pid,
            "version": version,
            "may_lead": may_lead,
            "loops": loops,
            "labels": list(labels),
            "campaigns_for": list(campaigns_for),
            "preferred_for": list(preferred_for),
            "live_s": live_s,
            "declared_leases": list(declared_leases),
        }
        got = self._exec(L["register_replica"], params).fetchone()
        if got is None:
            return None
        _, drain_age, drain_cooldown = got
        drain = Drain(float(drain_age), drain_cooldown) if drain_age is not None else None
        return Registered(drain)

    def refused(self, replica: str) -> ConfigError:
        """The error for an id another live replica uses (after :meth:`register_replica`
        kept returning None)."""
        try:
            row = self._exec(L["replica_row"], {"id": replica}).fetchone()
        except DatabaseUnavailable:
            row = None
        return id_in_use(replica, row)

    def replica_candidacy(
        self, replica: str, campaigns_for: Sequence[str], preferred_for: Sequence[str]
    ) -> None:
        """Publish the leases this replica campaigns for (and is preferred for) now."""
        params = {
            "id": replica,
            "campaigns_for": list(campaigns_for),
            "preferred_for": list(preferred_for),
        }
        self._exec(L["replica_candidacy"], params)

    def replica_stopped(self, replica: str) -> None:
        """Mark the replica stopped and tell the peers it is leaving (one statement)."""
        self._exec(L["replica_stopped"], {"id": replica, "payload": gone_payload(replica, "stop")})

    def replica_wedged(self, replica: str, loops: Sequence[str]) -> None:
        """Record which loops' ticks are wedged on this replica (for ``leasectl status``)."""
        self._exec(L["replica_wedged"], {"id": replica, "loops": list(loops)})

    def announce(self, payload: str) -> None:
        """Tell every replica something on the control channel (a rebalance hand-over)."""
        self._exec(L["notify_control"], {"payload": payload})

    def key_collision(self, names: Sequence[str]) -> tuple[str, str, int] | None:
        """(a name elsewhere in the cluster, ours, the key) when both share one advisory key."""
        rows = self._exec(L["cluster_lease_names"], None).fetchall()
        return find_collision(names, [str(r[0]) for r in rows])

    def campaign(self, names: Sequence[str], watch: Sequence[str] = ()) -> list[Contender]:
        """Try-lock every name and report, in the same round trip, who holds the others.

        The try-lock is locks.sql's ``try_acquire`` (one definition); leases.sql's
        ``contenders`` runs right after it in one pipeline. ``watch``: names reported on
        but not tried (spread placement: not this replica's turn yet). Callers must not pass
        names they hold (see :meth:`try_acquire`).
        """
        names = list(names)
        everything = names + [n for n in watch if n not in names]
        if not everything:
            return []
        keys = [self.key(n) for n in names]
        all_keys = [self.key(n) for n in everything]
        try:
            with self.conn.pipeline():
                tried = (
                    self.conn.execute(Q["try_acquire"], {"ns": self.namespace, "keys": keys})
                    if keys
                    else None
                )
                report = self.conn.execute(
                    L["contenders"], {"ns": self.namespace, "names": everything, "keys": all_keys}
                )
            by_key = dict(zip(keys, names, strict=True))
            got = {by_key[key] for key, ok in tried.fetchall() if ok} if tried else set()
            rows = report.fetchall()
        except psycopg.Error as exc:
            raise translate_error(exc) from exc
        return [
            Contender(
                name, name in got, age, None if name in got else pid, row_pid, holder, bool(gone)
            )
            for name, age, pid, row_pid, holder, gone in rows
        ]

    def bump_epoch(self, names: Sequence[str], replica: str, reason: str) -> list[tuple[str, int]]:
        """Fence off every older holder of the (just locked) names: epoch + 1, recorded.

        :raises RowLockTimeout: the previous holder's fenced transactions kept the rows
            locked past ``lock_timeout``.
        """
        params = {
            "names": list(names),
            "keys": [self.key(n) for n in names],
            "replica": replica,
            "reason": reason,
        }
        return [(name, int(epoch)) for name, epoch in self._exec(L["bump_epoch"], params)]

    def heartbeat(
        self,
        names: Sequence[str],
        epochs: Sequence[int],
        replica: str,
        *,
        live_s: float | None = None,
    ) -> Heartbeat:
        """Prove the locks and epochs of ``names`` are ours and stamp the replica row.

        ``live_s``: also return the live replicas (seen within that many seconds) for
        placement, in the same statement; None skips that part.
        """
        params = {
            "ns": self.namespace,
            "names": list(names),
            "epochs": list(epochs),
            "replica": replica,
            "placement": live_s is not None,
            "live_s": live_s if live_s is not None else 0.0,
        }
        row = self._exec(L["heartbeat"], params).fetchone()
        assert row is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        replicas = [Replica.from_row(r) for r in row[2]] if live_s is not None else None
        return Heartbeat(bool(row[0]), list(row[1]), replicas)

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
        """Release held leases gracefully: record it, unlock, NOTIFY; one round trip.

        ``leaving``: the replica is stopping; the unlock then also marks it stopped and
        NOTIFYs ``replica_gone`` in the same transaction (``release_leaving``), so peers read
        "gone" and the releases in one batch and the next candidate of each lease takes it in
        its first campaign. ``announce``: a control message (a hand-over naming its
        receiver) sent in the same pipeline, committed before the unlock, so every peer reads
        it before the release's NOTIFY.
        """
        names = list(names)
        if not names:
            if leaving:
                self.replica_stopped(replica)
            return set()
        record = {"names": names, "epochs": list(epochs), "replica": replica, "reason": reason}
        unlock = {"ns": self.namespace, "names": names, "keys": [self.key(n) for n in names]}
        try:
            with self.conn.pipeline():
                self.conn.execute(L["record_release"], record)
                if announce is not None:
                    self.conn.execute(L["notify_control"], {"payload": announce})
                if leaving:
                    gone = {"id": replica, "payload": gone_payload(replica, "stop")}
                    released = self.conn.execute(L["release_leaving"], {**unlock, **gone})
                else:
                    released = self.conn.execute(Q["release"], {**unlock, "notify": True})
            return {r[0] for r in released.fetchall()}
        except psycopg.Error as exc:
            raise translate_error(exc) from exc

    def evict(self, lease: str, pid: int, *, replica: str, reason: str) -> None:
        """Terminate backend ``pid`` (a hung holder's lock session) and record why."""
        self._exec(L["evict"], {"pid": pid})
        event = {"lease": lease, "epoch": None, "replica": replica, "event": "evicted"}
        self._exec(L["record_event"], {**event, "reason": reason})

    def _exec(self, query: Any, params: Any) -> psycopg.Cursor[Any]:
        try:
            return self.conn.execute(query, params)
        except psycopg.Error as exc:
            raise translate_error(exc) from exc

    # -- lifetime -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return bool(self.conn.closed)

    def close(self) -> None:
        """Close the connection: the server frees every lock it held."""
        if self._selector is not None:
            self._selector.close()
            self._selector = None
            self._wake_fd = None
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def notify_control(conn: psycopg.Connection[Any], payload: str) -> None:
    """Send an operator command to every lock session (they LISTEN via ``listen_control``)."""
    try:
        conn.execute(L["notify_control"], {"payload": payload})
    except psycopg.Error as exc:
        raise translate_error(exc, "control channel") from exc


def request_drain(conn: psycopg.Connection[Any], replica: str, cooldown: float | None) -> None:
    """Keep a ``step-down --replica`` in the replica's row: a standby (``leases.standby:
    pooled``) has no lock session to hear the NOTIFY, and reads it at its next poll."""
    try:
        conn.execute(L["drain_replica"], {"id": replica, "cooldown": cooldown})
    except psycopg.Error as exc:
        raise translate_error(exc, "control channel") from exc


class WatchSession:
    """The watch connection: waits inside the server for one peer's lock session to end.

    A second, dedicated connection per replica (``application_name`` ``leasectl/<id>/watch``),
    never the lock connection: its statement blocks, and the lock connection must stay free
    to heartbeat. Each :meth:`watch` is one autocommit statement (``watch_replica`` in
    locks.sql) that waits on the peer's liveness lock under its own ``lock_timeout`` and, if
    the peer's session ends meanwhile, NOTIFYs every replica in the same transaction. It holds
    nothing between statements, and within one only a transaction-level lock and a snapshot,
    both for at most ``lock_timeout``: see docs/safety.md, "The watch connection".
    """

    def __init__(
        self, conn: psycopg.Connection[Any], *, namespace: str | int, lock_timeout_ms: int
    ) -> None:
        self.conn = conn
        self.replica_ns = replica_namespace(namespace)
        self.lock_timeout_ms = lock_timeout_ms

    @classmethod
    def connect(
        cls,
        dsn: str,
        db: DatabaseSettings,
        application_name: str,
        *,
        namespace: str | int = "leasectl",
        lock_timeout_ms: int = 2000,
    ) -> Self:
        conn = lock_connect(dsn, db, application_name)
        try:
            conn.execute(Q["watch_setup"])
        except psycopg.Error as exc:
            conn.close()
            raise translate_error(exc, "watch connection setup") from exc
        return cls(conn, namespace=namespace, lock_timeout_ms=lock_timeout_ms)

    @property
    def backend_pid(self) -> int:
        return int(self.conn.info.backend_pid)

    def watch(self, replica: str, why: str = "session_ended") -> bool | None:
        """Wait up to ``lock_timeout`` for ``replica``'s lock session to end.

        True: it ended while we waited, and every replica was told (``replica_gone`` on the
        control channel). False: its liveness lock was free at once (nobody to watch: not
        started yet, or already gone). None: the wait timed out or was cancelled (re-issue it).
        """
        params = {
            "lock_timeout": f"{self.lock_timeout_ms}ms",
            "ns": self.replica_ns,
            "key": replica_key(replica),
            "payload": gone_payload(replica, why),
        }
        try:
            row = self.conn.execute(Q["watch_replica"], params).fetchone()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            return None
        except psycopg.Error as exc:
            raise translate_error(exc, "watch connection") from exc
        return bool(row and row[0])

    def cancel(self) -> None:
        """Cancel a running :meth:`watch` (from another thread: a new target, or a stop)."""
        try:
            self.conn.cancel_safe(timeout=2.0)
        except psycopg.Error:
            pass  # the wait ends by itself within lock_timeout

    def close(self) -> None:
        self.conn.close()
