"""The lock-session loop: the ``leasectl-leases`` thread that campaigns, heartbeats and evicts.

It owns the replica's one lock connection (:class:`leasectl.locks.LeaseSession`) and runs
the statements the decision core (:mod:`leasectl.lease_core`) asks for, in this order each
round: queued commands, self-fence (``ttl_expired``), heartbeat + rebalance plan, hand-overs
whose tick ended, campaign. Between deadlines it sleeps in one ``select`` on the socket and
the wake-up pipe, so a NOTIFY, a command or ``stop()`` wakes it at once. On any database
error it drops every lease, closes the connection and reconnects with backoff; with
``leases.standby: pooled`` it hands over to the standby observer while nothing needs a lock
session. Decisions are the core's; this module waits, talks SQL, logs and emits events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from leasectl import control
from leasectl._lease_context import Shared
from leasectl._standby_observer import StandbyObserver
from leasectl._watch_ring import WatchRing
from leasectl.errors import (
    DatabaseUnavailable,
    KeyCollision,
    LeasectlError,
    RowLockTimeout,
)
from leasectl.lease_core import CampaignPlan
from leasectl.leases import Lease, LeaseEvent
from leasectl.locks import REGISTER_LIVE_S, Contender, Drain, LeaseSession
from leasectl.placement import Replica

log = logging.getLogger("leasectl.leases")


class LockLoop:
    """The manager thread (:meth:`run`) and the statements it sends on the lock session."""

    def __init__(
        self,
        shared: Shared,
        factory: Callable[[], LeaseSession],
        ring: WatchRing,
        observer: StandbyObserver | None,
    ) -> None:
        self._s = shared
        self._factory = factory
        self._ring = ring
        self._observer = observer
        self.session: LeaseSession | None = None
        self.holds_liveness = False  # this lock session holds the replica's liveness lock
        self.release_on_stop = True

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> LeaseSession:
        """Open the lock session: safety check, key check, LISTEN, the replica row, the
        liveness lock."""
        s, core = self._s, self._s.core
        session = self._factory()
        try:
            s.check_lock_session(session)
            wanted = list(core.config.wanted)
            collision = session.key_collision(wanted) if wanted else None
            if collision is not None:
                raise KeyCollision(*collision)
            session.listen()
            session.listen_control()
            candidacy = s.candidacy()
            drain = self._register(session, candidacy)
            if drain is not None:
                s.drain(drain)
                candidacy = s.candidacy()
                session.replica_candidacy(s.replica_id, candidacy, s.identity.preferred_for)
            core.published = candidacy
            self.holds_liveness = False
            if core.config.watched:
                self.holds_liveness = session.hold_replica(s.replica_id)
        except BaseException:
            session.close()
            raise
        s.connected.set()
        return session

    def _register(self, session: LeaseSession, candidacy: list[str]) -> Drain | None:
        """Take this replica's row; returns a drain asked of it meanwhile (None: none).

        A crashed predecessor's session can outlive it by a moment (or until D_srv after a
        partition, while it no longer heartbeats): retry until it is gone or silent for
        ``REGISTER_LIVE_S``; a live duplicate keeps heartbeating and is refused.
        """
        s = self._s
        deadline = s.clock() + REGISTER_LIVE_S + 1.0
        ident = s.identity_row(candidacy)
        declared = s.identity.declared
        while (
            got := session.register_replica(s.replica_id, **ident, declared_leases=declared)
        ) is None:
            if s.clock() >= deadline:
                raise session.refused(s.replica_id)
            s.stop.wait(0.2)
        return got.drain

    # -- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        """The ``leasectl-leases`` thread, until stop() or a fatal error."""
        s = self._s
        try:
            self._loop()
            self.shutdown()
        except LeasectlError as exc:
            s.fatal = exc
            self.lose_all(f"fatal: {exc}")
            log.error("lease manager stopped: %s", exc, extra={"action": "lease_manager_fatal"})
        except BaseException as exc:  # never die silently: a dead manager must drop its leases
            s.fatal = exc
            self.lose_all(f"fatal: {exc!r}")
            log.exception("lease manager crashed", extra={"action": "lease_manager_fatal"})
        finally:
            if self.session is not None and s.fatal is not None:
                self.session.close()
            s.stopped.set()
            self._ring.stop()
            s.exited()

    def _loop(self) -> None:
        s, obs = self._s, self._observer
        backoff = 0.1
        while not s.stop.is_set():
            if obs is not None and self.session is None and not obs.want_direct:
                obs.phase()  # until a lock session is needed, or stop()
                continue
            session = self.session
            if session is None:
                try:
                    session = self.session = self.connect()
                    backoff = 0.1
                except DatabaseUnavailable as exc:
                    log.warning(
                        "lock connection unavailable, retrying in %.1fs: %s",
                        backoff,
                        exc,
                        extra={"action": "reconnect_wait", "replica": s.replica_id},
                    )
                    s.stop.wait(backoff * s.runtime.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, s.settings.leases.reconnect_max_backoff)
                    if obs is not None:
                        obs.want_direct = False  # pooled: look again before retrying
                    continue
            try:
                self.serve(session)
            except DatabaseUnavailable as exc:
                self._lost(session, exc)
            else:
                if not s.stop.is_set():  # pooled: needed by nothing for standby_after
                    self._demote(session)

    def _lost(self, session: LeaseSession, exc: DatabaseUnavailable) -> None:
        self.lose_all(f"connection_lost: {exc}".splitlines()[0])
        self._s.connected.clear()
        try:
            session.close()
        except Exception:  # noqa: S110 - best effort cleanup of a connection already lost
            pass
        self.session = None
        if self._observer is not None:
            self._observer.want_direct = False

    def serve(self, session: LeaseSession) -> None:
        """Commands, self-fence, heartbeat, hand-overs and campaign on ``session``, each at
        its deadline, until stop() (or, pooled, until nothing has needed it for
        ``standby_after``)."""
        s = self._s
        ls = s.settings.leases
        pooled = s.core.config.pooled
        next_hb = s.clock()
        next_campaign = s.clock()
        while not s.stop.is_set():
            self.run_commands(session)
            now = s.clock()
            self.expire(session, now)
            # Heartbeat and campaign share a wake-up when their deadlines are within the
            # campaign's own jitter of each other (either may run that much early): an idle
            # replica then wakes once a second, not twice (each wake-up costs about 1 ms of CPU).
            period = ls.heir_interval if pooled else ls.acquire_interval
            slack = ls.acquire_jitter * period
            beat = now >= next_hb or (now >= next_campaign and next_hb - now <= slack)
            if beat:
                self.publish_candidacy(session)
                self.heartbeat(session)
                self.plan_rebalance()
                next_hb = now + ls.heartbeat_interval
                if pooled and self._idle_for(now) >= ls.standby_after:
                    return  # nothing to hold or inherit here: back to watching via the pooler
            self.hand_over_idle(session)
            if now >= next_campaign or (beat and next_campaign - now <= slack):
                self.publish_candidacy(session)
                due = self.campaign(session)
                jitter = s.runtime.uniform(1 - ls.acquire_jitter, 1 + ls.acquire_jitter)
                next_campaign = s.clock() + period * jitter
                if due is not None:  # a watched free lease becomes this replica's turn
                    next_campaign = min(next_campaign, due)
            if s.stop.is_set():
                break
            asked = self._wait(session, min(next_hb, next_campaign) - s.clock())
            if asked is not None:
                next_campaign = asked

    def _wait(self, session: LeaseSession, wait: float) -> float | None:
        """Sleep until the next deadline in one select() on the socket and the wake pipe: a
        NOTIFY, a command or stop() ends it at once; nothing polls in between. Returns when
        a notification asked for a campaign (None: none did)."""
        s = self._s
        s.waker.drain()
        if s.commands or s.stop.is_set():
            return None  # queued just before the drain: its wake-up was consumed
        asked = None
        for payload in session.wait_notify(max(wait, 0.0), s.waker.fd):
            if self.on_notify(session, payload):
                asked = s.clock()
        return asked

    def _idle_for(self, now: float) -> float:
        with self._s.lock:
            return self._s.core.idle_for(now, self._s.clock(), commands=bool(self._s.commands))

    def run_commands(self, session: LeaseSession) -> None:
        with self._s.lock:
            commands, self._s.commands = self._s.commands, []
        for command in commands:
            command(session)

    # -- notifications --------------------------------------------------------------------

    def on_notify(self, session: LeaseSession, payload: str) -> bool:
        """Handle a notification; True when a campaign should run now."""
        s, core = self._s, self._s.core
        if not payload.startswith("{"):
            with s.lock:
                return core.release_heard(payload, s.clock())
        msg = control.parse(payload)
        if isinstance(msg, control.ReplicaGone):
            return self.replica_gone(msg.replica)
        if isinstance(msg, control.HandOver):
            with s.lock:
                return core.hand_over_heard(msg, s.clock())
        if isinstance(msg, control.LoopControlChanged):
            for fn in s.control_listeners:
                fn(msg)
            return False
        if isinstance(msg, control.StepDown):
            with s.lock:
                mine = core.step_down_asked(msg, s.clock())
            if mine:
                self.release(session, mine, "step_down")
        return False

    def replica_gone(self, gone: object) -> bool:
        """A peer's lock session ended (its watcher said so) or it is stopping (it said so):
        the core drops it from the view; True: campaign now."""
        s = self._s
        if not isinstance(gone, str):
            return False
        with s.lock:
            campaign, dropped = s.core.replica_gone(gone, s.clock())
            target = s.core.watch_target() if dropped else None
        if dropped:
            self._ring.aim(target)
        if campaign:
            log.debug(
                "replica %s is gone; campaigning for its leases",
                gone,
                extra={"action": "replica_gone", "replica": s.replica_id, "holder": gone},
            )
        return campaign

    # -- the rounds -----------------------------------------------------------------------

    def expire(self, session: LeaseSession, now: float) -> None:
        """Self-fence leases whose validity ran out (heartbeats failing or stuck).

        Then give their locks back: the session may well still hold them (the process was
        stopped, or its heartbeats were slow, not lost), and the next campaign's try-lock
        would otherwise stack a second, re-entrant grant on top (one release later the lock
        would still be held, and the lease stuck here for as long as the session lives).
        """
        with self._s.lock:
            expired = self._s.core.expired(now)
        for lease in expired:
            self.drop(lease, "ttl_expired")
        if expired and not self._s.runtime.planted("expired_lock_kept"):
            session.release([lease.name for lease in expired])

    def heartbeat(self, session: LeaseSession) -> None:
        """One statement proves every held lock and epoch (and brings the live view)."""
        s, core = self._s, self._s.core
        with s.lock:
            held = list(core.state.held.values())
        started = s.clock()
        cfg = core.config
        live_s = s.settings.leases.lease_ttl if cfg.spread and cfg.may_lead else None
        in_recovery, unproven, replicas = session.heartbeat(
            [lease.name for lease in held],
            [lease.epoch for lease in held],
            s.replica_id,
            live_s=live_s,
        )
        elapsed = s.clock() - started
        if replicas is not None:
            self.set_view(replicas, observed_at=started)
        if in_recovery:
            self.lose_all("server_in_recovery")
            raise DatabaseUnavailable("server is in recovery; refusing to hold leases")
        with s.lock:
            gone = core.heartbeat_proved(held, unproven, started + s.settings.leases.lease_ttl)
        for lease in gone:
            self.drop(lease, "lock_missing_or_superseded")
        if gone:
            # Should the lock still be ours (the row moved under us), give it back: a later
            # try-lock would otherwise stack a second, re-entrant grant on top of it.
            session.release([lease.name for lease in gone])
        s.last_heartbeat_ok = s.clock()
        if cfg.watched and not self.holds_liveness:
            # Another session still held it at connect (a crashed predecessor's, not yet ended
            # by the server): retry, so this replica's own crash is seen at once again.
            self.holds_liveness = session.hold_replica(s.replica_id)
        s.emit(LeaseEvent("heartbeat", "*", None, "ok", elapsed))

    def set_view(self, replicas: list[Replica], observed_at: float | None = None) -> None:
        """A new view of the live replicas: the core takes it, the watch re-aims."""
        with self._s.lock:
            target = self._s.core.set_view(replicas, observed_at)
        self._ring.aim(target)

    def publish_candidacy(self, session: LeaseSession) -> None:
        """Rewrite the replica row's ``campaigns_for`` when it changed (a step-down cooldown
        began or ended, a tick wedged or returned), so peers stop ranking this replica for a
        lease it will not take: they would otherwise wait for it, or hand it the lease."""
        s, core = self._s, self._s.core
        if not core.config.spread:
            return
        candidacy = s.candidacy()
        if candidacy != core.published:
            session.replica_candidacy(s.replica_id, candidacy, s.identity.preferred_for)
            core.published = candidacy

    def campaign(self, session: LeaseSession) -> float | None:
        """Try the leases it is this replica's turn for; watch the others; evict the stale.

        Returns when the next watched free lease becomes this replica's turn (None: none).
        """
        s, core = self._s, self._s.core
        if not core.config.may_lead:
            return None
        now = s.clock()
        with s.lock:
            plan = core.campaign_plan(now)
        if plan is None:
            return None
        started = s.clock()
        rows = session.campaign(plan.tried, plan.watched)
        got = [r.name for r in rows if r.got]
        if got:
            self.acquired(session, got, started)
        due = self._seen(plan, rows, now)
        for row in rows:
            with s.lock:
                stale = core.stale_holder(row, now)
            if stale is not None:
                self.evict(session, stale.name, stale.pid, stale.holder, stale.age)
        return due

    def _seen(self, plan: CampaignPlan, rows: list[Contender], now: float) -> float | None:
        s = self._s
        with s.lock:
            seen = s.core.campaign_seen(plan, rows, now, s.clock())
        for target in seen.aims:  # a crashed holder dropped from the view
            self._ring.aim(target)
        if log.isEnabledFor(logging.DEBUG):
            for r in rows:
                if r.holder_pid is None and not r.got:
                    log.debug(
                        "lease %s seen free (holder %s, gone=%s)",
                        r.name,
                        r.row_holder,
                        r.holder_gone,
                        extra={"action": "lease_free", "replica": s.replica_id},
                    )
        return seen.due

    def acquired(self, session: LeaseSession, names: list[str], started: float) -> None:
        """The campaign got the locks of ``names``: bump their epochs, then hold them."""
        s = self._s
        try:
            rows = session.bump_epoch(names, s.replica_id, "campaign")
        except RowLockTimeout as exc:
            # A guarded transaction of the previous holder kept the lease rows locked past
            # lock_timeout: give the locks back and try again at the next campaign, keeping
            # the other leases of this session.
            session.release(names, notify=False)
            log.warning(
                "epoch bump for %s waited too long for the previous holder's guarded writes: %s",
                ", ".join(names),
                str(exc).splitlines()[0],
                extra={"action": "lease_bump_timeout", "replica": s.replica_id},
            )
            return
        except DatabaseUnavailable:
            # The locks are ours but un-fenced: give them back rather than hold them blind.
            try:
                session.release(names, notify=False)
            finally:
                raise
        valid_until = started + s.settings.leases.lease_ttl
        took = s.clock() - started
        for name, epoch in rows:
            lease = Lease(name, epoch, valid_until, s.clock)
            with s.lock:
                s.core.acquired(name, lease, s.clock())
            log.info(
                "lease %s acquired (epoch %s)",
                name,
                epoch,
                extra={
                    "action": "lease_acquired",
                    "lease": name,
                    "epoch": epoch,
                    "replica": s.replica_id,
                    "reason": "campaign",
                },
            )
            s.emit(LeaseEvent("acquired", name, epoch, "campaign", took))

    def evict(
        self, session: LeaseSession, name: str, pid: int, holder: str | None, age: float | None
    ) -> None:
        s = self._s
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
                "replica": s.replica_id,
                "holder": holder,
                "backend_pid": pid,
                "reason": f"renewal_stale_{age_txt}",
            },
        )
        session.evict(
            name,
            pid,
            replica=s.replica_id,
            reason=f"holder {holder} (pid {pid}) renewal stale {age_txt}",
        )
        with s.lock:
            s.core.evicted(name)
        s.emit(LeaseEvent("evicted", name, None, f"holder {holder}"))

    # -- rebalance ------------------------------------------------------------------------

    def plan_rebalance(self) -> None:
        """After a heartbeat: the core marks held leases a better, settled replica should
        hold; the release waits for the loop's running tick (:meth:`hand_over_idle`)."""
        s = self._s
        with s.lock:
            marked = s.core.plan_rebalance(s.clock())
        for name, target in marked:
            log.info(
                "lease %s: %s ranks better and is settled; handing it over at the end of "
                "the running tick",
                name,
                target,
                extra={
                    "action": "lease_rebalance",
                    "lease": name,
                    "replica": s.replica_id,
                    "target": target,
                },
            )

    def hand_over_idle(self, session: LeaseSession) -> None:
        """Release the leases marked for hand-over whose loop is not mid-tick."""
        s = self._s
        with s.lock:
            ready = s.core.hand_over_ready()
        if not ready:
            return
        for target in sorted(set(ready.values())):
            names = sorted(n for n, t in ready.items() if t == target)
            self.release(session, names, f"rebalance: to {target}", to=target)
        with s.lock:
            s.core.handed_over(ready)

    # -- letting go -----------------------------------------------------------------------

    def release(
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
        included, stays away for a while (``LeaseCore.reserve``), so the lease moves once
        even while the replicas' views of each other still differ. Sent with the release, not
        a round trip before it, the reservation cannot run out while a slow release is still
        on its way (a third replica then took the lease, which moved again).
        """
        s = self._s
        with s.lock:
            leases = s.core.take(names)
        if not leases:
            if leaving:
                session.replica_stopped(s.replica_id)
            return
        for lease in leases:
            lease._lose(reason)  # stop believing before the lock is gone
        released = [lease.name for lease in leases]
        announce = None
        if to is not None:
            announce = control.encode(control.HandOver(tuple(released), to, s.replica_id))
        session.hand_over(
            released,
            [lease.epoch for lease in leases],
            s.replica_id,
            reason,
            leaving=leaving,
            announce=announce,
        )
        if to is not None:
            with s.lock:
                s.core.reserve(released, to, s.clock())
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
                    "replica": s.replica_id,
                    "reason": reason,
                },
            )
            s.emit(LeaseEvent("released", lease.name, lease.epoch, reason))

    def drop(self, lease: Lease, reason: str) -> None:
        """``lease`` is lost here (self-fenced, unproven, connection gone)."""
        s = self._s
        with s.lock:
            s.core.forget(lease)
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
                "replica": s.replica_id,
                "reason": reason,
            },
        )
        s.emit(LeaseEvent("lost", lease.name, lease.epoch, reason))

    def lose_all(self, reason: str) -> None:
        with self._s.lock:
            leases = list(self._s.core.state.held.values())
        for lease in leases:
            self.drop(lease, reason)

    def _demote(self, session: LeaseSession) -> None:
        """Close the lock session of a replica nothing needs it for (pooled); the next
        standby poll stamps its row as a standby again."""
        s = self._s
        log.info(
            "closing the lock session: nothing to hold or inherit for %gs; watching through "
            "the pooler",
            s.settings.leases.standby_after,
            extra={"action": "lock_session_close", "replica": s.replica_id},
        )
        self.session = None
        if self._observer is not None:
            self._observer.want_direct = False
        with s.lock:
            s.core.demoted()
        session.close()

    def shutdown(self) -> None:
        if self._observer is not None:
            self._observer.shutdown(direct=self.session is not None)
        session = self.session
        if session is None:
            return
        try:
            # Say we are leaving (peers drop us from their placement view) in the same round
            # trip as the hand-over, before it: the next candidate takes each lease at once,
            # not a placement step later.
            if self.release_on_stop:
                with self._s.lock:
                    names = list(self._s.core.state.held)
                self.release(session, names, "shutdown", leaving=True)
            else:
                session.replica_stopped(self._s.replica_id)
        except DatabaseUnavailable as exc:
            self.lose_all(f"connection_lost_at_shutdown: {exc}")
        finally:
            session.close()
            self.session = None
