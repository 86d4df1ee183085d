"""How a periodic loop is declared, and what one tick receives.

A loop is declared once, next to its code::

    LOOP = LoopSpec(
        name="digest",
        interval=86400,
        placement="leased",          # runs only on the replica holding lease "digest"
        run_on_start=False,
        timeout=300,
        run=run_digest,              # def run_digest(ctx: TickContext) -> None
    )

``everywhere`` loops must be safe on every replica at once (``FOR UPDATE SKIP LOCKED``
claims, guarded single-statement UPDATEs, idempotent upserts). ``leased`` loops get
``ctx.lease``; every database write they make is fenced — ``with ctx.transaction() as cur:``
checks the epoch inside the transaction it commits (or use ``ctx.lease.guard(cur)`` /
:data:`leasectl.FENCE_SQL` by hand) — and they call ``ctx.check()`` between items so a lost
lease or a shutdown stops side effects promptly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from leasectl.errors import TickCancelled
from leasectl.limits import Decision, RateLimiter

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from leasectl.leases import Lease

Placement = Literal["everywhere", "leased"]
Misfire = Literal["coalesce", "skip"]


@dataclass(frozen=True)
class LoopSpec:
    """Declaration of one periodic loop.

    :param interval: seconds between scheduled slots (leased loops align slots to UTC).
    :param jitter: fraction of the interval by which each start is randomly delayed (±).
    :param timeout: cooperative per-tick deadline; ``ctx.check()`` raises past it.
    :param run_on_start: run at once on start (everywhere) / on first acquisition (leased).
    :param misfire: for leased loops, ``coalesce`` runs missed slots once; ``skip`` drops them.
    :param settings_key: the key under ``loops:`` in the config holding this loop's settings.
    :param preferred_holder: leased loops: a replica id or label whose replicas rank first in
        placement (``leases.loops.<name>`` in the config overrides it).
    :param requires_labels: leased loops: only replicas carrying all these labels
        (``replica.labels``) campaign for the lease.
    """

    name: str
    interval: float
    placement: Placement
    run: Callable[[TickContext], None]
    jitter: float = 0.1
    timeout: float = 60.0
    run_on_start: bool = True
    misfire: Misfire = "coalesce"
    description: str = ""
    preferred_holder: str | None = None
    requires_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.requires_labels, str):
            raise ValueError(
                f"loop {self.name}: requires_labels must be a tuple of labels, not a string"
            )
        if self.interval <= 0:
            raise ValueError(f"loop {self.name}: interval must be > 0, got {self.interval}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"loop {self.name}: jitter must be in [0, 1), got {self.jitter}")
        if self.placement not in ("everywhere", "leased"):
            raise ValueError(f"loop {self.name}: placement must be 'everywhere' or 'leased'")


@dataclass
class TickContext:
    """Everything one tick may use. Created by the scheduler for every tick."""

    loop: str
    replica_id: str
    pool: ConnectionPool
    config: Any  # the loops' settings object (``loops.settings.LoopsSettings``)
    tick_at: datetime  # the scheduled slot (UTC)
    deadline: float  # monotonic
    lease: Lease | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("leasectl.loop"))
    clock: Callable[[], float] = time.monotonic
    stats: dict[str, int] = field(default_factory=dict)
    limiter: RateLimiter | None = None

    def check(self) -> None:
        """Raise if the tick must stop now: lease lost, shutdown, or timeout."""
        if self.lease is not None:
            self.lease.check()
        if self.stop.is_set():
            raise TickCancelled(f"tick of {self.loop} cancelled")
        if self.clock() > self.deadline:
            raise TickCancelled(f"tick of {self.loop} exceeded its timeout")

    @property
    def epoch(self) -> int | None:
        """The fencing epoch this tick runs under (None for an everywhere loop)."""
        return self.lease.epoch if self.lease is not None else None

    def limit(self, name: str, scope: str | None = None, *, wait: float = 0.0) -> Decision:
        """Take one event from the cluster-wide rate limit ``limits.<name>``.

        Returns a truthy :class:`~leasectl.limits.Decision` when allowed; when refused, defer
        the side effect (leave the item for the next tick) — never fail it. ``wait`` retries
        for up to that many seconds (never past this tick's deadline); ``scope`` picks the
        bucket of a ``per_scope`` limit (a recipient domain, a host, a region). An
        unconfigured name is unlimited.

        :raises DatabaseUnavailable: the limit could not be checked (fail closed: defer).
        """
        if self.limiter is None:
            return Decision(True, 0.0, name)
        budget = max(0.0, min(wait, self.deadline - self.clock()))
        return self.limiter.acquire(name, scope, wait=budget)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """A pool connection in one transaction, fenced for a leased loop.

        For a leased loop the lease row is checked (and share-locked) first, inside the same
        transaction, so what the block writes commits only while this replica's epoch is the
        current one; otherwise :class:`~leasectl.FencingRejected` is raised and the block's
        writes are rolled back. Keep the block short and never make an external call inside
        it: work connections end transactions idle for more than a few seconds.
        """
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            if self.lease is not None:
                self.lease.guard(cur)
            yield cur

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n


__all__ = ["LoopSpec", "TickContext", "Placement", "Misfire"]
