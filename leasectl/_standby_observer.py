"""The pooled standby observer (``leases.standby: pooled``): a replica with no lock session,
polling through the work DSN's transaction pooler until it is needed.

One poll (:meth:`StandbyObserver.look`) stamps the replica's row, brings the live view when
:meth:`leasectl.lease_core.LeaseCore.want_view` asks for it and each lease's holder; the core
then says whether the replica needs its lock session
(:meth:`~leasectl.lease_core.LeaseCore.direct_reason`: it holds, is chosen, is a heir, a free
lease reached its turn, a command waits). This module polls and reconnects; it decides
nothing itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from leasectl._lease_context import Shared
from leasectl.errors import DatabaseUnavailable, KeyCollision
from leasectl.locks import LeaseSession
from leasectl.standby import StandbyPoll, StandbyView

log = logging.getLogger("leasectl.leases")


class StandbyObserver:
    """A standby's connection through the pooler, and its poll loop (:meth:`phase`)."""

    def __init__(
        self,
        shared: Shared,
        factory: Callable[[], StandbyPoll],
        probe: Callable[[], LeaseSession],
        *,
        dsn: str,
        lock_dsn: str,
    ) -> None:
        self._s = shared
        self._factory = factory
        self._probe = probe
        self._dsn, self._lock_dsn = dsn, lock_dsn
        self.conn: StandbyPoll | None = None
        #: the standby phase found a reason for a lock session (the lock loop opens one)
        self.want_direct = False

    def start(self) -> None:
        """``start()`` in pooled mode: check the lock DSN once (a probe lock session, closed
        at once; if it cannot connect, the checks wait for the first real one), then open the
        standby connection, check the lease keys against the cluster's and take the replica
        row: a misconfiguration fails the start as it does in direct mode, not later, when
        the replica is first needed as a heir."""
        s = self._s
        self._check_lock_dsn()
        if self._dsn == self._lock_dsn:
            log.warning(
                "leases.standby: pooled, but database.dsn is also the lock DSN: a standby's "
                "polls then hold a server connection each; put a transaction-mode pooler in "
                "database.dsn and the direct server in database.lock_dsn",
                extra={"action": "config_warning", "replica": s.replica_id},
            )
        self.conn = conn = self._factory()
        wanted = list(s.core.config.wanted)
        try:
            collision = conn.key_collision(wanted) if wanted else None
            if collision is not None:
                raise KeyCollision(*collision)
            deadline = s.clock() + s.settings.leases.lease_ttl + 1.0
            while self.look() is None:
                if s.clock() >= deadline:
                    raise conn.refused(s.replica_id)
                s.stop.wait(0.2)
        except BaseException:
            conn.close()
            self.conn = None
            raise
        s.connected.set()

    def _check_lock_dsn(self) -> None:
        s = self._s
        try:
            probe = self._probe()
        except DatabaseUnavailable as exc:
            # Not a misconfiguration for sure (a server at max_connections during a mass
            # start, a primary restarting): the checks run when the lock session first opens.
            log.warning(
                "could not open a probe lock session on database.lock_dsn at start; its checks "
                "run when this replica first needs its lock session: %s",
                str(exc).splitlines()[0],
                extra={"action": "safety_check", "replica": s.replica_id},
            )
        else:
            try:
                s.check_lock_session(probe)
            finally:
                probe.close()

    def look(self) -> StandbyView | None:
        """One standby poll: stamp the row, refresh the view and each lease's holder."""
        s, core = self._s, self._s.core
        assert self.conn is not None  # noqa: S101 - narrows a type for mypy; set by the caller
        candidacy = s.candidacy()
        with s.lock:
            want = core.want_view(candidacy, s.clock())
        found = self.conn.poll(
            s.replica_id,
            **s.identity_row(candidacy),
            names=list(core.config.wanted),
            live_s=s.settings.leases.lease_ttl,
            seen=core.view_hash,
            want_view=want,
        )
        if found is None:
            return None
        core.published = candidacy
        now = s.clock()
        if want:
            core.view_asked(now, s.runtime.uniform(0.5, 1.5))
        if found.replicas is not None:
            with s.lock:
                core.set_view(found.replicas)  # no watch ring in pooled mode
            core.view_hash = found.view_hash
        # else: unchanged, or changed but skipped: keep the old fingerprint, so the next poll
        # that wants the view gets it
        if found.drain is not None:
            s.drain(found.drain)
        with s.lock:
            core.polled(found.holders, now)
        s.last_heartbeat_ok = s.clock()
        return found

    def phase(self) -> None:
        """Poll through the work DSN every heartbeat_interval until this replica needs a lock
        session (the core's ``direct_reason``) or a command needs one, or stop() is called."""
        s = self._s
        ls = s.settings.leases
        backoff = 0.1
        refused_since: float | None = None
        while not s.stop.is_set():
            if s.commands:
                self.want_direct = True  # a step-down, abandon or wedged report: run it there
                return
            try:
                if self.conn is None:
                    self.conn = self._factory()
                found = self.look()
                backoff = 0.1
            except DatabaseUnavailable as exc:
                backoff = self._lost(exc, backoff)
                continue
            if found is None:  # our id, taken over meanwhile by a live process
                refused_since = refused_since if refused_since is not None else s.clock()
                if s.clock() - refused_since > ls.lease_ttl + 1.0:
                    assert self.conn is not None  # noqa: S101 - narrows a type for mypy; polled just now
                    raise self.conn.refused(s.replica_id)
            else:
                refused_since = None
                s.connected.set()
                if self._needed():
                    return
            s.waker.drain()
            if s.commands or s.stop.is_set():
                continue
            jitter = s.runtime.uniform(1 - ls.acquire_jitter, 1 + ls.acquire_jitter)
            s.waker.wait(ls.heartbeat_interval * jitter)

    def _lost(self, exc: DatabaseUnavailable, backoff: float) -> float:
        """The standby connection failed: close it, wait ``backoff``; returns the next one."""
        s = self._s
        s.connected.clear()
        log.warning(
            "standby connection unavailable, retrying in %.1fs: %s",
            backoff,
            str(exc).splitlines()[0],
            extra={"action": "reconnect_wait", "replica": s.replica_id},
        )
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        s.stop.wait(backoff * s.runtime.uniform(0.8, 1.2))
        return min(backoff * 2, s.settings.leases.reconnect_max_backoff)

    def _needed(self) -> bool:
        """Whether the core finds a reason for a lock session now (then close this one)."""
        s = self._s
        with s.lock:
            reason = s.core.direct_reason(s.clock(), commands=bool(s.commands))
        if reason is None:
            return False
        log.info(
            "opening a lock session: %s",
            reason,
            extra={"action": "lock_session_open", "replica": s.replica_id},
        )
        self.want_direct = True
        if self.conn is not None:  # a holder or heir needs only its lock session
            self.conn.close()
            self.conn = None
        return True

    def shutdown(self, *, direct: bool) -> None:
        """At stop: say so through the standby connection (unless a lock session says it:
        ``direct``), then close it."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if not direct:
                conn.stopped(self._s.replica_id)
        except DatabaseUnavailable:
            pass  # its row ages out of every view within lease_ttl
        finally:
            conn.close()
