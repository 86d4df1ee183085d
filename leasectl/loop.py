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

import asyncio
import inspect
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from leasectl.errors import TickCancelled
from leasectl.limits import Decision, RateLimiter
from leasectl.schedule import Cron, Every, Schedule, nominal_interval

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from leasectl.leases import Lease

Placement = Literal["everywhere", "leased"]
Misfire = Literal["coalesce", "skip", "all"]

#: Default jitter of an interval loop: a tenth of the interval, at most this many seconds.
DEFAULT_JITTER_CAP = 10.0


@dataclass(frozen=True)
class LoopSpec:
    """Declaration of one periodic loop.

    :param interval: seconds between scheduled slots (slots at ``offset + k * interval`` after
        the Unix epoch). With ``cron``, give 0: it is set to the longest gap between the next
        fires (``weekdays at 09:00``: 3 days), which the staleness alert multiplies.
    :param run: ``def f(ctx: TickContext) -> None``, or ``async def f(ctx: AsyncTickContext)``
        (run on the App's event-loop thread, cancelled on lease loss, shutdown and timeout).
    :param jitter: seconds by which each start is randomly delayed (leased loops: ``0 ..
        jitter`` after the slot; everywhere interval loops: ``± jitter``). None: a tenth of
        the interval, at most 10 s, and 0 for cron loops.
    :param timeout: per-tick deadline; ``ctx.check()`` raises past it, an async tick is
        cancelled.
    :param run_on_start: run at once on start (everywhere) / on first acquisition (leased),
        when the ledger has no history for the loop.
    :param misfire: after missed slots (leased loops): ``coalesce`` runs the latest slot once;
        ``skip`` runs a slot only on time (within ``max_delay``, default ``max(jitter, 1 s)``);
        ``all`` runs the missed slots in order, at most the newest ``catch_up`` of them.
    :param max_delay: seconds after its fire time past which a slot is recorded as missed
        instead of run (None: no limit, except ``skip``'s default above).
    :param catch_up: ``misfire="all"``: how many missed slots at most are run.
    :param cron: a cron expression (Debian cron semantics, cronsim) instead of ``interval``.
    :param tz: the IANA time zone ``cron`` is read in.
    :param offset: interval loops: seconds added to the epoch-aligned slots (``every=86400,
        offset=7200``: daily at 02:00 UTC).
    :param settings_key: the key under ``loops:`` in the config holding this loop's settings.
    :param preferred_holder: leased loops: a replica id or label whose replicas rank first in
        placement (``leases.loops.<name>`` in the config overrides it).
    :param requires_labels: leased loops: only replicas carrying all these labels
        (``replica.labels``) campaign for the lease.
    """

    name: str
    interval: float
    placement: Placement
    run: Callable[[Any], Any]
    jitter: float | None = None
    timeout: float = 60.0
    run_on_start: bool = True
    misfire: Misfire = "coalesce"
    description: str = ""
    preferred_holder: str | None = None
    requires_labels: tuple[str, ...] = ()
    cron: str | None = None
    tz: str = "UTC"
    offset: float = 0.0
    max_delay: float | None = None
    catch_up: int = 10
    schedule: Schedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"loop {self.name}: {message}")

        if isinstance(self.requires_labels, str):
            fail("requires_labels must be a tuple of labels, not a string")
        if self.placement not in ("everywhere", "leased"):
            fail("placement must be 'everywhere' or 'leased'")
        if self.misfire not in ("coalesce", "skip", "all"):
            fail(f"misfire must be 'coalesce', 'skip' or 'all', got {self.misfire!r}")
        schedule: Schedule
        try:
            if self.cron is not None:
                if self.interval:
                    fail("give exactly one of every/interval and cron, not both")
                if self.offset:
                    fail("offset is for interval loops; write the time into the cron expression")
                schedule = Cron(self.cron, self.tz)
            else:
                if self.tz != "UTC":
                    fail("tz is for cron loops (interval slots are counted in seconds)")
                schedule = Every(self.interval, self.offset)
        except ValueError as exc:
            if str(exc).startswith(f"loop {self.name}:"):
                raise
            fail(str(exc))
        object.__setattr__(self, "schedule", schedule)
        if self.cron is not None:
            object.__setattr__(self, "interval", nominal_interval(schedule, time.time()))
        if self.jitter is None:
            default = 0.0 if self.cron else min(DEFAULT_JITTER_CAP, self.interval / 10)
            object.__setattr__(self, "jitter", default)
        jitter = self.jitter_s
        too_long = self.cron is None and jitter >= self.interval
        if not (math.isfinite(jitter) and jitter >= 0) or too_long:
            fail(f"jitter must be >= 0 seconds and less than the interval, got {self.jitter!r}")
        if self.max_delay is not None and not self.max_delay >= 0:
            fail(f"max_delay must be >= 0 seconds or None, got {self.max_delay!r}")
        if not (isinstance(self.catch_up, int) and self.catch_up >= 1):
            fail(f"catch_up must be an integer >= 1, got {self.catch_up!r}")

    @property
    def jitter_s(self) -> float:
        """The jitter in seconds (resolved from the default)."""
        return float(self.jitter or 0.0)

    @property
    def is_async(self) -> bool:
        """Whether ``run`` is an ``async def`` (runs on the App's event-loop thread)."""
        return inspect.iscoroutinefunction(self.run) or inspect.iscoroutinefunction(
            getattr(self.run, "__call__", None)  # noqa: B004 - an object with an async __call__
        )

    @property
    def grace(self) -> float | None:
        """How late a slot may start before it counts as missed (None: no limit)."""
        if self.max_delay is not None:
            return self.max_delay
        if self.misfire == "skip":
            return max(self.jitter_s, 1.0)
        return None


class _TickChecks:
    """What both tick contexts answer the same way (no I/O)."""

    loop: str
    lease: Lease | None
    stop: threading.Event
    clock: Callable[[], float]
    deadline: float
    stats: dict[str, int]

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

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n


@dataclass
class TickContext(_TickChecks):
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

    def limit(self, name: str, scope: str | None = None, *, wait: float = 0.0) -> Decision:
        """Take one event from the cluster-wide rate limit ``limits.<name>``.

        Returns a :class:`~leasectl.limits.Decision`: truthy when allowed; when refused it is
        falsy and ``decision.retry_after`` says in how many seconds one would fit. Defer the
        side effect then (leave the item for the next tick) — never fail it. ``wait`` retries
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


@dataclass
class AsyncTickContext(_TickChecks):
    """What one tick of an ``async def`` loop gets: the same as :class:`TickContext`, with
    an :class:`~psycopg_pool.AsyncConnectionPool` and awaitable ``transaction`` / ``limit``.

    The tick runs as a task on the App's event-loop thread; lease loss, shutdown and the
    timeout cancel it (``asyncio.CancelledError`` at its next ``await``).
    """

    loop: str
    replica_id: str
    pool: AsyncConnectionPool
    config: Any
    tick_at: datetime
    deadline: float
    lease: Lease | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("leasectl.loop"))
    clock: Callable[[], float] = time.monotonic
    stats: dict[str, int] = field(default_factory=dict)
    limiter: RateLimiter | None = None

    async def limit(self, name: str, scope: str | None = None, *, wait: float = 0.0) -> Decision:
        """:meth:`TickContext.limit`, awaited (the acquire runs off the event loop)."""
        if self.limiter is None:
            return Decision(True, 0.0, name)
        budget = max(0.0, min(wait, self.deadline - self.clock()))
        return await asyncio.to_thread(self.limiter.acquire, name, scope, wait=budget)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """:meth:`TickContext.transaction` for async code: the same fence, the same SQL,
        over the async pool (``async with ctx.transaction() as cur``)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            if self.lease is not None:
                await self.lease.guard_async(cur)
            yield cur


__all__ = ["AsyncTickContext", "LoopSpec", "TickContext", "Placement", "Misfire"]
