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
* on any database error drop every lease, close the connection, reconnect with backoff.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from leasectl._version import __version__
from leasectl.errors import (
    DatabaseUnavailable,
    LeasectlError,
    LeaseTimeout,
    RowLockTimeout,
    SafetyInequalityViolated,
)
from leasectl.keys import KeyRegistry
from leasectl.leases import Clock, Lease, LeaseEvent
from leasectl.locks import LeaseSession, LockSession, notify_control
from leasectl.settings import CoreSettings

log = logging.getLogger("leasectl.leases")

_WAIT_SLICE = 0.02  # seconds between checks of stop()/commands while idle on the socket


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
    suspended: set[str] = field(default_factory=set)  # not campaigned for: a wedged tick


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
        clock: Clock = time.monotonic,
        check_pooler: bool = True,
        session_factory: Callable[[], LeaseSession] | None = None,
    ) -> None:
        """``session_factory`` opens the lock connection; the default is
        :meth:`LockSession.connect` with these settings (tests pass an in-memory one)."""
        self.replica_id = replica_id
        self.settings = settings
        self.dsn = dsn
        self.lock_dsn = lock_dsn or dsn
        self.may_lead = may_lead
        self.loops = list(loops)
        self.clock = clock
        self.check_pooler = check_pooler
        self._session_factory = session_factory or self._open_lock_session
        self.registry = KeyRegistry()
        self.wanted = [n for n in wanted]
        for name in self.wanted:
            self.registry.register(name)
        self._state = _State()
        self._lock = threading.RLock()
        self._listeners: list[Callable[[LeaseEvent], None]] = []
        self._stop = threading.Event()
        self._release_on_stop = True
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: LeaseSession | None = None
        self._commands: list[Callable[[LeaseSession], None]] = []
        self.connected = threading.Event()
        self.fatal: BaseException | None = None
        self.d_srv: float | None = None
        self.last_heartbeat_ok: float | None = None

    # -- public surface -------------------------------------------------------------------

    def add_listener(self, fn: Callable[[LeaseEvent], None]) -> None:
        self._listeners.append(fn)

    def start(self) -> None:
        """Connect, verify topology and the safety inequality, then start the thread.

        :raises SafetyInequalityViolated, UnsupportedTopology, DatabaseUnavailable:
        """
        self._session = self._connect()
        self._thread = threading.Thread(target=self._run, name="leasectl-leases", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True, timeout: float = 10.0) -> None:
        """Stop campaigning; release held leases with NOTIFY (graceful hand-over)."""
        self._release_on_stop = release
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lease = self.lease(name)
            if lease is not None:
                return lease
            if self.fatal is not None:
                raise self.fatal
            time.sleep(0.01)
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

    def abandon(self, name: str, reason: str) -> None:
        """Give ``name`` up and stop campaigning for it until :meth:`resume`.

        For a wedged tick: its thread cannot be stopped, but another replica can run the
        loop; the stuck thread's late writes are refused by the fence once the new holder
        bumps the epoch.
        """

        def command(session: LeaseSession) -> None:
            self._release(session, [name], reason)

        with self._lock:
            self._state.suspended.add(name)  # at once: no campaign may take it back meanwhile
            self._commands.append(command)

    def resume(self, name: str) -> None:
        """Campaign for ``name`` again (its wedged tick returned)."""
        with self._lock:
            self._state.suspended.discard(name)

    def report_wedged(self, loops: Iterable[str]) -> None:
        """Record the loops wedged on this replica in its row, for ``leasectl status``."""
        names = sorted(loops)

        def command(session: LeaseSession) -> None:
            session.replica_wedged(self.replica_id, names)

        with self._lock:
            self._commands.append(command)

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

    def _connect(self) -> LeaseSession:
        s = self.settings
        session = self._session_factory()
        try:
            assert session.tcp is not None
            self.d_srv = session.tcp.d_srv
            budget = s.leases.lease_ttl + s.leases.safety_margin
            if self.d_srv is not None and budget > self.d_srv:
                raise SafetyInequalityViolated(
                    f"lease_ttl ({s.leases.lease_ttl}s) + safety_margin ({s.leases.safety_margin}s)"
                    f" = {budget}s exceeds D_srv = {self.d_srv}s, the earliest time the server "
                    f"may drop a silent holder (tcp_keepalives_idle={session.tcp.idle}, "
                    f"interval={session.tcp.interval}, count={session.tcp.count}, "
                    f"tcp_user_timeout={session.tcp.user_timeout_ms}ms as read back with SHOW). "
                    "Lower lease_ttl or raise the keepalive/user-timeout settings."
                )
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
            session.listen()
            session.listen_control()
            session.register_replica(
                self.replica_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=__version__,
                may_lead=self.may_lead,
                loops=self.loops,
            )
        except BaseException:
            session.close()
            raise
        self.connected.set()
        return session

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        try:
            while not self._stop.is_set():
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
                        self._stop.wait(backoff * random.uniform(0.8, 1.2))
                        backoff = min(backoff * 2, self.settings.leases.reconnect_max_backoff)
                        continue
                try:
                    self._serve(session)
                except DatabaseUnavailable as exc:
                    self._lose_all(f"connection_lost: {exc}".splitlines()[0])
                    self.connected.clear()
                    try:
                        session.close()
                    except Exception:
                        pass
                    self._session = None
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

    def _serve(self, session: LeaseSession) -> None:
        ls = self.settings.leases
        next_hb = self.clock()
        next_campaign = self.clock()
        while not self._stop.is_set():
            self._run_commands(session)
            now = self.clock()
            self._expire(now)
            if now >= next_hb:
                self._heartbeat(session)
                next_hb = now + ls.heartbeat_interval
            if now >= next_campaign:
                self._campaign(session)
                jitter = random.uniform(1 - ls.acquire_jitter, 1 + ls.acquire_jitter)
                next_campaign = self.clock() + ls.acquire_interval * jitter
            wait = min(next_hb, next_campaign) - self.clock()
            # Short waits keep stop() and step_down() responsive without extra queries: a wait
            # is a poll() on the socket, and its slice bounds how late a graceful stop starts.
            for payload in session.wait_notify(min(max(wait, 0.0), _WAIT_SLICE)):
                if self._on_notify(session, payload):
                    next_campaign = self.clock()

    def _on_notify(self, session: LeaseSession, payload: str) -> bool:
        """Handle a notification; True when a campaign should run now."""
        if payload.startswith("{"):
            try:
                msg = json.loads(payload)
            except ValueError:
                return False
            if msg.get("action") == "step_down":
                lease, replica = msg.get("lease"), msg.get("replica")
                names = [lease] if lease else list(self._state.held)
                if replica and replica != self.replica_id:
                    return False
                cooldown = float(msg.get("cooldown") or self.settings.leases.step_down_cooldown)
                with self._lock:
                    mine = [n for n in names if n in self._state.held]
                    for n in mine:
                        self._state.cooldown_until[n] = self.clock() + cooldown
                if mine:
                    self._release(session, mine, "step_down")
            return False
        return payload in self.wanted

    def _run_commands(self, session: LeaseSession) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for command in commands:
            command(session)

    def _expire(self, now: float) -> None:
        """Self-fence leases whose validity ran out (heartbeats failing or stuck)."""
        with self._lock:
            expired = [lease for lease in self._state.held.values() if not lease.valid()]
        for lease in expired:
            self._drop(lease, "ttl_expired")

    def _heartbeat(self, session: LeaseSession) -> None:
        with self._lock:
            held = list(self._state.held.values())
        started = self.clock()
        in_recovery, unproven = session.heartbeat(
            [lease.name for lease in held], [lease.epoch for lease in held], self.replica_id
        )
        elapsed = self.clock() - started
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
        self._emit(LeaseEvent("heartbeat", "*", None, "ok", elapsed))

    def _campaign(self, session: LeaseSession) -> None:
        if not self.may_lead:
            return
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
            return
        started = self.clock()
        rows = session.campaign(todo)
        got = [r.name for r in rows if r.got]
        if got:
            self._acquired(session, got, started)
        threshold = self.settings.leases.lease_ttl + self.settings.leases.eviction_grace
        for name, ok, age, holder_pid, row_pid, row_holder in rows:
            if ok:
                self._state.mismatch_since.pop(name, None)
                continue
            if holder_pid is None:
                continue  # freed between the try-lock and the pg_locks read; next round
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

    def _release(self, session: LeaseSession, names: list[str], reason: str) -> None:
        with self._lock:
            leases = [self._state.held.pop(n) for n in names if n in self._state.held]
        if not leases:
            return
        for lease in leases:
            lease._lose(reason)  # stop believing before the lock is gone
        session.hand_over(
            [lease.name for lease in leases],
            [lease.epoch for lease in leases],
            self.replica_id,
            reason,
        )
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
        session = self._session
        if session is None:
            return
        try:
            if self._release_on_stop:
                with self._lock:
                    names = list(self._state.held)
                self._release(session, names, "shutdown")
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
    """Ask the holder(s) to release a lease and stay away for ``cooldown`` seconds (NOTIFY)."""
    payload = json.dumps(
        {"action": "step_down", "lease": lease, "replica": replica, "cooldown": cooldown}
    )
    notify_control(conn, payload)
