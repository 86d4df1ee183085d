"""Cluster-wide rate limits, kept in PostgreSQL so every replica shares one budget.

A process-local limiter lets a cluster send "configured × replicas"; with leases spread over
replicas, two loops calling one provider from two hosts would each think they are alone.
Here every acquire is one statement (GCRA, on the database clock, see ``sql/limits.sql``)
against a row per bucket, so the observed cluster-wide rate stays within
``rate / per`` plus ``burst``, however many replicas ask.

Contract
    ``try_acquire(name, scope)`` takes one event from the bucket of limit ``name`` (the
    scope's own bucket when the limit is ``per_scope``) and says whether it was allowed and,
    if not, how long until one fits. ``acquire(..., wait=s)`` retries for up to ``s`` seconds.
    A name with no ``limits.<name>`` configured is unlimited and costs no statement.

Limits
    Fail closed: when the database cannot be reached, acquire raises
    :class:`~leasectl.DatabaseUnavailable`, and callers defer the side effect (the shipped
    loops leave the delivery queued for the next tick) rather than send unmetered.

Example::

    limiter = RateLimiter(pool, {"smtp": LimitSettings(rate=10, per=1, burst=5)})
    if limiter.acquire("smtp", wait=2.0):
        send()
    else:
        defer()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from leasectl import metrics, sql
from leasectl.errors import ConfigError, DatabaseUnavailable
from leasectl.settings import LimitSettings

log = logging.getLogger("leasectl.limits")
Q = sql.load("limits")

#: Longest single sleep while waiting for a bucket: re-asking is cheap, oversleeping is not.
_MAX_NAP = 0.5


@dataclass(frozen=True)
class Decision:
    """The outcome of one acquire: allowed, or refused with the seconds until one fits."""

    allowed: bool
    retry_after: float = 0.0
    key: str = ""

    def __bool__(self) -> bool:
        return self.allowed


def bucket_key(name: str, scope: str | None, limit: LimitSettings) -> str:
    """The row a (limit, scope) pair meters: ``name`` or ``name:scope`` when per scope."""
    if ":" in name:
        raise ConfigError(f"rate limit name {name!r}: must not contain ':' (give scope= instead)")
    return f"{name}:{scope}" if limit.per_scope and scope else name


class RateLimiter:
    """Acquires events from the shared buckets; one instance per replica (thread-safe)."""

    def __init__(
        self,
        pool: ConnectionPool,
        limits: Mapping[str, LimitSettings],
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.limits = dict(limits)
        self._sleep = sleep
        self._clock = clock
        for name in self.limits:
            metrics.RATE_LIMIT_ALLOWED.labels(name)
            metrics.RATE_LIMIT_THROTTLED.labels(name)
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()

    def _unconfigured(self, name: str) -> None:
        """A name with no ``limits.<name>`` is unlimited: often a typo. Count every use, and
        say so once per name (not per event: a loop may ask thousands of times a minute)."""
        metrics.RATE_LIMIT_UNCONFIGURED.labels(name).inc()
        with self._warn_lock:
            if name in self._warned:
                return
            self._warned.add(name)
        known = ", ".join(sorted(self.limits)) or "none configured"
        log.warning(
            "rate limit %r is not configured (limits.%s): its events are not limited; "
            "configured limits: %s",
            name,
            name,
            known,
            extra={"action": "rate_limit_unconfigured", "limit": name},
        )

    def try_acquire(self, name: str, scope: str | None = None) -> Decision:
        """One event now, or a refusal saying when to ask again.

        :raises DatabaseUnavailable: the database could not be asked (fail closed).
        """
        limit = self.limits.get(name)
        if limit is None:
            self._unconfigured(name)
            return Decision(True, 0.0, name)
        key = bucket_key(name, scope, limit)
        interval = limit.per / limit.rate
        params: dict[str, Any] = {"key": key, "t": interval, "cap": interval * limit.burst}
        try:
            with self.pool.connection() as conn:
                row = conn.execute(Q["acquire"], params).fetchone()
        except psycopg.Error as exc:
            raise DatabaseUnavailable(
                f"rate limit {key}: cannot reach the database ({type(exc).__name__}); "
                "refusing the event (fail closed)"
            ) from exc
        allowed = bool(row and row[0])
        if allowed:
            metrics.RATE_LIMIT_ALLOWED.labels(name).inc()
            return Decision(True, 0.0, key)
        metrics.RATE_LIMIT_THROTTLED.labels(name).inc()
        wait = float(row[1]) if row and row[1] is not None else interval
        return Decision(False, max(wait, 0.001), key)

    def acquire(self, name: str, scope: str | None = None, *, wait: float = 0.0) -> Decision:
        """Like :meth:`try_acquire`, retrying for up to ``wait`` seconds while refused."""
        deadline = self._clock() + max(wait, 0.0)
        while True:
            decision = self.try_acquire(name, scope)
            left = deadline - self._clock()
            if decision.allowed or decision.retry_after > left:
                return decision
            self._sleep(min(decision.retry_after, _MAX_NAP, left))

    def collect_garbage(self, idle_s: float = 60.0) -> int:
        """Delete buckets idle (full again) for ``idle_s`` seconds; the number deleted."""
        with self.pool.connection() as conn:
            return conn.execute(Q["gc"], {"idle_s": idle_s}).rowcount


def read_fill(
    conn: psycopg.Connection[Any], limits: Mapping[str, LimitSettings]
) -> list[dict[str, Any]]:
    """Each bucket's fill (0 idle … 1 throttling) for ``leasectl status``."""
    out = []
    for key, backlog_s, updated_at in conn.execute(Q["fill"]).fetchall():
        name = key.split(":", 1)[0]
        limit = limits.get(name)
        cap = (limit.per / limit.rate) * limit.burst if limit else None
        out.append(
            {
                "key": key,
                "limit": name,
                "fill": round(min(1.0, backlog_s / cap), 3) if cap else None,
                "backlog_s": round(float(backlog_s), 3),
                "updated_at": updated_at.isoformat() if updated_at else None,
            }
        )
    return out
