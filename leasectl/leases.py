"""Fenced leases: a session advisory lock plus an epoch, held by one replica at a time.

:Status: Production

Guarantee
    At most one replica *believes* it holds a lease at any instant, provided the safety
    inequality holds: ``lease_ttl + safety_margin <= D_srv``, where ``D_srv`` is the earliest
    time after a holder's last packet at which the server may drop its connection (set by the
    TCP keepalive / user-timeout settings, checked at start). A holder believes in its lease
    only until ``start of its last successful heartbeat + lease_ttl`` (monotonic clock); the
    server cannot free the lock, and a hung holder cannot be evicted, before that.

Limits
    Belief is not enough for writes: a process can pause between checking and writing. Every
    database write made under a lease must be *fenced*: ``lease.guard(cur)`` in the same
    transaction (or :data:`FENCE_SQL` in a single statement's WHERE clause) calls the SQL
    function ``leasectl_fence(name, epoch)`` (migration 0007), which takes the lease row
    ``FOR KEY SHARE`` and is true only while the epoch is still this holder's. External calls
    cannot be fenced; they carry an idempotency key. See docs/safety.md.

Example::

    manager = LeaseManager("replica-a", ["digest"], settings, dsn=dsn)
    manager.start()
    lease = manager.wait_for("digest", timeout=10)
    with pool.connection() as conn, conn.transaction():
        cur = conn.cursor()
        lease.guard(cur)                      # raises FencingRejected if superseded
        cur.execute("INSERT INTO ...")
    manager.stop()                            # releases with NOTIFY: takeover in milliseconds

This module is the contract: the handle (:class:`Lease`), its events (:class:`LeaseEvent`)
and the fence. The thread that campaigns, heartbeats and evicts is
:class:`leasectl.lease_manager.LeaseManager`; the lock connection it drives is
:class:`leasectl.locks.LockSession`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from leasectl import sql
from leasectl.errors import FencingRejected, LeaseLost

Q = sql.load("leases")

Clock = Callable[[], float]

#: The fence, for single-statement fenced writes, e.g.
#: ``UPDATE t SET ... WHERE id = %(id)s AND {FENCE_SQL}`` with ``lease.fence_params()``.
#: A scalar subquery, so ``leasectl_fence`` runs once per statement, not once per row.
FENCE_SQL = "(SELECT leasectl_fence(%(lease_name)s, %(lease_epoch)s))"


@dataclass(frozen=True)
class LeaseEvent:
    """A lease transition, delivered to listeners (metrics, scheduler, logs)."""

    kind: str  # acquired | lost | released | evicted | heartbeat
    lease: str
    epoch: int | None
    reason: str
    seconds: float = 0.0


class Lease:
    """This replica's handle on one lease it holds (or held).

    Falsy once invalid, so ``if lease:`` reads naturally. ``check()`` raises
    :class:`LeaseLost`; ``guard(cur)`` fences a database write.
    """

    __module__ = "leasectl"

    def __init__(self, name: str, epoch: int, valid_until: float, clock: Clock) -> None:
        self.name = name
        self.epoch = epoch
        self._valid_until = valid_until
        self._clock = clock
        self._lost_reason: str | None = None
        self.lost_event = threading.Event()

    def valid(self) -> bool:
        """True while the lease may be believed held (self-fencing by monotonic deadline)."""
        return self._lost_reason is None and self._clock() < self._valid_until

    __bool__ = valid

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless still valid: call between items of side effects."""
        if self._lost_reason is not None:
            raise LeaseLost(self.name, self.epoch, self._lost_reason)
        if self._clock() >= self._valid_until:
            raise LeaseLost(self.name, self.epoch, "ttl expired without a successful heartbeat")

    @property
    def lost_reason(self) -> str | None:
        if self._lost_reason is None and self._clock() >= self._valid_until:
            return "ttl_expired"
        return self._lost_reason

    @property
    def remaining(self) -> float:
        return max(0.0, self._valid_until - self._clock()) if self._lost_reason is None else 0.0

    def guard(self, cur: psycopg.Cursor[Any]) -> None:
        """Fence the caller's transaction: succeed only while the epoch is still ours.

        Must run inside a transaction (not autocommit) before the writes it protects: it
        calls ``leasectl_fence``, which keeps the lease row ``FOR KEY SHARE`` until commit,
        so a new holder's epoch bump waits for the writes that follow.

        :raises LeaseLost: the lease is no longer believed held.
        :raises FencingRejected: a newer holder has bumped the epoch.
        """
        self.check()
        row = cur.execute(Q["fence"], self.fence_params()).fetchone()
        if not (row and row[0]):
            now = cur.execute(Q["current_epoch"], self.fence_params()).fetchone()
            raise FencingRejected(self.name, self.epoch, now[0] if now else None)

    async def guard_async(self, cur: psycopg.AsyncCursor[Any]) -> None:
        """:meth:`guard` for an async cursor: the same check, the same statements."""
        self.check()
        row = await (await cur.execute(Q["fence"], self.fence_params())).fetchone()
        if not (row and row[0]):
            now = await (await cur.execute(Q["current_epoch"], self.fence_params())).fetchone()
            raise FencingRejected(self.name, self.epoch, now[0] if now else None)

    def fence_params(self) -> dict[str, Any]:
        """Parameters for SQL that embeds :data:`FENCE_SQL` in its own WHERE clause."""
        return {"lease_name": self.name, "lease_epoch": self.epoch}

    # -- manager side -----------------------------------------------------------------------

    def _valid_at(self, now: float) -> bool:
        """:meth:`valid` at ``now`` (the lease manager's core is given the time)."""
        return self._lost_reason is None and now < self._valid_until

    def _renew(self, valid_until: float) -> None:
        if self._lost_reason is None:
            self._valid_until = max(self._valid_until, valid_until)

    def _lose(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
            self.lost_event.set()

    def __repr__(self) -> str:
        state = "valid" if self.valid() else f"lost: {self.lost_reason}"
        return f"<Lease {self.name} epoch={self.epoch} {state}>"
